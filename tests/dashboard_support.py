"""Shared by the dashboard's tests: a store filled by real runs, and a dashboard served
from it on a free port of 127.0.0.1 in a thread of the test process."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conveyor as cv
from conftest import wait_until
from conveyor.store import RunStore, SnapshotRecorder, StoreRecorder

XSS = "<script>alert(1)</script>"
XSS_VALUE = "<img src=x onerror=alert(2)>"


def slow_inc(x: int) -> int:
    return x + 1


def shout(x: str) -> str:
    return x.upper()


def picky(x: object) -> object:
    if x == XSS_VALUE:
        raise ValueError(f"refused <b>{x}</b>")
    return x


def record(store: RunStore, pipe: cv.Pipeline, source: object, *, every: float = 0.01) -> str:
    """Run ``pipe`` over ``source`` with the store's recorder and snapshots; its id."""
    snaps = SnapshotRecorder(store, every=every, recording_every=every)
    run = pipe.run(source, instruments=[snaps, StoreRecorder(store, pipeline=pipe)], record=False)
    run.results  # noqa: B018 - runs it to the end
    assert snaps.error is None
    return run.id


def fill(path: Path) -> dict[str, str]:
    """A store with three runs: a pipeline of three workers, one with a stage named like
    a script and a dead letter whose value is HTML, and a failed one."""
    with RunStore(path) as store:
        ids = {}
        pipe = cv.Pipeline("numbers", [cv.stage(slow_inc, workers=3)])
        ids["numbers"] = record(store, pipe, range(300))
        evil = cv.Pipeline(
            XSS, [cv.Stage(picky, name=XSS, on_error="skip"), cv.stage(shout, name="after")]
        )
        ids["evil"] = record(store, evil, [XSS_VALUE, "a", "b"])
        broken = cv.Pipeline("broken", [cv.stage(picky)])
        with contextlib.suppress(cv.StageError):
            record(store, broken, ["x", XSS_VALUE])
        ids["broken"] = store.runs(1)[0].id
    return ids


@contextlib.contextmanager
def serving(path: Path) -> Iterator[str]:
    """The dashboard over the store at ``path``; yields its base URL."""
    from conveyor.dashboard import server

    srv = server(path, port=0)
    thread = threading.Thread(target=srv.run, name="dashboard-test-server", daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: srv.started or not thread.is_alive(), timeout=10)
        port = srv.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    """Status, headers and text of ``url`` (errors too)."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read().decode()


def arm(requests: int, errors: int = 0) -> Any:
    """An arm's counts: ``requests`` of which ``errors`` failed, 20 ms each."""
    from conveyor.lifecycle import ArmStats

    stats = ArmStats()
    for i in range(requests):
        stats.observe(0.02, error=i < errors, label=str(i % 3))
    return stats


def fill_lifecycle(path: Path, name: str = "digits") -> dict[str, int]:
    """Three versions of ``name`` in the registry and a lifecycle of them in the store,
    by the lifecycle's own calls: 60 drift checks, then a drift alarm → a build → a gate →
    a canary of v2 (5%, then 25% of traffic, counted by two replicas) rolled back at its
    second step → the rollback; a shadow of v3 running now; an event of another model.
    What users write (a summary, a reason, evidence) carries a script. The events' ids."""
    from conveyor.lifecycle import LifecycleLog
    from conveyor.models import ModelRegistry

    RunStore(path).close()
    with ModelRegistry(path) as reg:
        for v in (1, 2, 3):
            reg.register(
                name, {"w": [float(v)]}, format="pickle", alias="champion" if v == 1 else None
            )
    now = time.time()
    with LifecycleLog(path) as log:
        for i in range(60):
            log.record(name, "drift_check", version=1, passed=True, summary=f"check {i}: no drift")
        alarm = log.record(
            name,
            "drift_alarm",
            version=1,
            passed=False,
            summary="drift in 1 of 64 features: x3\nthe second line",
            evidence={"features": ["x3"], "p": 1e-9, "note": XSS, "window": {"rows": 1000}},
        )
        build = log.record(
            name, "build", version=2, passed=True, parent=alarm.id, summary="built v2"
        )
        gate = log.record(
            name,
            "gate",
            version=2,
            passed=True,
            parent=build.id,
            summary="accuracy: v2 - v1 = +0.43",
            evidence={"difference": 0.43, "slices": [{"group": "0", "rows": 30}]},
        )
        r = log.start_rollout(
            name,
            "champion",
            mode="canary",
            champion=1,
            candidate=2,
            share=0.05,
            policy={"steps": [0.05, 0.25, 0.5]},
            parent=gate.id,
        )
        log.write_traffic(
            r.id, 0, "champion", version=1, share=0.95, stats=arm(95), first_at=now - 100
        )
        for replica, n in (("a", 3), ("b", 2)):  # two servers: the page shows their sum
            log.write_traffic(
                r.id,
                0,
                "candidate",
                version=2,
                share=0.05,
                stats=arm(n),
                first_at=now - 100,
                replica=replica,
            )
        step1 = log.record(
            name, "canary_step", version=2, passed=True, rollout=r.id, parent=gate.id,
            summary="step 1 of 3, 5% of traffic: every check passed",
        )  # fmt: skip
        log.set_share(r.id, 0.25, step=1)
        log.write_traffic(
            r.id, 1, "champion", version=1, share=0.75, stats=arm(75), first_at=now - 50
        )
        log.write_traffic(
            r.id, 1, "candidate", version=2, share=0.25, stats=arm(25, 3), first_at=now - 50
        )
        step2 = log.record(
            name, "canary_step", version=2, passed=False, rollout=r.id, parent=step1.id,
            summary=f"step 2 of 3, 25% of traffic: errors {XSS}",
            evidence={"breach": "errors", "candidate": arm(25, 3).to_dict(), "detail": XSS},
        )  # fmt: skip
        log.finish_rollout(r.id, "rolled_back", f"errors: 3 of 25 {XSS}")
        rollback = log.record(
            name, "rollback", version=1, passed=False, rollout=r.id, parent=step2.id,
            summary="canary of v2 rolled back at 25%; v1 serves all traffic",
            evidence={"from": 2, "to": 1, "step": 1},
        )  # fmt: skip
        shadow = log.start_rollout(
            name, "champion", mode="shadow", champion=1, candidate=3, share=0.1, parent=rollback.id
        )
        log.write_traffic(
            shadow.id, 0, "champion", version=1, share=0.9, stats=arm(40), first_at=now - 10
        )
        log.write_traffic(
            shadow.id, 0, "shadow", version=3, share=0.1, stats=arm(4), first_at=now - 10
        )
        other = log.record("other", "gate", version=7, passed=True, summary="another model's")
    return {
        "alarm": alarm.id, "build": build.id, "gate": gate.id, "step1": step1.id,
        "step2": step2.id, "rollback": rollback.id, "other": other.id,
        "canary": r.id, "shadow": shadow.id,
    }  # fmt: skip
