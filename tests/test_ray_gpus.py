"""GPU sampling of Ray stages: each actor samples the devices Ray gave it, on its node,
and the driver puts them in the recording, one series per node and device.

A local Ray instance with two GPUs to hand out (none exists) and a scripted
``pynvml`` (``tests/fakes/pynvml.py``) first on its workers' path.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
import stagefns as f
from conftest import wait_until
from conveyor.analysis import build_report
from conveyor.observe import gpu
from conveyor.observe.recording import Recording
from fakes.pynvml import GiB
from raycluster import have_ray, local_ray
from test_conformance import Ledger

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not have_ray(), reason="needs Ray: pip install -e '.[ray]'"),
]

FAKES = str(Path(__file__).resolve().parent / "fakes")
SCRIPT = {"0": [0, 0, 0, 0, 0, 0, 30], "1": [0, 0, 0, 0, 0, 0, 40]}  # idle, then a little


@pytest.fixture(scope="module")
def ray_gpus() -> Iterator[Any]:
    """Local Ray with two (fake) GPUs; its workers import the scripted pynvml."""
    with local_ray(num_cpus=4, num_gpus=2, path=(FAKES,)) as ray:
        yield ray


@pytest.fixture
def nvml_log(ray_gpus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The script the actors' pynvml follows (CONVEYOR_* variables follow the run to
    the actors), and the file each of its nvmlInit calls writes a line to."""
    log = tmp_path / "nvml.log"
    monkeypatch.setenv("CONVEYOR_FAKE_NVML", json.dumps(SCRIPT))
    monkeypatch.setenv("CONVEYOR_FAKE_NVML_LOG", str(log))
    return log


@pytest.fixture
def puts(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, int], list[gpu.GpuSeries]]:
    """Each actor's last answer, as the driver put it in the run's RemoteGpus."""
    noted: dict[tuple[str, int], list[gpu.GpuSeries]] = {}
    put = gpu.RemoteGpus.put

    def note(self: gpu.RemoteGpus, actor: tuple[str, int], series: list[gpu.GpuSeries]) -> None:
        noted[actor] = series
        put(self, actor, series)

    monkeypatch.setattr(gpu.RemoteGpus, "put", note)
    return noted


def parse(x: int) -> int:
    time.sleep(0.012)  # the slow stage before the GPU: the GPU stage waits for it
    return x


def once_sampling(log: Path, actors: int, items: int) -> Iterator[int]:
    """``range(items)``, once ``actors`` actors sample (their start, a second or more
    on this machine, is not the pipeline's time: the run's window starts later)."""
    assert wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= actors, 60)
    yield from range(items)


def test_a_ray_gpu_stage_is_sampled_on_its_node(
    nvml_log: Path, puts: dict[tuple[str, int], list[gpu.GpuSeries]], tmp_path: Path
) -> None:
    pipe = cv.Pipeline(
        "ray-gpu",
        [
            cv.stage(parse, name="parse"),
            cv.stage(f.visible_devices, name="embed", executor="ray", workers=2, gpus=0.5),
        ],
    )
    run = pipe.run(once_sampling(nvml_log, 2, 150))
    rec = run.recording
    assert len(run.results) == 150
    assert len(nvml_log.read_text().splitlines()) == 2  # one sampler per actor
    # both actors answered, each with the device(s) Ray gave it (a half GPU each: Ray
    # packs them onto one), on the node the stage's workers ran on
    assert set(puts) == {("embed", 0), ("embed", 1)}
    devices = {(g.node, g.device) for series in puts.values() for g in series}
    assert {d for _, d in run.results} <= {d for _, d in devices} <= {"0", "1"}
    assert {n for n, _ in devices} == set(rec.places["embed"].values())
    assert all(n for n, _ in devices)  # "<ip> <node id>"
    # one series per node and device, however many actors shared it, losing no sample
    assert sorted((g.node, g.device) for g in rec.gpus) == sorted(devices)
    assert sum(sum(g.samples) for g in rec.gpus) == sum(
        sum(g.samples) for series in puts.values() for g in series
    )
    for g in rec.gpus:
        assert g.stages == ["embed"] and g.name == "Fake H200"
        assert g.memory_total == 141 * GiB and set(g.memory) == {(int(g.device) + 1) * GiB}
        assert set(g.utilisation) <= {0.0, float(SCRIPT[g.device][-1])}
        assert sum(g.samples) >= 4  # each actor: when it starts, twice a second, at the end
        assert g.t_ns == sorted(g.t_ns)
        # on the driver's clock: from the actors' start (before the run's) to its end
        assert rec.ended_ns is not None
        assert rec.started_ns - 30e9 < g.t_ns[0] and g.t_ns[-1] < rec.ended_ns + 5e9
    # the report: the idle GPU was starved by the stage before it
    report = build_report(rec)
    assert report.bottleneck is not None and report.bottleneck.stage == "parse"
    lines = [r for r in report.recommendations if r.startswith("GPU ")]
    assert len(lines) == len(devices)
    for line, g in zip(lines, rec.gpus, strict=True):
        assert line.startswith(f"GPU {g.device} on {g.node} (stage embed) was idle ")
        assert "while embed's input queue was empty" in line
        assert "starved by parse (busy" in line and line.endswith("the bottleneck)")
    # the recording keeps the node through save and load
    back = Recording.load(rec.save(tmp_path / "r.json.gz"))
    assert back.gpus == rec.gpus and all(g.node for g in back.gpus)
    assert gpu._remote == {}  # the run's collection is closed with it


def test_a_ray_stage_without_gpus_samples_nothing(
    nvml_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real = gpu.open_remote
    monkeypatch.setattr(
        "conveyor.executors.ray.sampling.open_remote", lambda r: opened.append(r) or real(r)
    )
    pipe = cv.Pipeline("ray-cpu", [cv.stage(f.visible_devices, executor="ray", workers=2)])
    run = pipe.run(range(20))
    assert len(run.results) == 20 and {d for _, d in run.results} <= {None, ""}
    assert run.recording.gpus == [] and opened == [] and not nvml_log.exists()


def test_an_actor_killed_mid_run_loses_no_other_series(
    nvml_log: Path, puts: dict[tuple[str, int], list[gpu.GpuSeries]], tmp_path: Path
) -> None:
    marker = tmp_path / "killed"
    embed = functools.partial(f.devices_or_die, str(marker), 150)  # 1.8 s in: asked once
    pipe = cv.Pipeline(
        "ray-gpu-kill",
        [
            cv.stage(parse, name="parse"),
            cv.stage(embed, name="embed", executor="ray", workers=2, gpus=0.5, retry=2),
        ],
    )
    ledger = Ledger()
    run = pipe.run(once_sampling(nvml_log, 2, 300), instruments=[ledger])
    assert marker.exists()  # an actor did die, mid-run
    assert len(run.results) == 300 and set(ledger.states.values()) == {"done"}
    assert sorted(ledger.states) == list(range(300))  # each item once, none lost
    assert run.statistics().stages["embed"].lost_workers == 1
    rec = run.recording
    assert sorted(g.device for g in rec.gpus) == sorted({d for _, d in run.results})
    assert all(g.stages == ["embed"] and g.node for g in rec.gpus)
    # both first actors answered (the dead one before it died); every answer's samples
    # are in the recording, the dead actor's last among them
    assert {("embed", 0), ("embed", 1)} <= set(puts)
    assert sum(sum(g.samples) for g in rec.gpus) == sum(
        sum(g.samples) for series in puts.values() for g in series
    )


def test_a_node_whose_library_finds_no_device_fails_nothing(
    nvml_log: Path,
    puts: dict[tuple[str, int], list[gpu.GpuSeries]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVEYOR_FAKE_NVML", "{}")  # NVML starts, and knows no device 0
    pipe = cv.Pipeline(
        "ray-gpu-none", [cv.stage(f.visible_devices, executor="ray", workers=2, gpus=0.5)]
    )
    run = pipe.run(range(20))
    assert len(run.results) == 20 and run.recording.gpus == []
    assert len(nvml_log.read_text().splitlines()) == 2 and puts == {}  # tried; said none
