"""Shared by the dashboard's tests: a store filled by real runs, and a dashboard served
from it on a free port of 127.0.0.1 in a thread of the test process."""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
