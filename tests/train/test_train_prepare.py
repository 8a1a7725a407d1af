"""Planning before the launch: reproducible cuts through the profile cache, pinned profiles,
the sizes profiled, and errors that name the layer (fake clocks; no torchrun)."""

from __future__ import annotations

import shutil
import textwrap

import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from conveyor.train import TrainError  # noqa: E402
from conveyor.train._prepare import prepare_run, profile_rows  # noqa: E402
from conveyor.train._profile_cache import profile_key  # noqa: E402
from conveyor.train._runtime import load_object  # noqa: E402
from conveyor.train.cli import train as train_cli  # noqa: E402

pytestmark = pytest.mark.train

SLEEPY = """
import torch
from torch import nn
from conveyor.train._emulate import sleep_layer
from train_fakes import NoisyClock

CLOCK = NoisyClock(noise=2e-4)
FORWARD_MS = {forward_ms!r}


def make_model():
    return nn.Sequential(*(sleep_layer(f, 1, 1, sleep=CLOCK.sleep) for f in FORWARD_MS))


def make_data():
    return torch.randn(64, 4), torch.zeros(64, dtype=torch.long)
"""


def write_model(path, forward_ms=(1, 1, 1)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SLEEPY.format(forward_ms=list(forward_ms)))
    return f"{path}:make_model", f"{path}:make_data", load_object(f"{path}:CLOCK")


def planned(model, data, clock, **kwargs):
    options = {"stages": 2, "schedule": "1f1b", "microbatches": 2, "batch_size": 8}
    options.update(kwargs)
    return prepare_run(model, data, profile_repeats=3, profile_warmup=1, clock=clock, **options)


def test_noise_alone_moves_the_cut_when_nothing_is_cached(tmp_path):
    model, data, clock = write_model(tmp_path / "m.py")
    cuts = set()
    for seed in range(8):
        clock.reseed(seed)
        run = planned(model, data, clock, profile_cache=False)
        assert run.profile_source == "measured"
        cuts.add(run.candidate.partition.bounds)
    # three equal layers on two stages: which pair shares a stage is decided by the noise
    assert cuts == {(0, 1, 3), (0, 2, 3)}


def test_the_cache_gives_the_same_cut_on_every_call(tmp_path):
    model, data, clock = write_model(tmp_path / "m.py")
    clock.reseed(0)
    first = planned(model, data, clock, profile_cache=tmp_path / "cache")
    assert first.profile_source.startswith("measured, saved to ")
    assert clock.reads > 0
    for seed in range(1, 8):
        clock.reseed(seed)  # noise that would cut differently, were it measured
        again = planned(model, data, clock, profile_cache=tmp_path / "cache")
        assert again.profile_source.startswith("cached at ")
        assert clock.reads == 0  # nothing timed
        assert again.profile == first.profile
        assert again.candidate.partition.bounds == first.candidate.partition.bounds


def test_a_changed_model_is_profiled_again_and_a_moved_one_is_not(tmp_path):
    cache = tmp_path / "cache"
    model, data, clock = write_model(tmp_path / "a" / "m.py")
    first = planned(model, data, clock, profile_cache=cache)
    # the same file elsewhere: same source, same layers, same key
    shutil.copy(tmp_path / "a" / "m.py", tmp_path / "moved.py")
    moved = planned(f"{tmp_path / 'moved.py'}:make_model", data, clock, profile_cache=cache)
    assert moved.profile_source.startswith("cached at ") and moved.profile == first.profile
    # a heavier first layer: the file and the layer's repr differ, so it is measured anew
    model2, data2, clock2 = write_model(tmp_path / "b" / "m.py", forward_ms=(3, 1, 1))
    second = planned(model2, data2, clock2, profile_cache=cache)
    assert second.profile_source.startswith("measured, saved to ")
    assert second.profile.key != first.profile.key
    assert second.profile.layers[0].forward == pytest.approx(3e-3, abs=5e-4)
    assert len(list(cache.glob("profile-*.json"))) == 2


def test_the_key_covers_what_determines_a_measurement():
    from torch import nn

    layers = [nn.Linear(4, 8), nn.ReLU()]
    sample = torch.randn(8, 4)
    base = {
        "factory": write_model,
        "layers": layers,
        "sample": sample,
        "rows": [4, 8],
        "repeats": 5,
        "warmup": 2,
        "threads": 1,
        "device": "cpu",
        "torch_version": "2.13.0",
    }
    key = profile_key(**base)
    assert profile_key(**base) == key
    changes = {
        "layers": [nn.Linear(4, 9), nn.ReLU()],
        "sample": torch.randn(8, 5),
        "rows": [2, 8],
        "repeats": 3,
        "threads": 2,
        "device": "cuda:0",
        "torch_version": "2.14.0",
        "factory": planned,
    }
    for name, value in changes.items():
        assert profile_key(**{**base, name: value}) != key, name


def test_a_pinned_profile_is_used_as_it_is(tmp_path):
    model, data, clock = write_model(tmp_path / "m.py")
    measured = planned(model, data, clock, profile_cache=False)
    path = measured.profile.save(tmp_path / "pinned.json")
    clock.reseed(99)
    pinned = planned(model, data, clock, profile=str(path))
    assert pinned.profile_source == f"pinned from {path}" and clock.reads == 0
    assert pinned.profile == measured.profile
    assert pinned.candidate.partition.bounds == measured.candidate.partition.bounds
    as_object = planned(model, data, clock, profile=measured.profile)
    assert as_object.profile_source == "pinned"
    other, _, _ = write_model(tmp_path / "four.py", forward_ms=(1, 1, 1, 1))
    with pytest.raises(TrainError, match="the pinned profile has 3 layers and the model 4"):
        planned(other, data, clock, profile=path)


def test_it_profiles_the_sizes_the_plan_considers(tmp_path):
    model, data, clock = write_model(tmp_path / "m.py")
    run = planned(model, data, clock, schedule="auto", microbatches="auto", batch_size=64)
    # every m dividing 64 up to 64, the whole batch (one process), batch / 2 (data parallel)
    assert [s.rows for s in run.profile.sizes] == [1, 2, 4, 8, 16, 32, 64]
    assert profile_rows(64, 2, [8]) == [8, 32, 64]
    many = profile_rows(360, 4, [m for m in range(1, 61) if 360 % m == 0])
    assert len(many) == 8 and many[0] == 6 and many[-1] == 360


def test_fewer_layers_than_stages_advises_the_most_possible(tmp_path):
    model, data, clock = write_model(tmp_path / "m.py")
    with pytest.raises(TrainError) as info:
        planned(model, data, clock, stages=4, schedule="auto", microbatches="auto")
    text = str(info.value)
    assert "Use at most 3 stages (--stages 3), the most this model allows" in text
    assert "more stages" not in text
    with pytest.raises(TrainError) as info:
        planned(model, data, clock, stages=4, microbatches=4)
    assert "cannot cut 3 layers into 4 stages" in str(info.value)
    assert "Use --stages 3 or fewer (the most this model allows)" in str(info.value)


BAD_DATA = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make_model():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def make_data():
        return torch.randn(64, 10), torch.zeros(64, dtype=torch.long)
    """
)


def test_data_of_the_wrong_width_names_the_layer_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(BAD_DATA)
    with pytest.raises(TrainError) as info:
        prepare_run(f"{bad}:make_model", f"{bad}:make_data", stages=2, batch_size=32)
    text = str(info.value)
    assert text.startswith("layer 0 (Linear) failed in its forward on inputs of shape (32, 10)")
    assert "in_features=8" in text
    result = CliRunner().invoke(train_cli, [f"{bad}:make_model", "--stages", "2"])
    assert result.exit_code == 1
    assert (
        "Error: layer 0 (Linear) failed in its forward on inputs of shape (64, 10)" in result.output
    )
    assert "Traceback" not in result.output and len(result.output.splitlines()) == 1
