"""conveyor's action lists are the orders torch 2.13's schedule classes generate.

Built on stand-in stage objects: the schedule classes only read a stage's place
in the pipeline when computing their order.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
from torch.distributed.pipelining import (
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
)

from conveyor.train import gpipe, interleaved_1f1b, zb_h1

pytestmark = pytest.mark.train


def stand_ins(p, v):
    return [
        SimpleNamespace(
            num_stages=p * v, group_size=p, group_rank=0, stage_index=k * p, submod=None,
            is_first=k == 0, is_last=k * p == p * v - 1,
        )
        for k in range(v)
    ]  # fmt: skip


def torch_order(sched):
    return tuple(
        tuple(
            (a.computation_type.value, a.stage_index, a.microbatch_index)
            for a in sched.pipeline_order[r]
            if a is not None and a.computation_type.value in "FBIW"
        )
        for r in sorted(sched.pipeline_order)
    )


def ours(schedule):
    return tuple(tuple(tuple(a) for a in acts) for acts in schedule.actions)


@pytest.mark.parametrize("p", [2, 3, 4])
@pytest.mark.parametrize("m", [4, 6, 8, 12])
def test_orders_equal_torch(p, m):
    assert ours(gpipe(p, m)) == torch_order(ScheduleGPipe(stand_ins(p, 1)[0], n_microbatches=m))
    for v in (2, 3):
        if m % max(1, m // p) == 0:
            theirs = ScheduleInterleaved1F1B(stand_ins(p, v), n_microbatches=m)
            assert ours(interleaved_1f1b(p, m, v)) == torch_order(theirs)
    if m % max(1, m // p) == 0:
        theirs = ScheduleInterleavedZeroBubble(stand_ins(p, 1), n_microbatches=m)
        assert ours(zb_h1(p, m)) == torch_order(theirs)
