"""GPU sampling with a fake ``pynvml``, and the report's idle-GPU diagnosis on
synthetic recordings: no GPU needed."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from conveyor.analysis import build_report
from conveyor.analysis._gpu import gpu_idle_lines
from conveyor.analysis._measure import measure
from conveyor.core.events import StageInfo
from conveyor.observe import GpuSeries
from conveyor.observe.gpu import IDLE_PERCENT, POINTS, GpuSampler, stage_devices
from conveyor.observe.recording import Recording
from fakes.pynvml import FakeNvml, GiB
from pipesim import MS, SimStage, simulate


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    nvml = FakeNvml({0: [0, 0, 90, 95], 1: [50]})
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    yield nvml


def info(name: str, executor: str, workers: int, gpus: float) -> StageInfo:
    return StageInfo(name, "map", executor, workers, 8, (), (), gpus=gpus)


def test_stage_devices_follow_the_packing_of_process_workers() -> None:
    visible = ["0", "1", "2", "3"]
    assert stage_devices([info("embed", "processes", 4, 0.5)], visible) == {
        "0": ["embed"],
        "1": ["embed"],
    }
    assert stage_devices([info("train", "processes", 2, 2)], visible) == {
        "0": ["train"],
        "1": ["train"],
        "2": ["train"],
        "3": ["train"],
    }
    # threads run in the driver's process: the first devices it sees
    both = [info("a", "threads", 1, 1), info("b", "sync", 1, 0.5), info("cpu", "threads", 4, 0)]
    assert stage_devices(both, visible) == {"0": ["a", "b"]}
    # Ray's actors' devices are on their nodes: not sampled from the driver
    assert stage_devices([info("r", "ray", 2, 1)], visible) == {}
    assert stage_devices([info("a", "threads", 1, 1)], []) == {}


def test_a_run_with_a_gpu_stage_records_each_device_it_used(two_gpus: FakeNvml) -> None:
    pipe = cv.Pipeline(
        "gpu", [cv.stage(f.inc, name="parse"), cv.stage(f.square, name="embed", gpus=1)]
    )
    run = pipe.run(range(50), ordered=True)
    assert run.results == [(x + 1) ** 2 for x in range(50)]
    rec = run.recording
    assert [(g.device, g.stages, g.name) for g in rec.gpus] == [("0", ["embed"], "Fake H200")]
    g = rec.gpus[0]
    assert g.memory_total == 141 * GiB and set(g.memory) == {GiB}
    assert sum(g.samples) >= 2  # one when the run starts, one when it ends
    assert g.utilisation[:2] == [0.0, 0.0] and g.idle[:2] == [1, 1]
    assert two_gpus.reads[1] == 0  # device 1 serves no stage: never read
    assert two_gpus.inits == two_gpus.shutdowns == 1
    assert not [t for t in threading.enumerate() if t.name == "conveyor-gpu-sampler"]


def test_the_series_survive_save_and_load(two_gpus: FakeNvml, tmp_path: Path) -> None:
    pipe = cv.Pipeline("gpu", [cv.stage(f.square, name="embed", gpus=0.5)])
    rec = pipe.run(range(5)).recording
    back = Recording.load(rec.save(tmp_path / "r.json.gz"))
    assert back.gpus == rec.gpus and back.gpus[0].stages == ["embed"]
    # a recording made before GPU sampling has none
    old = rec.to_dict()
    del old["gpus"]
    assert Recording.from_dict(old).gpus == []


def test_no_library_or_no_gpu_samples_nothing_and_fails_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    pipe = cv.Pipeline("gpu", [cv.stage(f.square, name="embed", gpus=1)])
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    with caplog.at_level(logging.DEBUG, logger="conveyor.gpu"):
        run = pipe.run(range(5), ordered=True)
    assert run.results == [x * x for x in range(5)] and run.recording.gpus == []
    assert [r.getMessage() for r in caplog.records] == [
        "no GPU sampled: pip install 'conveyor[gpu]' (nvidia-ml-py) to sample them"
    ]
    caplog.clear()
    broken = FakeNvml({0: [0]}, init_error="NVML Shared Library Not Found")
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    with caplog.at_level(logging.DEBUG, logger="conveyor.gpu"):
        assert pipe.run(range(5)).recording.gpus == []
    assert len(caplog.records) == 1 and "Library Not Found" in caplog.records[0].getMessage()
    # a stage without gpus never loads the library at all
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml({}, init_error="must not be called"))
    assert cv.Pipeline("cpu", [f.square]).run(range(3)).recording.gpus == []


def test_a_device_lost_mid_run_stops_sampling_not_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml({0: [10]})
    calls = 0

    def lost(h: int) -> types.SimpleNamespace:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise nvml.NVMLError("GPU is lost")
        return types.SimpleNamespace(gpu=10)

    nvml.nvmlDeviceGetUtilizationRates = lost  # type: ignore[method-assign]
    sampler = GpuSampler(nvml, {"0": ["embed"]}, period_s=0.001)
    sampler.start()
    assert _wait(lambda: calls >= 2)
    sampler.stop()
    assert sampler.series()[0].utilisation == [10.0]
    assert not [t for t in threading.enumerate() if t.name == "conveyor-gpu-sampler"]


def _wait(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    from conftest import wait_until

    return bool(wait_until(predicate, timeout))


def test_points_merge_past_the_limit_keeping_totals_and_peaks() -> None:
    clock = iter(range(0, 10**12, 500 * MS))
    nvml = FakeNvml({0: [0, 100] * 2000})
    sampler = GpuSampler(nvml, {"0": ["embed"]}, clock=lambda: next(clock))
    for _ in range(3 * POINTS):
        sampler.sample()
    g = sampler.series()[0]
    assert len(g.t_ns) < POINTS
    assert sum(g.samples) == 3 * POINTS and sum(g.idle) == 3 * POINTS // 2
    assert g.idle_share() == 0.5
    assert all(u == 50.0 for u in g.utilisation[:-1])  # idle and busy halves averaged
    assert g.t_ns == sorted(g.t_ns) and g.t_ns[0] == 0


# --- the report ---------------------------------------------------------------------


def gpu_series(rec: Recording, device: str, stages: list[str], idle_share: float) -> GpuSeries:
    """A device sampled every 10 ms over the recording's window, idle ``idle_share``
    of its samples (the first ones)."""
    assert rec.t0_ns is not None and rec.t1_ns is not None
    times = list(range(rec.t0_ns, rec.t1_ns + 1, 10 * MS))
    idle_n = round(idle_share * len(times))
    utils = [0.0] * idle_n + [90.0] * (len(times) - idle_n)
    return GpuSeries(
        device,
        stages,
        "Fake H200",
        141 * GiB,
        times,
        utils,
        [GiB] * len(times),
        [1 if u <= IDLE_PERCENT else 0 for u in utils],
        [1] * len(times),
    )


def gpu_lines(rec: Recording) -> list[str]:
    return [r for r in build_report(rec).recommendations if r.startswith("GPU ")]


def test_an_idle_gpu_is_said_to_be_starved_by_the_bottleneck_upstream() -> None:
    # parse (10 ms) feeds embed (4 ms): embed waits for input 60% of the time
    rec = simulate([SimStage("parse", 10), SimStage("embed", 4)], items=200)
    rec = dataclasses.replace(rec, gpus=[gpu_series(rec, "0", ["embed"], 0.62)])
    report = build_report(rec)
    embed, parse = report.measure.stages["embed"], report.measure.stages["parse"]
    assert report.bottleneck is not None and report.bottleneck.stage == "parse"
    assert gpu_lines(rec) == [
        f"GPU 0 (stage embed) was idle 62% of the run while embed's input queue was empty "
        f"{embed.starved_share:.0%} of it: starved by parse (busy {parse.utilisation:.0%}, "
        "the bottleneck)"
    ]
    assert round(embed.starved_share, 2) == 0.6 and parse.utilisation > 0.99


def test_a_busy_gpu_that_is_the_bottleneck_gets_no_line() -> None:
    rec = simulate([SimStage("parse", 2), SimStage("embed", 10)], items=200)
    rec = dataclasses.replace(rec, gpus=[gpu_series(rec, "0", ["embed"], 0.03)])
    report = build_report(rec)
    assert report.bottleneck is not None and report.bottleneck.stage == "embed"
    assert gpu_lines(rec) == []


def test_an_idle_gpu_on_a_busy_stage_points_inside_the_stage() -> None:
    rec = simulate([SimStage("parse", 2), SimStage("embed", 10)], items=200)
    rec = dataclasses.replace(rec, gpus=[gpu_series(rec, "1", ["embed"], 0.4)])
    (line,) = gpu_lines(rec)
    assert line.startswith("GPU 1 (stage embed) was idle 40% of the run while embed's workers")
    assert "starved" not in line and "work off the GPU inside the stage" in line


def test_a_gpu_stage_blocked_downstream_or_starved_by_the_source() -> None:
    rec = simulate(
        [SimStage("read", 1), SimStage("parse", 5), SimStage("embed", 2), SimStage("write", 12)],
        items=100,
    )
    rec = dataclasses.replace(rec, gpus=[gpu_series(rec, "0", ["embed"], 0.5)])
    report = build_report(rec)
    embed, write = report.measure.stages["embed"], report.measure.stages["write"]
    assert report.bottleneck is not None and report.bottleneck.stage == "write"
    assert gpu_lines(rec) == [
        f"GPU 0 (stage embed) was idle 50% of the run while embed was blocked "
        f"{embed.blocked_share:.0%} of it by a full queue after it: write (busy "
        f"{write.utilisation:.0%}, the bottleneck) holds it back"
    ]
    # the only stage holds the GPU; a slow source feeds it
    slow = simulate([SimStage("embed", 1)], items=50, arrival_ns=10 * MS)
    slow = dataclasses.replace(slow, gpus=[gpu_series(slow, "0", ["embed"], 0.9)])
    (line,) = gpu_lines(slow)
    assert line.startswith("GPU 0 (stage embed) was idle 90% of the run while embed's input")
    assert line.endswith("starved by the source (it delivered 102 items/s)")


def test_without_a_bottleneck_upstream_the_busiest_stage_before_is_named() -> None:
    rec = simulate([SimStage("read", 1), SimStage("parse", 10), SimStage("embed", 4)], items=100)
    rec = dataclasses.replace(rec, gpus=[gpu_series(rec, "0", ["embed"], 0.6)])
    m = measure(rec)
    (line,) = gpu_idle_lines(rec, m, None)
    parse = m.stages["parse"]
    assert line.endswith(
        f"starved by parse (busy {parse.utilisation:.0%}, the busiest stage before it)"
    )
    # a sampled device of no stage in this recording says nothing
    other = dataclasses.replace(rec, gpus=[gpu_series(rec, "0", ["gone"], 0.9)])
    assert gpu_idle_lines(other, m, None) == []


def test_the_real_library_on_a_machine_without_a_gpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """nvidia-ml-py installed (as CI installs the gpu extra), no driver: nothing sampled."""
    pynvml = pytest.importorskip("pynvml", reason="pip install -e '.[gpu]'")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver: the fake library's tests cover it")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    pipe = cv.Pipeline("gpu", [cv.stage(f.square, name="embed", gpus=1)])
    with caplog.at_level(logging.DEBUG, logger="conveyor.gpu"):
        run = pipe.run(range(5), ordered=True)
    assert run.results == [x * x for x in range(5)] and run.recording.gpus == []
    assert [r.getMessage()[:33] for r in caplog.records] == ["no GPU sampled: NVML did not star"]


def test_process_workers_sampled_on_the_devices_they_were_given(two_gpus: FakeNvml) -> None:
    pipe = cv.Pipeline(
        "gpu", [cv.stage(f.square, name="embed", executor="processes", workers=2, gpus=0.5)]
    )
    rec = pipe.run(range(10)).recording
    # two workers at half a GPU each share device 0 (CUDA_VISIBLE_DEVICES=0 for both)
    assert [(g.device, g.stages) for g in rec.gpus] == [("0", ["embed"])]


def test_the_dashboards_timeline_carries_the_gpu_series() -> None:
    from conveyor.dashboard._timeline import timeline_data

    rec = simulate([SimStage("parse", 10), SimStage("embed", 4)], items=50)
    rec = dataclasses.replace(rec, gpus=[gpu_series(rec, "0", ["embed"], 0.5)])
    (g,) = timeline_data(rec, width=100)["gpus"]
    assert g["device"] == "0" and g["stages"] == ["embed"] and g["name"] == "Fake H200"
    assert g["node"] == ""  # this machine's (a Ray node's device names its node)
    assert len(g["x"]) == len(g["utilisation"]) == len(g["memory_gib"]) == len(rec.gpus[0].t_ns)
    assert set(g["utilisation"]) == {0.0, 90.0} and set(g["memory_gib"]) == {1.0}
    assert g["x"][0] == (rec.gpus[0].t_ns[0] - rec.started_ns) / 1e9


# --- series from elsewhere: Ray's actors ------------------------------------------


def series(device: str, node: str, stage: str, t: list[int], util: list[float]) -> GpuSeries:
    g = GpuSeries(device, [stage], "Fake H200", 141 * GiB, node=node)
    for ti, u in zip(t, util, strict=True):
        g.add(ti, u, GiB)
    return g


def test_a_device_two_actors_sampled_is_one_series_in_time_order() -> None:
    a = series("0", "10.0.0.5 1a2b3c4d", "embed", [0, 20, 40], [0, 0, 90])
    b = series("0", "10.0.0.5 1a2b3c4d", "rerank", [10, 30], [90, 90])
    g = GpuSeries.merged([a, b])
    assert g.t_ns == [0, 10, 20, 30, 40] and g.utilisation == [0, 90, 0, 90, 90]
    assert g.stages == ["embed", "rerank"] and g.node == "10.0.0.5 1a2b3c4d"
    assert g.idle_share() == 0.4 and a.t_ns == [0, 20, 40]  # the parts are untouched
    # past POINTS, neighbours merge: every sample kept, fewer points
    many = [series("0", "n", "s", list(range(k, 4 * POINTS, 4)), [0.0] * POINTS) for k in (1, 2)]
    big = GpuSeries.merged(many)
    assert len(big.t_ns) < POINTS and sum(big.samples) == 2 * POINTS and big.idle_share() == 1
    assert GpuSeries.merged([a]).shifted(5).t_ns == [5, 25, 45]


def test_remote_series_merge_per_node_and_device() -> None:
    from conveyor.observe.gpu import RemoteGpus

    remote = RemoteGpus()
    remote.put(("embed", 0), [series("0", "node-a", "embed", [0, 10], [0, 0])])
    remote.put(("embed", 1), [series("0", "node-a", "embed", [5], [50])])
    remote.put(("embed", 2), [series("0", "node-b", "embed", [5], [70])])
    remote.put(("embed", 0), [series("0", "node-a", "embed", [0, 10, 20], [0, 0, 0])])  # later
    got = remote.series()
    assert [(g.node, g.device, sum(g.samples)) for g in got] == [
        ("node-a", "0", 4),
        ("node-b", "0", 1),
    ]


def test_ray_stages_alone_sample_nothing_on_the_driver(
    two_gpus: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    from conveyor.observe import gpu

    stages = [info("embed", "ray", 2, 0.5)]
    with caplog.at_level(logging.DEBUG, logger="conveyor.gpu"):
        assert isinstance(gpu.sampler_for(stages, run_id="r1"), gpu.NoSampling)
    assert two_gpus.inits == 0 and caplog.records == []  # nothing to say: nothing is here
    remote = gpu.open_remote("r2")
    try:
        remote.put(("embed", 0), [series("0", "node-a", "embed", [0], [0])])
        sampling = gpu.sampler_for(stages, run_id="r2")
    finally:
        gpu.close_remote("r2")
    assert gpu.sampler_for(stages, run_id="r2").series() == []  # closed with its run
    sampling.stop()
    assert [(g.node, g.stages) for g in sampling.series()] == [("node-a", ["embed"])]
    assert two_gpus.inits == 0


def test_an_actors_series_come_onto_the_drivers_clock() -> None:
    from conveyor.executors.ray.roster import Actor
    from conveyor.executors.ray.sampling import GpuPolls
    from conveyor.observe.gpu import RemoteGpus

    class Pool(GpuPolls):
        def __init__(self) -> None:
            self.stage = types.SimpleNamespace(name="embed")  # type: ignore[assignment]
            self._remote = RemoteGpus()

    pool, a = Pool(), Actor(0, None, None)
    now = time.monotonic_ns()
    # the actor's clock runs 1 s behind; asked 4 ms ago, it answered at its now - 1 s
    a.gpus_asked = now - 4 * MS
    pool._gpus_answered(a, (now - 2 * MS - 10**9, [series("0", "n", "embed", [0], [0])]))
    assert a.gpus_asked == 0 and a.clock_shift is not None
    assert abs(a.clock_shift - 10**9) < 2 * MS  # the round trip's middle, give or take
    (g,) = pool._remote.series()  # type: ignore[union-attr]
    assert g.t_ns == [a.clock_shift]
    # an actor that samples nothing is never asked again
    pool._gpus_answered(a, (now, None))
    assert a.gpus_off
