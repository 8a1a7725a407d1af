"""Release: the deployment pipeline as a conveyor pipeline recorded in the run store;
a stage that says no stops it with the reason; conveyor deploy's exit codes; a drift
alarm starts a release whose lineage leads back to it."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import conveyor as cv
from conveyor.cli import cli
from conveyor.lifecycle import Candidate, LifecycleError, LifecycleLog, Release, retrain_on_drift
from conveyor.store import RunStore


def build(c: Candidate) -> cv.models.ModelVersion:
    return cv.models.register("m", {"made_for": c.cause}, format="pickle", metrics={"acc": 0.9})


def test_a_first_release_builds_tests_and_promotes_recorded_as_a_run() -> None:
    seen: list[str] = []
    candidate = Release("m", build=build, tests=lambda c: seen.append(c.ref)).run()
    assert candidate.promoted and candidate.stopped is None
    assert seen == ["m:1"] and cv.models.get("m@champion").version == 1
    with LifecycleLog() as log:
        kinds = [log.event(i).kind for i in candidate.events]
        assert kinds == ["build", "test", "promote"]
        assert [e.kind for e in log.lineage(candidate.events[-1])] == kinds
        assert {log.event(i).run_id for i in candidate.events} == {candidate.run_id}
    with RunStore() as store:
        run = store.get_run(candidate.run_id)
        stages = store.stage_statistics(candidate.run_id)
    assert run.state == "succeeded" and run.pipeline == "release-m"
    assert [s.stage for s in stages] == [
        "build",
        "test",
        "validate",
        "shadow",
        "canary",
        "promote",
        "watch",
    ]


def test_failing_tests_stop_the_release_and_leave_the_alias() -> None:
    Release("m", build=build).run()

    def tests(c: Candidate) -> None:
        raise AssertionError("answers the wrong shape")

    candidate = Release("m", build=build, tests=tests).run()
    assert not candidate.promoted and candidate.version == 2
    assert candidate.stopped == "test: the tests raised AssertionError: answers the wrong shape"
    assert cv.models.get("m@champion").version == 1
    with LifecycleLog() as log:
        assert [log.event(i).passed for i in candidate.events] == [True, False]


def test_pytest_runs_on_the_candidate(tmp_path: Path) -> None:
    checks = tmp_path / "checks_model.py"
    checks.write_text(
        textwrap.dedent("""
        import os
        import conveyor as cv

        def test_the_candidate_is_named():
            assert os.environ["CONVEYOR_CANDIDATE"] in ("m:1", "m:2")
            assert cv.models.get(os.environ["CONVEYOR_CANDIDATE"]).metrics == {"acc": 0.9}

        def test_it_fails_when_told():
            assert os.environ.get("FAIL_IT") is None, "told to fail"
    """)
    )
    assert Release("m", build=build, tests=[str(checks)]).run().promoted
    stopped = Release("m", build=build, tests=[str(checks)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIL_IT", "1")
        candidate = stopped.run()
    assert candidate.stopped is not None and candidate.stopped.startswith("test: pytest")
    assert "1 failed" in candidate.stopped
    with LifecycleLog() as log:
        evidence = log.event(candidate.events[-1]).evidence
    assert evidence["exit"] == 1 and any("told to fail" in line for line in evidence["output"])


def test_a_build_that_returns_no_version_is_named() -> None:
    with pytest.raises(cv.RunError) as caught:
        Release("m", build=lambda c: "model.pkl").run()
    assert isinstance(caught.value.__cause__, LifecycleError)
    assert "return the registered version" in str(caught.value.__cause__)


def test_conveyor_deploy_exits_0_when_promoted_and_1_when_stopped(tmp_path: Path) -> None:
    (tmp_path / "rel.py").write_text(
        textwrap.dedent("""
        import os
        import conveyor as cv
        from conveyor.lifecycle import Release

        def build(c):
            return cv.models.register("m", {"n": 1}, format="pickle")

        def tests(c):
            assert not os.environ.get("BREAK"), "broken on purpose"

        release = Release("m", build=build, tests=tests)
        not_a_release = 3
    """)
    )
    runner = CliRunner()
    done = runner.invoke(cli, ["deploy", f"{tmp_path}/rel.py:release"])
    assert done.exit_code == 0, done.output
    assert "m:1 serves m@champion" in done.output and "promote" in done.output
    broken = runner.invoke(cli, ["deploy", f"{tmp_path}/rel.py:release"], env={"BREAK": "1"})
    assert broken.exit_code == 1
    assert "stopped at test: the tests raised AssertionError: broken on purpose" in broken.output
    wrong = runner.invoke(cli, ["deploy", f"{tmp_path}/rel.py:not_a_release"])
    assert wrong.exit_code == 2 and "not a Release" in wrong.output
    assert cv.models.get("m@champion").version == 1


def test_a_drift_alarm_starts_a_release_whose_lineage_leads_back_to_it() -> None:
    Release("m", build=build).run()
    with LifecycleLog() as log:
        check = log.record("m", "drift_check", version=1, passed=True)  # not an alarm
        alarm = log.record(
            "m",
            "drift_alarm",
            version=1,
            passed=False,
            summary="x3 moved",
            evidence={"since": 10.0, "until": 20.0, "rows": 300},
        )
    (candidate,) = retrain_on_drift(Release("m", build=build), once=True, after=check.id)
    assert candidate.promoted and candidate.cause == alarm.id and candidate.window == (10.0, 20.0)
    assert cv.models.load("m@champion", trust_pickle=True) == {"made_for": alarm.id}
    with LifecycleLog() as log:
        chain = log.lineage(candidate.events[-1])
        assert [e.kind for e in chain] == ["drift_alarm", "build", "promote"]
        assert chain[1].evidence["replaces"] == 1 and chain[1].evidence["window"] == [10.0, 20.0]
        assert [e.kind for e in log.descendants(alarm.id)] == ["build", "promote"]


class StopAfterWaits(threading.Event):
    """A stop event that sets itself at its ``n``-th wait: the loop polls that often."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def wait(self, timeout: float | None = None) -> bool:
        self.n -= 1
        if self.n <= 0:
            self.set()
        return self.is_set()


def alarm(log: LifecycleLog, version: int) -> int:
    return log.record("m", "drift_alarm", version=version, passed=False, evidence={"since": 0.0}).id


def test_alarms_raised_while_a_release_runs_start_no_second_release() -> None:
    """A server raises an alarm at every window while the drifted version serves, and
    two replicas raise one each: one release answers them all."""
    Release("m", build=build).run()
    builds: list[int | None] = []

    def build_while_alarms_go_on(c: Candidate) -> cv.models.ModelVersion:
        builds.append(c.cause)
        with LifecycleLog() as log:
            alarm(log, 1), alarm(log, 1)  # the next windows, still on v1
        return build(c)

    with LifecycleLog() as log:
        first = alarm(log, 1)
        alarm(log, 1)  # another replica's alarm on the same drift
    stop = StopAfterWaits(3)  # polls three times after the release
    candidates = retrain_on_drift(
        Release("m", build=build_while_alarms_go_on), poll=0.0, stop=stop, after=first - 1
    )
    assert builds == [first] and len(candidates) == 1 and candidates[0].promoted
    assert stop.n == 0  # it did poll again and found nothing to do
    with LifecycleLog() as log:  # a new alarm on the version now served starts one
        later = alarm(log, 2)
    (again,) = retrain_on_drift(Release("m", build=build), once=True, after=later - 1)
    assert again.cause == later


def test_an_alarm_about_a_version_already_replaced_is_stale() -> None:
    Release("m", build=build).run()
    Release("m", build=build).run()  # v2 serves now
    with LifecycleLog() as log:
        stale = alarm(log, 1)
    stop = StopAfterWaits(2)
    assert retrain_on_drift(Release("m", build=build), poll=0.0, stop=stop, after=stale - 1) == []
    assert cv.models.get("m@champion").version == 2


def test_without_an_alarm_retraining_waits_until_told_to_stop() -> None:
    stop = threading.Event()
    stop.set()
    assert retrain_on_drift(Release("m", build=build), stop=stop) == []
    assert retrain_on_drift(Release("m", build=build), poll=0.01, timeout=0.05) == []
