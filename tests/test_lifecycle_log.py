"""The lifecycle's records in the run store: events with evidence and cause, lineage
both ways, one rollout per alias at a time, traffic per arm, labels joined later,
drift references; rollback by hand; the CLI's history."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import conveyor as cv
from conveyor.cli import cli
from conveyor.lifecycle import ArmStats, LifecycleError, LifecycleLog, label_of, rollback


def test_events_carry_evidence_and_lineage_runs_both_ways() -> None:
    with LifecycleLog() as log:
        alarm = log.record(
            "m",
            "drift_alarm",
            version=1,
            passed=False,
            summary="x3 moved",
            evidence={"features": ["x3"], "p": 1e-9},
        )
        build = log.record("m", "build", version=2, passed=True, parent=alarm.id)
        gate = log.record("m", "gate", version=2, passed=True, parent=build.id)
        log.record("other", "gate", version=7, passed=False)
        assert [e.kind for e in log.lineage(gate.id)] == ["drift_alarm", "build", "gate"]
        assert [e.kind for e in log.descendants(alarm.id)] == ["build", "gate"]
        assert log.event(alarm.id).evidence == {"features": ["x3"], "p": 1e-9}
        assert [e.kind for e in log.events("m")] == ["drift_alarm", "build", "gate"]
        assert [e.kind for e in log.events(kinds=["gate"])] == ["gate", "gate"]
        assert [e.id for e in log.events("m", limit=1)] == [gate.id]
        with pytest.raises(LifecycleError, match="no lifecycle event 999"):
            log.event(999)
        with pytest.raises(LifecycleError, match="not JSON"):
            log.record("m", "gate", evidence={"model": object()})


def test_a_name_the_registry_would_refuse_is_refused() -> None:
    with LifecycleLog() as log:
        for bad in ("../etc", "a/b", "", "<b>x</b>"):
            with pytest.raises(LifecycleError, match=r"model name .* is not valid: use letters"):
                log.record(bad, "gate")
            with pytest.raises(LifecycleError, match="model name"):
                log.start_rollout(
                    bad, "champion", mode="canary", champion=1, candidate=2, share=0.1
                )
        assert log.events() == []


def test_one_rollout_per_alias_and_its_traffic_per_arm() -> None:
    with LifecycleLog() as log:
        r = log.start_rollout("m", "champion", mode="canary", champion=1, candidate=2, share=0.05)
        with pytest.raises(LifecycleError, match="already has a canary of version 2"):
            log.start_rollout("m", "champion", mode="shadow", champion=1, candidate=3, share=0.1)
        log.start_rollout("m", "staging", mode="shadow", champion=1, candidate=3, share=0.1)
        with pytest.raises(LifecycleError, match="mode 'blue'"):
            log.start_rollout("m", "x", mode="blue", champion=1, candidate=3, share=0.1)
        with pytest.raises(LifecycleError, match=r"share=1\.5"):
            log.set_share(r.id, 1.5, step=1)
        stats = ArmStats()
        for i in range(40):
            stats.observe(0.002 * (i + 1), error=i == 0, label=label_of({"outputs": i % 3}))
        log.write_traffic(r.id, 0, "candidate", version=2, share=0.05, stats=stats, first_at=1.0)
        stats.observe(0.5, label="2")
        log.write_traffic(r.id, 0, "candidate", version=2, share=0.05, stats=stats, first_at=1.0)
        assert log.window(r.id, 0, "candidate").requests == 41  # rewritten, not added
        assert log.window(r.id, 0, "champion").requests == 0
        assert log.set_share(r.id, 0.25, step=1).share == 0.25
        ended = log.finish_rollout(r.id, "rolled_back", "errors")
        assert (ended.state, ended.share, ended.reason) == ("rolled_back", 0.0, "errors")
        assert log.active_rollout("m", "champion") is None
        assert log.set_share(r.id, 0.5, step=2).share == 0.0  # an ended rollout stays ended
        with pytest.raises(LifecycleError, match="state 'done'"):
            log.finish_rollout(r.id, "done", "")


def test_arm_stats_are_fixed_in_size_and_round_trip() -> None:
    stats = ArmStats()
    for i in range(10_000):
        stats.observe(1e-5 * (i % 500 + 1), label=str(i))  # 10,000 distinct labels
    assert len(stats.predictions) == 101 and stats.predictions["other"] == 10_000 - 100
    assert ArmStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    assert stats.quantile(0.5) <= stats.quantile(0.95) <= 0.01
    both = stats.merge(stats)
    assert both.requests == 20_000 and both.predictions["0"] == 2
    assert ArmStats().quantile(0.95) == 0.0


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ({"outputs": 3}, "3"),
        ({"outputs": [0.1, 0.7, 0.2]}, "1"),
        ({"label": "cat"}, "cat"),
        (True, "True"),
        ([5], "5"),
        ({"y": 1}, None),
        (float("nan"), None),
        (b"bytes", None),
    ],
)
def test_labels_of_answers(answer: object, label: str | None) -> None:
    assert label_of(answer) == label


def test_labels_joined_later_give_live_performance_and_a_data_window() -> None:
    with LifecycleLog() as log:
        rows = [
            (
                "m",
                1,
                f"r{i}",
                100.0 + i,
                200.0,
                json.dumps({"inputs": [i]}),
                json.dumps({"outputs": i % 2}),
                json.dumps(i % 2 if i < 8 else 1 - i % 2),
                int(i < 8),
            )
            for i in range(10)
        ]
        log.add_labeled(rows)
        assert log.live_performance("m") == {1: (10, 8)}
        window = log.labeled("m", since=103.0, until=106.0)
        assert [r for r, _, _ in window] == [{"inputs": [3]}, {"inputs": [4]}, {"inputs": [5]}]
        log.save_reference("m", 1, b"ref")
        assert log.reference("m", 1) == b"ref" and log.reference("m", 2) is None


def _register(n: int) -> None:
    for v in range(1, n + 1):
        cv.models.register("m", {"w": [float(v)]}, format="pickle")


def test_rollback_moves_the_alias_back_and_stops_a_running_rollout() -> None:
    _register(3)
    cv.models.alias("m", "champion", 1)
    with pytest.raises(LifecycleError, match="never moved"):
        rollback("m")
    cv.models.alias("m", "champion", 3, reason="release")
    with LifecycleLog() as log:
        running = log.start_rollout(
            "m", "champion", mode="canary", champion=3, candidate=2, share=0.1
        )
    event = rollback("m", reason="users complain")
    assert cv.models.get("m@champion").version == 1
    assert event.kind == "rollback" and event.evidence == {"from": 3, "to": 1}
    assert "users complain" in cv.models.history("m", "champion")[-1].reason
    with LifecycleLog() as log:
        assert log.rollout(running.id).state == "rolled_back"
    assert rollback("m", to=3).summary.startswith("m@champion: v1 → v3")


def test_the_cli_shows_the_history_rolls_back_and_refuses_what_is_not_a_release(
    tmp_path: object,
) -> None:
    _register(2)
    cv.models.alias("m", "champion", 1)
    cv.models.alias("m", "champion", 2)
    runner = CliRunner()
    assert "no lifecycle event" in runner.invoke(cli, ["deployments", "m"]).output
    done = runner.invoke(cli, ["rollback", "m", "--reason", "bad"])
    assert done.exit_code == 0, done.output
    assert "v2 → v1" in done.output
    shown = runner.invoke(cli, ["deployments", "m"])
    assert "rollback" in shown.output and "v2 → v1 (bad)" in shown.output
    lines = runner.invoke(cli, ["deployments", "m", "--json"]).output.splitlines()
    assert json.loads(lines[0])["kind"] == "rollback"
    missing = runner.invoke(cli, ["rollback", "nope"])
    assert missing.exit_code == 1 and "nope" in missing.output
    bad = runner.invoke(cli, ["deploy", "conveyor.lifecycle:LifecycleLog"])
    assert bad.exit_code != 0


def test_replicas_of_a_server_each_write_their_counts_and_readers_sum_them() -> None:
    with LifecycleLog() as log:
        r = log.start_rollout("m", "champion", mode="canary", champion=1, candidate=2, share=0.5)
        for replica, n in (("a", 30), ("b", 12), ("a", 40)):  # a's second write replaces its first
            stats = ArmStats()
            for _ in range(n):
                stats.observe(0.01, label="1")
            log.write_traffic(
                r.id,
                0,
                "candidate",
                version=2,
                share=0.5,
                stats=stats,
                first_at=float(n),
                replica=replica,
            )
        (window,) = log.traffic(r.id)
        assert window.stats.requests == 52 and window.stats.predictions == {"1": 52}
        assert window.first_at == 12.0 and log.window(r.id, 0, "candidate").requests == 52
