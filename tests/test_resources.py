"""Stage resources: checked when the stage is made, GPUs given to process workers."""

from __future__ import annotations

import collections

import pytest

import conveyor as cv
import stagefns as f
from conveyor.core.resources import Resources, parse_memory
from conveyor.executors.gpus import gpu_devices, visible_gpus
from conveyor.executors.ray.pool import ray_options


def test_resources_as_a_dict_or_keywords_are_the_same() -> None:
    a = cv.stage(f.inc, resources={"cpus": 1, "gpus": 0.5, "memory": "2GB"})
    b = cv.stage(f.inc, cpus=1, gpus=0.5, memory=2_000_000_000)
    assert a.needs == b.needs == Resources(cpus=1.0, gpus=0.5, memory=2_000_000_000)
    assert cv.stage(f.inc).needs == Resources() and not cv.stage(f.inc).needs
    named = cv.stage(f.inc, resources={"node2": 1, "cpus": 2})
    assert named.needs.custom == (("node2", 1.0),) and named.needs.as_dict() == {
        "cpus": 2.0,
        "node2": 1.0,
    }
    assert a.with_options(workers=3).needs == a.needs  # kept through with_options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpus": 1.5}, r"gpus=1.5: a share of one GPU is below 1"),
        ({"gpus": -1}, r"gpus=-1; give a number of at least 0"),
        ({"cpus": "two"}, r"cpus='two'; give a number"),
        ({"cpus": float("inf")}, r"cpus=inf; give a finite number"),
        ({"memory": "lots"}, r"memory='lots'; give bytes .* '2GB'"),
        ({"memory": -5}, r"memory=-5; give bytes"),
        ({"resources": "gpu"}, r"resources='gpu'; give a dict"),
        ({"resources": {"node2": "yes"}}, r"node2='yes'; give a number"),
        ({"resources": {"gpus": 1}, "gpus": 2}, r"gpus is given twice"),
    ],
)
def test_bad_resources_fail_when_the_stage_is_made(options: dict, message: str) -> None:
    with pytest.raises(cv.PipelineError, match=r"stage 'inc': " + message) as info:
        cv.stage(f.inc, **options)
    assert info.value.stage == "inc"


def test_memory_sizes() -> None:
    assert parse_memory("512MiB") == 512 << 20
    assert parse_memory("1.5 GB") == 1_500_000_000
    assert parse_memory(1024) == 1024
    with pytest.raises(ValueError):
        parse_memory(True)


def test_gpu_packing_is_a_table() -> None:
    devices = ["0", "1"]
    assert [gpu_devices(0.5, w, devices) for w in range(5)] == [["0"], ["0"], ["1"], ["1"], ["0"]]
    assert [gpu_devices(0.25, w, devices) for w in (0, 3, 4, 7)] == [["0"], ["0"], ["1"], ["1"]]
    assert [gpu_devices(1, w, devices) for w in range(3)] == [["0"], ["1"], ["0"]]
    assert gpu_devices(2, 1, ["0", "1", "2", "3"]) == ["2", "3"]
    assert gpu_devices(0, 0, devices) == [] and gpu_devices(1, 0, []) == []


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 5"}) == ["3", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_process_workers_each_see_their_own_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    stage = cv.stage(f.visible_devices, executor="processes", workers=4, gpus=0.5)
    run = cv.Pipeline("gpus", [stage]).run(range(60))
    seen = dict(run.results)  # pid -> devices
    assert set(seen.values()) <= {"3", "5"}  # one device each, never the driver's "3,5"
    per_device = collections.Counter(seen.values())
    assert all(n <= 2 for n in per_device.values()), per_device  # two halves per device


def test_whole_gpus_per_process_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    stage = cv.stage(f.visible_devices, executor="processes", workers=2, gpus=2)
    seen = dict(cv.Pipeline("gpus", [stage]).run(range(40)).results)
    assert set(seen.values()) <= {"0,1", "2,3"}
    assert len(set(seen.values())) == len(seen)  # no two workers share a device


def test_a_process_stage_without_its_gpus_fails_when_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    stage = cv.stage(f.inc, executor="processes", gpus=1)
    with pytest.raises(cv.PipelineError, match=r"'inc' needs gpus=1 .* shows no GPU.*'ray'"):
        cv.Pipeline("gpus", [stage])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(cv.PipelineError, match=r"3 workers × gpus=1 need 3 GPU\(s\), but 2"):
        cv.Pipeline("gpus", [stage.with_options(workers=3)])
    with pytest.raises(cv.PipelineError, match=r"gpus=4 per worker .* see 2 device"):
        cv.Pipeline("gpus", [stage.with_options(gpus=4)])
    cv.Pipeline("gpus", [stage.with_options(workers=4, gpus=0.5)])  # four halves fit


def test_ray_actors_ask_for_the_stage_resources() -> None:
    stage = cv.stage(f.inc, resources={"cpus": 2, "gpus": 0.5, "memory": "1GiB", "node2": 1})
    assert ray_options(stage) == {
        "num_cpus": 2.0,
        "num_gpus": 0.5,
        "memory": 1 << 30,
        "resources": {"node2": 1.0},
        "max_concurrency": 1,
    }
    assert ray_options(cv.stage(f.inc)) == {"num_cpus": 0, "max_concurrency": 1}
