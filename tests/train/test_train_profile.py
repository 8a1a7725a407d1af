"""The profiler on layers of known cost, and the errors for models that are not sequences."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from conveyor.train import TrainError, profile_model  # noqa: E402
from conveyor.train._emulate import sleep_layer  # noqa: E402
from conveyor.train._profile import as_layers  # noqa: E402

pytestmark = pytest.mark.train


def test_sleeping_layers_measure_their_sleep():
    model = nn.Sequential(sleep_layer(4, 8, 2), sleep_layer(2, 3, 6))
    prof = profile_model(model, torch.randn(8, 4), repeats=3, warmup=1)
    expected = [(4, 8, 2), (2, 3, 6)]
    for lp, (f, i, w) in zip(prof.layers, expected, strict=True):
        measured = (lp.forward * 1e3, lp.backward * 1e3, lp.weight * 1e3)
        for got, want in zip(measured, (f, i, w), strict=True):
            # sleep never returns early; the slack covers scheduling on a busy machine
            assert want - 0.3 <= got <= want + 3.0, (lp.name, measured, (f, i, w))
        # sleeping does not scale with the batch: all of it is fixed cost
        assert lp.forward_fixed == pytest.approx(lp.forward, rel=0.5)


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
