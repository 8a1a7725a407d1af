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
