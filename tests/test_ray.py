"""The ray executor beyond the shared suites: class stages, placement, its extra.

The conformance and contract suites run on Ray too (one local instance per module);
the two-node cluster with a node killed is ``test_ray_cluster.py``.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from conftest import wait_until
from raycluster import have_ray

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have_ray(), reason="needs Ray: pip install -e '.[ray]'"),
]


@pytest.fixture(autouse=True)
def ray(ray_instance):  # type: ignore[no-untyped-def]
    return ray_instance


def test_a_class_stage_is_one_instance_per_actor() -> None:
    stage = cv.stage(f.Counted, executor="ray", workers=2)
    run = cv.Pipeline("classes", [stage]).run(range(200))
    instances = collections.defaultdict(set)
    calls: collections.Counter[int] = collections.Counter()
    for pid, instance, n in run.results:
        instances[pid].add(instance)
        calls[pid] = max(calls[pid], n)
    assert all(len(v) == 1 for v in instances.values())  # one instance per actor process
    assert 1 <= len(instances) <= 2 and sum(calls.values()) == 200  # state kept across calls


def test_threads_processes_and_ray_give_the_same_results() -> None:
    def pipe(executor: str) -> cv.Pipeline:
        return cv.Pipeline(
            "same",
            [
                cv.stage(f.inc, executor=executor, workers=2),
                cv.stage(f.explode, kind="flat_map", executor=executor),
                cv.stage(f.batch_square, kind="batch", size=7, split=True, executor=executor),
            ],
        )

    results = {e: sorted(pipe(e).run(range(50)).results) for e in ("threads", "ray")}
    assert results["ray"] == results["threads"]


def test_stamps_are_on_the_drivers_clock() -> None:
    # The actor's monotonic clock is not the driver's: durations come from the actor,
    # placed to end when the reply arrived, so the recording stays inside the run.
    stage = cv.stage(f.slow, executor="ray", workers=2)
    run = cv.Pipeline("clock", [stage]).run(range(20))
    rec = run.recording
    assert rec is not None
    stats = run.statistics().stages["slow"]
    assert stats.calls == 20
    m = run.report().measure
    assert 0 < m.stages["slow"].busy_s <= m.makespan_s * 2 + 1  # two workers at most


def test_without_ray_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(cv.PipelineError, match=r"pip install 'conveyor\[ray\]'"):
        cv.Pipeline("noray", [cv.stage(f.inc, executor="ray")])


def test_the_same_example_file_runs_on_threads_processes_and_ray(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from conveyor.cli import cli

    root = Path(__file__).resolve().parent.parent
    target = f"{root / 'examples' / 'scale.py'}:pipeline"
    config = str(root / "examples" / "scale-processes.toml")
    # --ray sets $CONVEYOR_RAY_ADDRESS: unset after the test (and during it until then)
    monkeypatch.setenv("CONVEYOR_RAY_ADDRESS", "auto")
    monkeypatch.delenv("CONVEYOR_RAY_ADDRESS")
    # the test's own Ray instance is this process's: --ray uses the session it finds
    outputs = {}
    for name, extra in (
        ("threads", []),
        ("processes", ["--config", config]),
        ("ray", ["--ray", "auto"]),
    ):
        out, stats = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.json"
        args = ["run", target, "--no-progress", "--no-store", "--output", str(out)]
        result = CliRunner().invoke(cli, [*args, "--json", str(stats), *extra])
        assert result.exit_code == 0, result.output
        executors = {s["executor"] for s in json.loads(stats.read_text())["stages"].values()}
        assert executors == {name}  # every stage went where it was sent
        outputs[name] = sorted(out.read_text().splitlines())
    assert outputs["threads"] == outputs["processes"] == outputs["ray"]
    assert len(outputs["ray"]) == 1


def test_ray_moves_every_stage_but_those_pinned_to_the_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor.cli.cluster import on_ray

    monkeypatch.setenv("CONVEYOR_RAY_ADDRESS", "auto")  # on_ray sets it: restored after

    pipe = cv.Pipeline(
        "pins",
        [
            cv.stage(f.inc),
            cv.stage(f.double, executor="processes"),
            cv.stage(f.square, executor="sync"),
        ],
    )
    moved = on_ray(pipe, "auto")
    assert {n: s.executor for n, s in moved.stages.items()} == {
        "inc": "ray",
        "double": "ray",
        "square": "sync",
    }


def test_a_call_past_its_timeout_kills_its_actor_and_fails_only_its_item() -> None:
    # item 5 hangs (a thread event nobody sets in the actor): its actor is asked which
    # unit it runs, killed past the timeout, replaced; the other items complete.
    stage = cv.stage(f.hang_on_5, executor="ray", workers=2, timeout=1.0, on_error="skip")
    run = cv.Pipeline("timeouts", [stage]).run(range(40))
    assert sorted(run.results) == [i for i in range(40) if i != 5]
    stats = run.statistics().stages["hang_on_5"]
    assert stats.timeouts == 1 and stats.dead_lettered == 1


def test_a_stage_no_node_can_place_says_so_and_can_be_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor.executors.ray import watch

    monkeypatch.setattr(watch, "UNPLACED_SECONDS", 0.5)
    stage = cv.stage(f.inc, executor="ray", resources={"nowhere": 1})
    expected = r"'inc': 1 Ray worker\(s\) have waited .*nowhere"
    with pytest.warns(RuntimeWarning, match=expected) as seen:
        service = cv.Pipeline("unplaced", [stage]).start(range(3))  # a thread drives it
        assert wait_until(lambda: len(seen) > 0, timeout=20)
        assert service.stop(drain=False, timeout=30) == "cancelled"
