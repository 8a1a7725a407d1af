"""The ledger: every source item in exactly one terminal state, and nothing kept for
a finished one."""

from __future__ import annotations

import random
from typing import Any

import pytest

import conveyor as cv
from conveyor.core.ledger import RootLedger


class States(cv.Instrument):
    def __init__(self) -> None:
        self.states: dict[int, str] = {}

    def roots_finished(self, roots: Any, state: str, t_ns: int) -> None:
        for r in roots:
            assert r not in self.states, f"root {r} finished twice"
            self.states[r] = state


def test_a_root_with_a_dead_part_merged_into_another_batch_ends_dead_lettered() -> None:
    # Root 1 splits in two; its second copy is skipped; its first copy is merged into
    # root 0's batch. Root 1 lost data: dead_lettered. Root 0's batch is whole: done.
    def twice(x: int) -> list[int]:
        return [x, x]

    def fail_second_copy_of_1(x: int) -> int:
        fail_second_copy_of_1.seen = getattr(fail_second_copy_of_1, "seen", 0) + (x == 1)  # type: ignore[attr-defined]
        if x == 1 and fail_second_copy_of_1.seen == 2:  # type: ignore[attr-defined]
            raise ValueError("bad copy")
        return x

    pipe = cv.Pipeline(
        "merge",
        [
            cv.stage(twice, kind="flat_map", executor="sync"),
            cv.stage(fail_second_copy_of_1, executor="sync", on_error="skip"),
            cv.stage(sum, name="batch", kind="batch", size=3, executor="sync"),
        ],
    )
    states = States()
    run = pipe.run([0, 1], instruments=[states])
    assert run.results == [1]
    assert states.states == {0: "done", 1: "dead_lettered"}


@pytest.mark.parametrize("tracking", [False, True])
@pytest.mark.parametrize("ordered", [False, True])
def test_nothing_is_kept_for_finished_roots(tracking: bool, ordered: bool) -> None:
    ledger = RootLedger(ordered=ordered, tracking=tracking)
    n, size = 100_000, 16
    for first in range(0, n, size):
        ledger.read(first, size, 1)
        keys = [(r,) for r in range(first, first + size)]
        ledger.merge([keys])  # a batch stage: roots first+1.. are absorbed into first
        ledger.arrive([((first,), "result")])
        ledger.take_released()
        ledger.take_finished()
    assert ledger.live == {} and not ledger.holding
    assert (ledger._absorbed, ledger._dead, ledger._reached, ledger._finished_ahead) == (
        {},
        set(),
        set(),
        set(),
    )
    assert ledger.frontier == (n if ordered else 0)


def test_absorbed_roots_share_their_batch_root_state() -> None:
    ledger = RootLedger(ordered=False, tracking=True)
    ledger.read(0, 4, 1)
    ledger.merge([[(0,), (1,)], [(2,), (3,)]])
    ledger.dead_letter(2)  # the batch keyed by root 2 is skipped downstream
    ledger.arrive([((0,), "r")])
    assert ledger.take_finished() == {
        "done": [0, 1],
        "filtered": [],
        "dead_lettered": [2, 3],
    }


class SlowLedger(RootLedger):
    """The ledger without its bulk paths: every root counted down one by one."""

    def drop(self, roots: list[int]) -> None:
        for root in roots:
            self.add(root, -1)

    def _simple(self, roots: list[int]) -> bool:
        return False


@pytest.mark.parametrize("tracking", [False, True])
@pytest.mark.parametrize("ordered", [False, True])
def test_bulk_drops_and_merges_end_roots_as_one_by_one_would(tracking: bool, ordered: bool) -> None:
    rng = random.Random(9)
    fast, slow = (
        RootLedger(ordered=ordered, tracking=tracking),
        SlowLedger(ordered=ordered, tracking=tracking),
    )
    first = 0
    for _ in range(300):
        n = rng.randint(1, 40)
        for ledger in (fast, slow):
            ledger.read(first, n, 1)
        roots = list(range(first, first + n))
        first += n
        if rng.random() < 0.3:  # some roots split in two (a flat_map)
            for r in roots[: rng.randint(0, n)]:
                fast.add(r, 1)
                slow.add(r, 1)
        live = [r for r in roots for _ in range(fast.live[r])]
        rng.shuffle(live)
        dropped, merged, arrived = live[: n // 3], live[n // 3 : 2 * n // 3], live[2 * n // 3 :]
        for ledger in (fast, slow):
            ledger.drop(dropped)  # a filter let these go
            if merged:
                ledger.merge([[(r,) for r in merged]])  # a batch: into the first one
            ledger.arrive([((r,), r) for r in arrived])
            if merged:
                ledger.arrive([((merged[0],), "batch")])
        assert fast.live == slow.live
        assert fast.take_finished() == slow.take_finished()
        assert fast.take_released() == slow.take_released()
        assert fast.frontier == slow.frontier
    assert fast.live == {}
