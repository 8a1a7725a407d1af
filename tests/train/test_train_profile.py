"""The profiler on layers of known cost, and the errors for models that are not sequences."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from conveyor.train import TrainError, profile_model  # noqa: E402
from conveyor.train._emulate import sleep_layer  # noqa: E402
from conveyor.train._profile import as_layers  # noqa: E402

pytestmark = pytest.mark.train


class FakeClock:
    """Seconds that pass only when a layer sleeps: the profiler's arithmetic, exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_sleeping_layers_measure_their_sleep():
    clock = FakeClock()
    expected = [(4, 8, 2), (2, 3, 6)]
    model = nn.Sequential(*(sleep_layer(*fiw, sleep=clock.sleep) for fiw in expected))
    prof = profile_model(model, torch.randn(8, 4), repeats=3, warmup=1, clock=clock)
    for lp, (f, i, w) in zip(prof.layers, expected, strict=True):
        measured = (lp.forward * 1e3, lp.backward * 1e3, lp.weight * 1e3)
        # F alone, I (input gradient) and W (weight gradient) told apart by the profiler
        assert measured == pytest.approx((f, i, w), abs=1e-9), (lp.name, measured)
        # sleeping does not scale with the batch: all of it is fixed cost
        fixed = (lp.forward_fixed, lp.backward_fixed, lp.weight_fixed)
        assert fixed == pytest.approx((lp.forward, lp.backward, lp.weight), abs=1e-12)


def test_the_profiler_reads_the_real_clock_by_default():
    model = nn.Sequential(sleep_layer(4, 1, 1), sleep_layer(1, 1, 1))
    prof = profile_model(model, torch.randn(8, 4), repeats=2, warmup=0)
    # time.sleep never returns early, so the fastest run of each forward is at least its
    # sleep; a loaded machine only adds time, so there is no upper bound to assert
    assert prof.layers[0].forward >= 4e-3 and prof.layers[1].forward >= 1e-3


def test_linear_layer_counts_and_memory():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    prof = profile_model(model, torch.randn(10, 16), repeats=2, warmup=1)
    assert [lp.params for lp in prof.layers] == [16 * 32 + 32, 0, 32 * 4 + 4]
    assert [lp.param_bytes for lp in prof.layers] == [(16 * 32 + 32) * 4, 0, (32 * 4 + 4) * 4]
    assert [lp.output_bytes for lp in prof.layers] == [10 * 32 * 4, 10 * 32 * 4, 10 * 4 * 4]
    # Linear saves its input for the weight gradient; ReLU saves its output
    assert prof.layers[0].activation_bytes == 10 * 16 * 4
    assert prof.layers[1].activation_bytes == 10 * 32 * 4
    assert prof.batch == 10
    assert all(lp.forward > 0 for lp in prof.layers)


def test_model_that_is_not_a_sequence_is_a_clear_error():
    class Net(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TrainError, match=r"sequence of layers, got Net.*nn\.Sequential"):
        as_layers(Net())
    with pytest.raises(TrainError, match="no layers"):
        as_layers(nn.Sequential())
    assert len(as_layers([nn.Linear(2, 2), nn.ReLU()])) == 2


def test_robust_time_drops_the_slow_half_and_a_lucky_run():
    from conveyor.train._profile import robust_time

    # the median of the fastest half: one lucky run (1.0) and the slow ones do not move it
    assert robust_time([5.0, 1.0, 2.0, 2.1, 9.0]) == 2.0
    assert robust_time([2.0, 2.0, 2.0, 50.0]) == 2.0
    assert robust_time([3.0]) == 3.0


def test_layers_passing_tuples_and_dicts():
    from train_fakes import FakeClock, Head, Masked, Pair

    clock = FakeClock()
    # x -> (h, mask) -> {"hidden", "mask"} -> logits, as an nn.Sequential passes them
    model = nn.Sequential(Pair(clock), Masked(clock), Head(4, 2))
    prof = profile_model(model, torch.randn(8, 4), repeats=3, warmup=1, clock=clock)
    times = [(lp.forward * 1e3, lp.backward * 1e3, lp.weight * 1e3) for lp in prof.layers]
    # the sleeps are measured exactly: the gradient reached the hidden tensor inside the
    # tuple (Masked's I) and the dict; the Linear head takes no fake time
    assert times[0] == pytest.approx((2, 3, 1), abs=1e-9)
    assert times[1] == pytest.approx((4, 5, 2), abs=1e-9)
    assert times[2] == pytest.approx((0, 0, 0), abs=1e-9)
    h, mask = 8 * 4 * 4, 8 * 4 * 1  # float32 hidden, bool mask
    assert [lp.input_bytes for lp in prof.layers] == [h, h + mask, h + mask]
    assert [lp.output_bytes for lp in prof.layers] == [h + mask, h + mask, 8 * 2 * 4]
    # the head's Linear saves its input (the hidden tensor) for the weight gradient
    assert prof.layers[2].activation_bytes == h
    # a tuple and a dict of tensors cross a stage boundary as they are
    assert [lp.output_crosses for lp in prof.layers] == [True, True, True]


def test_a_layer_of_the_wrong_width_is_named_with_shapes_and_a_fix():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(TrainError) as info:
        profile_model(model, torch.randn(32, 10), repeats=1, warmup=0)
    text = str(info.value)
    assert text.startswith("layer 0 (Linear) failed in its forward on inputs of shape (32, 10): ")
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied (32x10 and 8x16)" in text
    assert "Linear(in_features=8) expects inputs whose last dimension is 8; it got 10" in text
    assert "Layer 0 takes the data factory's inputs" in text
    # no chained traceback: the message is the whole story
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_an_exception_inside_a_layer_names_it_and_the_line():
    class Boom(nn.Module):
        def forward(self, x):
            raise ValueError("negative widths are not allowed")

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Boom())
    with pytest.raises(TrainError) as info:
        profile_model(model, torch.randn(6, 4), repeats=1, warmup=0)
    text = str(info.value)
    assert text.startswith("layer 2 (Boom) failed in its forward on inputs of shape (6, 4): ")
    assert "ValueError: negative widths are not allowed (at " in text
    assert f"{__file__}:" in text and "in forward)" in text
    assert "Layer 2 takes what layer 1 (ReLU) returns" in text


def test_a_failing_backward_and_a_layer_that_does_not_take_a_tuple():
    class BadGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("no gradient here")

    class NoBackward(nn.Module):
        def forward(self, x):
            return BadGrad.apply(x)

    with pytest.raises(TrainError, match=r"layer 1 \(NoBackward\) failed in its backward"):
        profile_model(nn.Sequential(nn.ReLU(), NoBackward()), torch.randn(4, 3), repeats=1)

    class Pair(nn.Module):
        def forward(self, x):
            return x, x > 0

    with pytest.raises(TrainError) as info:
        profile_model(nn.Sequential(Pair(), nn.Linear(3, 3)), torch.randn(4, 3), repeats=1)
    assert "inputs of shape ((4, 3), (4, 3) bool)" in str(info.value)
    assert "Layer 0 (Pair) returns a tuple; an nn.Sequential passes it whole" in str(info.value)


def test_profile_at_the_sizes_it_will_run_predicts_every_m():
    from train_fakes import FakeClock, affine_layer

    from conveyor.train import StageCosts, one_f_one_b, predict, simulate

    clock = FakeClock()
    # fixed and per-row milliseconds of F, I, W: a fixed part dominates small micro-batches
    costs = [
        ((2, 2, 1), (0.05, 0.1, 0.05)),
        ((1, 1, 1), (0.2, 0.2, 0.1)),
        ((3, 1, 2), (0.0, 0.1, 0.1)),
    ]
    model = nn.Sequential(*(affine_layer(clock, f, r) for f, r in costs))
    # measured only at the smallest and the largest micro-batch
    prof = profile_model(model, torch.randn(64, 4), rows=[4, 64], repeats=2, warmup=1, clock=clock)
    assert [s.rows for s in prof.sizes] == [4, 64] and prof.batch == 64

    def truth(rows):
        return [
            tuple((f + r * rows) / 1e3 for f, r in zip(fx, pr, strict=True)) for fx, pr in costs
        ]

    for m in (1, 2, 4, 8, 16):
        rows = 64 // m
        flat = [t for layer in prof.scaled(rows) for t in layer]
        assert flat == pytest.approx([t for layer in truth(rows) for t in layer], abs=1e-12), m
        if m < 2:
            continue
        cand = predict(
            prof,
            one_f_one_b(2, m),
            64,
            bounds=(0, 1, 3),
            comm_latency=0,
            comm_bandwidth=float("inf"),
            action_overhead=0,
        )
        t = truth(rows)
        exact = StageCosts(
            forward=(t[0][0], t[1][0] + t[2][0]),
            backward=(t[0][1], t[1][1] + t[2][1]),
            weight=(t[0][2], t[1][2] + t[2][2]),
            first_stage_defers_input=True,
        )
        assert cand.step_time == pytest.approx(
            float(simulate(one_f_one_b(2, m), exact).makespan), abs=1e-12
        )
    # a straight line through the two sizes is exact here, and the fixed parts are found
    assert prof.layers[2].forward_fixed == pytest.approx(3e-3)
    assert prof.layers[1].backward_fixed == pytest.approx(1e-3)


def test_a_cost_that_is_not_a_line_is_flagged_and_read_as_measured():
    from train_fakes import FakeClock

    clock = FakeClock()

    class Stepwise(nn.Module):
        # 1 ms up to 16 rows, 10 ms above: no line fits three sizes
        def forward(self, x):
            clock.sleep(1e-3 if x.shape[0] <= 16 else 1e-2)
            return x * 2

    prof = profile_model(
        nn.Sequential(Stepwise()), torch.randn(64, 2), rows=[8, 16, 64], repeats=1, clock=clock
    )
    error, at = prof.fit_error
    assert at == 16 and error > 0.5
    assert prof.scaled(16)[0][0] == pytest.approx(1e-3)  # as measured, not the line
    assert "a straight line misses by" in prof.describe()


def test_a_profile_round_trips_through_json(tmp_path):
    from conveyor.train import ModelProfile

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    prof = profile_model(model, torch.randn(16, 4), rows=[2, 8, 16], repeats=2, warmup=0)
    loaded = ModelProfile.load(prof.save(tmp_path / "p.json"))
    assert loaded == prof  # every float exactly
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(TrainError, match="not a conveyor model profile"):
        ModelProfile.load(tmp_path / "bad.json")
    with pytest.raises(TrainError, match="cannot read the model profile"):
        ModelProfile.load(tmp_path / "missing.json")
