"""The planner on synthetic profiles (pure): the trade-offs it must see, and its errors."""

from __future__ import annotations

import pytest

from conveyor.train import LayerProfile, ModelProfile, TrainError, one_f_one_b, plan, predict


def profile(n=8, *, fixed=0.0, act=1000, params=100, batch=64):
    layers = tuple(
        LayerProfile(
            name=f"{i}",
            forward=1e-3 + fixed,
            backward=1e-3 + fixed,
            weight=1e-3 + fixed,
            forward_fixed=fixed,
            backward_fixed=fixed,
            weight_fixed=fixed,
            params=params,
            param_bytes=params * 4,
            activation_bytes=act,
            output_bytes=0,
        )
        for i in range(n)
    )
    return ModelProfile(layers, batch)


NO_COMM = {"comm_latency": 0.0, "action_overhead": 0.0}


def test_without_fixed_costs_more_microbatches_always_help():
    p = plan(profile(), 2, 64, microbatches=[2, 4, 8, 16], **NO_COMM)
    assert p.best.microbatches == 16
    assert p.best.schedule == "zbh1"  # the smallest bubble
    assert "zbh1 with m=16" in p.reason


def test_fixed_costs_make_fewer_microbatches_better():
    p = plan(profile(fixed=2e-3), 2, 64, schedules=["1f1b"], microbatches=[2, 4, 8, 16], **NO_COMM)
    assert p.best.microbatches < 16
    assert "More (m=" in p.reason


def test_memory_cap_rules_out_gpipe():
    # GPipe holds m activations; 1F1B at most p; a cap between the two picks 1F1B
    prof = profile(act=10_000, params=0)
    free = plan(prof, 2, 64, schedules=["gpipe", "1f1b"], microbatches=[16], **NO_COMM)
    capped = plan(
        prof, 2, 64, schedules=["gpipe", "1f1b"], microbatches=[16], memory_cap=20_000, **NO_COMM
    )
    gpipe_row = next(c for c in capped.candidates if c.schedule == "gpipe")
    assert gpipe_row.rejected is not None and "memory" in gpipe_row.rejected
    assert capped.best.schedule == "1f1b"
    assert capped.best.peak_memory is not None and capped.best.peak_memory <= 20_000
    assert free.best.step_time == pytest.approx(capped.best.step_time)


def test_prediction_scales_with_microbatch_rows():
    # per-sample costs: 4 micro-batches of 16 rows take a quarter as long each as 1 of 64
    c = predict(profile(n=2), one_f_one_b(2, 4), 64, **NO_COMM)
    assert c.simulation is not None
    f = c.simulation.intervals[0]
    assert f.end - f.start == pytest.approx(1e-3 / 4)


def test_no_candidate_fits():
    with pytest.raises(TrainError, match=r"no schedule fits.*Raise the memory cap"):
        plan(profile(), 2, 64, memory_cap=10)


def test_table_lists_every_candidate():
    p = plan(profile(), 2, 8, microbatches=[1, 2, 4, 8], **NO_COMM)
    assert len(p.table().splitlines()) == 1 + 4 * 4
    assert "rejected: 1f1b needs at least as many micro-batches" in p.table()


def test_a_tie_in_time_goes_to_the_smaller_memory():
    # equal costs: GPipe and 1F1B take the same time; 1F1B holds fewer activations
    p = plan(profile(act=10_000), 2, 64, schedules=["gpipe", "1f1b"], microbatches=[8], **NO_COMM)
    times = {c.schedule: c.step_time for c in p.candidates}
    assert times["gpipe"] == pytest.approx(times["1f1b"])
    assert p.best.schedule == "1f1b"
