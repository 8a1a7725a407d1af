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
        prof, 2, 64, schedules=["gpipe", "1f1b"], microbatches=[16], memory_cap=20_000,
        checkpointing=False, **NO_COMM,
    )  # fmt: skip
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
    # a header, 4 schedules x 4 m, one process and 2-way data parallelism
    assert len(p.table().splitlines()) == 1 + 4 * 4 + 2
    assert "rejected: 1f1b needs at least as many micro-batches" in p.table()


def test_a_tie_in_time_goes_to_the_smaller_memory():
    # equal costs: GPipe and 1F1B take the same time; 1F1B holds fewer activations
    p = plan(profile(act=10_000), 2, 64, schedules=["gpipe", "1f1b"], microbatches=[8], **NO_COMM)
    times = {c.schedule: c.step_time for c in p.candidates}
    assert times["gpipe"] == pytest.approx(times["1f1b"])
    assert p.best.schedule == "1f1b"


def fixed_profile(n=4):
    """F = I = W = 1 ms per layer whatever the rows; 100 parameters (400 bytes) each."""
    return ModelProfile(
        tuple(LayerProfile(f"{i}", *[1e-3] * 6, 100, 400, 1000, 0) for i in range(n)), 256
    )


def test_pipelining_that_loses_to_one_process_says_so_and_why():
    # 8 micro-batches of 32 rows do 8x the work of one batch of 256
    p = plan(fixed_profile(), 2, 256, schedules=["1f1b"], microbatches=[8], **NO_COMM)
    one, dp = p.baselines
    assert (one.name, one.rows, one.step_time) == ("one process", 256, pytest.approx(12e-3))
    # 2-way data parallel: 12 ms of compute on 128 rows + all-reduce of 4 x 400 bytes at 1 GB/s
    assert (dp.name, dp.rows) == ("2-way data parallel", 128)
    assert dp.communication == pytest.approx(1600 / 1e9) and dp.step_time == pytest.approx(
        12.0016e-3
    )
    # 1F1B, p=2, m=8, a stage of 2 layers: (m + p - 1) x (F + B) = 9 x 6 ms
    assert p.best.step_time == pytest.approx(54e-3)
    assert not p.pays
    assert p.reason.startswith(
        "Pipelining does not pay here: one process on the whole batch is predicted at 12.00 ms "
        "per step, the best pipeline at 54.00 ms (4.50x slower), because its 8 micro-batches of "
        "32 rows do 8.00x the work of one batch of 256 rows (fixed per-layer costs dominate "
        "small micro-batches) and the bubble leaves 11% of rank time idle. Train in one process."
    )
    assert "Best pipeline: 1f1b with m=8: predicted step 54.00 ms" in p.reason
    # a runtime cost that weighs is named with its share of the step
    slow = plan(fixed_profile(), 2, 256, schedules=["1f1b"], microbatches=[8], comm_latency=0.0,
                action_overhead=1e-3)  # fmt: skip
    assert (
        "the runtime adds 1.00 ms around each of its 16 actions per rank (16.00 ms, " in slow.reason
    )
    rows = p.table().splitlines()
    # the baselines' step times sit in the step column
    end = rows[0].index("step ms") + len("step ms")
    assert rows[1][:end].endswith(" 54.00")
    assert rows[-2][:end] == "one process           12.00"
    assert rows[-2].endswith("256 rows")
    assert rows[-1][:end] == "data parallel         12.00"
    assert rows[-1].endswith("2 devices x 128 rows + all-reduce")


def test_data_parallelism_wins_when_the_model_fits_and_the_all_reduce_is_cheap():
    # per-row costs only: 1F1B m=8 takes 9 x 0.75 ms; 2-way data parallel 6 ms + 1.6 us
    p = plan(profile(n=4, batch=256), 2, 256, schedules=["1f1b"], microbatches=[8], **NO_COMM)
    assert p.best.step_time == pytest.approx(6.75e-3) and not p.pays
    assert p.reason.startswith(
        "Pipelining does not pay here: 2-way data parallelism is predicted at 6.00 ms per step, "
        "the best pipeline at 6.75 ms (1.12x slower), because the bubble leaves 11% of rank time "
        "idle, while data parallelism keeps all 2 devices busy on 128 rows each and its "
        "all-reduce takes 0.00 ms. The model fits one device: split the batch across devices, "
        "not the model."
    )


def test_pipelining_pays_when_the_all_reduce_is_slow_and_is_needed_when_nothing_fits():
    slow = plan(
        profile(n=4, batch=256), 2, 256, schedules=["1f1b"], microbatches=[8], comm_bandwidth=1e5,
        comm_latency=0.0, action_overhead=0.0,
    )  # fmt: skip
    # the all-reduce of 1600 bytes at 100 kB/s takes 16 ms: one process (12 ms) is the rival
    assert slow.pays and slow.baselines[1].step_time == pytest.approx(22e-3)
    assert slow.reason.endswith(
        "Pipelining pays: 6.75 ms per step, 1.78x faster than one process on the whole batch. "
        "Without a pipeline: one process on the whole batch 12.00 ms; 2-way data parallelism "
        "22.00 ms (128 rows per device 6.00 ms + all-reduce 16.00 ms)."
    )
    # 4 layers of 800 bytes of parameters and gradient: 3200 bytes on one device, cap 2000
    big = plan(
        profile(n=4, params=100, act=0, batch=256), 2, 256, schedules=["1f1b"], microbatches=[8],
        memory_cap=2000, **NO_COMM,
    )  # fmt: skip
    assert big.pays and [b.fits for b in big.baselines] == [False, False]
    assert (
        "Pipelining is needed: one process would need 0.00 MiB, over the memory cap" in big.reason
    )
    assert big.table().splitlines()[-1].endswith("over the memory cap")


def test_a_memory_cap_with_as_many_stages_as_layers_does_not_advise_more_stages():
    with pytest.raises(TrainError) as info:
        plan(profile(n=2), 2, 64, microbatches=[2], memory_cap=10, checkpointing=False)
    assert "Raise the memory cap, allow activation checkpointing" in str(info.value)
    assert "more stages" not in str(info.value)
    with pytest.raises(TrainError, match=r"Raise the memory cap, use more stages \(up to 8\)"):
        plan(profile(n=8), 2, 64, microbatches=[2], memory_cap=10)


def checkpoint_profile():
    # 2 layers, F = I = W = 1 ms whatever the rows; activations 1000 bytes and inputs 100
    # bytes at 64 rows (250 and 25 per 16-row micro-batch); no parameters
    layers = tuple(
        LayerProfile(f"{i}", 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 0, 0, 1000, 0, 100)
        for i in range(2)
    )
    return ModelProfile(layers, 64)


def test_activation_checkpointing_only_where_the_cap_needs_it():
    from conveyor.train import StageCosts, simulate

    prof = checkpoint_profile()
    # 1F1B, p=2, m=4: stage 0 holds 2 micro-batches (500 bytes), stage 1 one (250).
    # Recomputing, stage 0 keeps 2 inputs + one micro-batch's activations: 300 bytes.
    free = plan(prof, 2, 64, schedules=["1f1b"], microbatches=[4], memory_cap=500, **NO_COMM)
    assert free.best.checkpoint == (False, False) and free.best.peak_memory == 500
    capped = plan(prof, 2, 64, schedules=["1f1b"], microbatches=[4], memory_cap=400, **NO_COMM)
    assert capped.best.checkpoint == (True, False) and capped.best.peak_memory == 300
    # its backward runs the forward again: B = I + W + F = 3 ms on stage 0
    expected = simulate(
        one_f_one_b(2, 4),
        StageCosts((1e-3, 1e-3), (2e-3, 1e-3), (1e-3, 1e-3), first_stage_defers_input=True),
    )
    assert capped.best.step_time == pytest.approx(float(expected.makespan))
    assert capped.best.step_time > free.best.step_time
    row = next(r for r in capped.table().splitlines() if r.startswith("1f1b"))
    assert row.split()[-2:] == ["0", "*"]  # the recompute column names stage 0
    with pytest.raises(TrainError, match="no schedule fits"):
        plan(prof, 2, 64, schedules=["1f1b"], microbatches=[4], memory_cap=400,
             checkpointing=False, **NO_COMM)  # fmt: skip
    # ZB-H1's W needs what I recomputed: it never checkpoints
    zb = plan(prof, 2, 64, schedules=["zbh1"], microbatches=[4], memory_cap=10_000, **NO_COMM)
    assert zb.best.checkpoint == (False, False)


def test_device_speeds_move_work_to_the_faster_rank():
    p = plan(profile(n=6), 2, 64, schedules=["1f1b"], microbatches=[4], speeds=[1, 2], **NO_COMM)
    assert p.best.partition.bounds == (0, 2, 6)
    assert p.best.partition.stage_costs == pytest.approx((2 * 0.75e-3, 4 * 0.75e-3 / 2))
    # one process runs on the fastest device; data parallelism waits for the slowest
    one, dp = p.baselines
    assert one.compute == pytest.approx(6 * 3e-3 / 2) and dp.compute == pytest.approx(6 * 1.5e-3)
    with pytest.raises(TrainError, match="one speed > 0 per rank"):
        plan(profile(n=6), 2, 64, microbatches=[4], speeds=[1, 2, 3])


def test_the_plan_cuts_only_where_tensors_pass():
    import dataclasses

    prof = profile(n=6)
    layers = list(prof.layers)
    layers[2] = dataclasses.replace(layers[2], output_crosses=False)  # returns (h, 3)
    tupled = dataclasses.replace(prof, layers=tuple(layers))
    one = {"schedules": ["1f1b"], "microbatches": [4], **NO_COMM}
    assert plan(prof, 2, 64, **one).best.partition.bounds == (0, 3, 6)
    assert plan(tupled, 2, 64, **one).best.partition.bounds == (0, 2, 6)
    with pytest.raises(TrainError, match=r"puts a stage boundary after layers \[2\]"):
        predict(tupled, one_f_one_b(2, 4), 64, bounds=(0, 3, 6))
