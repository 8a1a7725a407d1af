"""``conveyor train`` end to end on 2 gloo ranks, and its errors for bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
from click.testing import CliRunner

from conveyor.train.cli import train

pytestmark = pytest.mark.train
TOY = f"{Path(__file__).with_name('toy_model.py')}:make_model"


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_cli_trains_and_reports(tmp_path):
    svg = tmp_path / "timeline.svg"
    out = subprocess.run(
        [sys.executable, "-m", "conveyor.train.cli", TOY, "--stages", "2", "--schedule", "auto",
         "--microbatches", "4", "--batch-size", "32", "--steps", "4", "--svg", str(svg)],
        capture_output=True, text=True, timeout=680,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "partition (optimal)" in text and "stage 1: layers" in text
    assert "why: " in text and "plan:" in text
    losses = re.findall(r"step +(\d+) (\d+\.\d+)", text)
    assert [int(step) for step, _ in losses] == [0, 1, 2, 3]
    assert all(0 < float(x) < 10 for _, x in losses)
    assert re.search(r"bubble +measured +\d+\.\d% +predicted +\d+\.\d%", text)
    assert svg.read_text().startswith("<svg") and svg.with_name("timeline-predicted.svg").exists()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_cli_saves_weights_checkpoints_and_resumes(tmp_path):
    import torch

    from conveyor.train._runtime import load_object

    weights, ckpt = tmp_path / "weights.pt", tmp_path / "ckpt"
    common = [sys.executable, "-m", "conveyor.train.cli", TOY, "--stages", "2", "--schedule",
              "1f1b", "--microbatches", "2", "--batch-size", "32", "--steps", "6",
              "--optimizer", "adamw", "--weight-decay", "0.01", "--lr-schedule", "cosine",
              "--clip-grad", "1.0", "--checkpoint-dir", str(ckpt), "--log-every", "2",
              "--profile-cache", str(tmp_path / "profiles")]  # fmt: skip
    first = subprocess.run([*common, "--until", "4"], capture_output=True, text=True, timeout=560)
    assert first.returncode == 0, first.stderr
    assert (ckpt / "step-00000004" / "layout.json").exists()
    assert f"profile: measured, saved to {tmp_path / 'profiles'}" in first.stdout
    assert "step 2/6  loss" in first.stderr and "step 4/6  loss" in first.stderr  # progress
    second = subprocess.run(
        [*common, "--resume", "--save", str(weights)], capture_output=True, text=True, timeout=560
    )
    assert second.returncode == 0, second.stderr
    assert "resumed at step 4" in second.stdout
    assert f"profile: cached at {tmp_path / 'profiles'}" in second.stdout  # the same cut
    assert [int(s) for s in re.findall(r"step +(\d+) \d+\.\d+", second.stdout)] == list(range(6))
    model = load_object(TOY)()
    model.load_state_dict(torch.load(weights))  # the saved weights fit the factory's model


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stages", "20", "--schedule", "1f1b", "--microbatches", "20", "--batch-size", "40"],
         "cannot cut 16 layers into 20 stages"),
        (["--stages", "4", "--schedule", "1f1b", "--microbatches", "2"],
         "needs at least as many micro-batches as stages (m >= p), got m=2 with p=4"),
        (["--stages", "2", "--schedule", "1f1b", "--microbatches", "3"],
         "--microbatches 3 must divide the 64 rows of a pipeline pass"),
        (["--stages", "2", "--dp", "3"], "does not split into dp=3 replicas"),
        (["--stages", "2", "--memory-cap", "0.001"],
         "no schedule fits"),
        (["--stages", "2", "--schedule", "1f1b", "--microbatches", "2", "--nnodes", "2"],
         "a run on 2 nodes needs master_port (--master-port)"),
        (["--stages", "3", "--schedule", "1f1b", "--microbatches", "4", "--nnodes", "2",
          "--master-port", "29500"],
         "3 ranks cannot be spread evenly over 2 nodes"),
        (["--stages", "2", "--schedule", "1f1b", "--microbatches", "2", "--nnodes", "2",
          "--node-rank", "2", "--master-port", "29500"],
         "node_rank 2 is not one of 0..1 (nnodes=2)"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_a_clear_error(args, message):
    result = CliRunner().invoke(train, [TOY, *args])
    assert result.exit_code == 1
    assert message in result.output


def test_cli_bad_speeds_are_a_usage_error():
    result = CliRunner().invoke(train, [TOY, "--stages", "2", "--speeds", "1,fast"])
    assert result.exit_code == 2
    assert "expected numbers separated by commas, one per rank, got '1,fast'" in result.output


def test_cli_model_not_a_sequence(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n    def forward(self, x):\n        return x\n"
        "def make_model():\n    return Net()\n"
        "def make_data():\n    return torch.randn(64, 4), torch.zeros(64, dtype=torch.long)\n"
    )
    result = CliRunner().invoke(train, [f"{bad}:make_model", "--stages", "2"])
    assert result.exit_code == 1
    assert "sequence of layers, got Net" in result.output


def test_digits_example_factories():
    pytest.importorskip("sklearn")
    from conveyor.train._profile import as_layers
    from conveyor.train._runtime import load_object

    example = Path(__file__).parents[2] / "examples" / "train_digits.py"
    x, y = load_object(f"{example}:make_data")()
    assert x.shape == (1500, 64) and y.shape == (1500,) and set(y.tolist()) == set(range(10))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert len(as_layers(load_object(f"{example}:make_model")())) == 9


def test_registered_in_the_conveyor_group():
    from conveyor.cli import cli

    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    assert "--stages" in result.output and "--schedule" in result.output
