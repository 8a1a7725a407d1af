"""Pipelined training on 2 and 4 gloo ranks equals single-process training, for every schedule.

One torchrun launch per rank count runs all four schedules for 20 steps each
(under the launch's timeout and pytest-timeout: a hang fails the test).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conveyor.train import build_schedule, partition_uniform  # noqa: E402
from conveyor.train._api import measured_intervals  # noqa: E402
from conveyor.train._data import batches  # noqa: E402
from conveyor.train._launch import launch  # noqa: E402
from conveyor.train._runtime import RunSpec, build_model_layers, load_object  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

TOY = Path(__file__).with_name("toy_model.py")
STEPS = 20
SCHEDULES = [("gpipe", 1, 4), ("1f1b", 1, 4), ("interleaved", 2, 4), ("zbh1", 1, 4)]


def specs_for(p: int) -> list[RunSpec]:
    out = []
    for name, v, m in SCHEDULES:
        m = max(m, p)
        out.append(
            RunSpec(
                model=f"{TOY}:make_model",
                data=f"{TOY}:make_data",
                schedule=name,
                microbatches=m,
                bounds=list(partition_uniform([1.0] * 16, p * v).bounds),
                stages_per_rank=v,
                batch_size=32,
                steps=STEPS,
                lr=0.1,
                record_parameters=True,
            )
        )
    return out


def reference(spec: RunSpec) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    """Plain single-process training on the same batches: losses and parameters per step."""
    torch.set_num_threads(1)
    model = torch.nn.Sequential(*build_model_layers(spec))
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr)
    losses, params = [], []
    data = load_object(spec.data)()
    for x, y in batches(data, batch_size=spec.batch_size, steps=spec.steps, seed=spec.seed):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        params.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return losses, params


@pytest.fixture(scope="module", params=[2, 4], ids=["2ranks", "4ranks"])
def runs(request):
    p = request.param
    specs = specs_for(p)
    return p, specs, launch(specs, p, timeout=960)


@pytest.mark.timeout(1200)
def test_every_schedule_matches_single_process_training(runs):
    p, specs, results = runs
    for spec, result in zip(specs, results, strict=True):
        ref_losses, ref_params = reference(spec)
        assert len(result["losses"]) == STEPS
        assert result["losses"] == pytest.approx(ref_losses, rel=1e-5), spec.schedule
        for step in range(STEPS):
            got = result["parameters"][step]
            assert got.keys() == ref_params[step].keys()
            for name, value in ref_params[step].items():
                torch.testing.assert_close(
                    got[name],
                    value,
                    rtol=1e-5,
                    atol=1e-7,
                    msg=f"{spec.schedule} p={p} step {step} {name}",
                )
        # the parameters did move: the comparison is not between two untouched models
        assert not torch.equal(ref_params[0]["0.weight"], ref_params[-1]["0.weight"])


@pytest.mark.timeout(1200)
def test_every_rank_ran_exactly_the_planned_actions(runs):
    p, specs, results = runs
    for spec, result in zip(specs, results, strict=True):
        plan = build_schedule(spec.schedule, p, spec.microbatches, spec.stages_per_rank)
        for step in range(STEPS):
            intervals = measured_intervals(result["timelines"][step], p)
            for r in range(p):
                ran = [
                    iv.action for iv in sorted(intervals, key=lambda iv: iv.start) if iv.rank == r
                ]
                assert tuple(ran) == plan.actions[r], f"{spec.schedule} rank {r} step {step}"
