"""Several processes writing one run store at once: no "database is locked" reaches them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conveyor.store import RunStore, _db

WRITER = textwrap.dedent(
    """
    import glob, sys, time
    from conveyor.store import RunStore

    path, name, runs, rows, writers = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    store = RunStore(path)
    open(f"{path}.ready.{name}", "w").close()
    while len(glob.glob(f"{path}.ready.*")) < writers:  # every writer begins together
        time.sleep(0.001)
    began = time.time()
    for i in range(int(runs)):
        run_id = f"{name}-{i}"
        store.begin_run(run_id, "stress", None, {"writer": name})
        store.set_state(run_id, "running")
        store.record_item_outcomes(  # stored as ranges
            run_id, [("s", (k,), "done", None, None, None, time.time()) for k in range(int(rows))]
        )
        store.record_item_outcomes(  # stored row by row
            run_id,
            [("t", (k,), "failed", 1, "ValueError: x", "tb", time.time()) for k in range(int(rows))],
        )
        store.record_roots(run_id, [(k, "done") for k in range(int(rows))])
        store.finish_run(run_id, "succeeded", items_read=int(rows))
    store.close()
    print(began, time.time())
    """
)

PIPELINE = textwrap.dedent(
    """
    import sys, time
    import conveyor as cv
    from conveyor.store import RunStore, StoreRecorder

    def inc(x):
        return x + 1

    def odd(x):
        return [x] if x % 2 else []

    path, start = sys.argv[1], float(sys.argv[2])
    pipe = cv.Pipeline("pair", [cv.stage(inc), cv.Stage(odd, kind="flat_map")])
    recorder = StoreRecorder(RunStore(path), pipeline=pipe, flush_rows=50)
    while time.time() < start:
        time.sleep(0.001)
    run = pipe.run(range(3000), instruments=[recorder])
    assert recorder.error is None, recorder.error
    print(run.id)
    """
)


def _spawn(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-W", "error", "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=110)
        assert p.returncode == 0, err
        assert "locked" not in err and err == "", err
        outs.append(out)
    return outs


def test_three_processes_write_many_small_transactions(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    RunStore(path).close()
    runs, rows = 150, 25
    procs = [_spawn(WRITER, path, f"w{k}", runs, rows, 3) for k in range(3)]
    spans = [tuple(map(float, out.split())) for out in _finish(procs)]
    with RunStore(path) as store:
        all_runs = store.runs(limit=1000)
        assert len(all_runs) == 3 * runs
        assert {r.state for r in all_runs} == {"succeeded"}
        for name in ("w0", "w1", "w2"):
            for i in (0, runs // 2, runs - 1):
                assert len(store.item_outcomes(f"{name}-{i}")) == 2 * rows
                assert store.ledger(f"{name}-{i}").balanced
        count = store._read(lambda c: c.execute("SELECT count(*) FROM item_outcomes").fetchone())
        assert count[0] == 3 * runs * rows  # the failures; the done ones are ranges
    # A real race: every writer was writing while the others were (SQLite decides who
    # holds the write lock when; its order is not ours to assert).
    assert max(began for began, _ in spans) < min(ended for _, ended in spans)


def test_two_recorded_pipeline_runs_share_a_store(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    RunStore(path).close()
    start = time.time() + 1.0
    outs = _finish([_spawn(PIPELINE, path, start) for _ in range(2)])
    run_ids = [o.strip() for o in outs]
    with RunStore(path) as store:
        for run_id in run_ids:
            ledger = store.ledger(run_id)
            assert (ledger.done, ledger.filtered, ledger.items_read) == (1500, 1500, 3000)
            assert ledger.balanced
            assert store.outcome_counts(run_id) == {"inc": {"done": 3000}, "odd": {"done": 3000}}


def test_a_held_write_lock_is_waited_out_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SQLite's own busy wait off, the retry loop alone rides out a held lock."""
    monkeypatch.setattr(_db, "BUSY_TIMEOUT_MS", 0)
    backoffs = threading.Semaphore(0)

    class Clock:  # _db's time module, telling the test when the retry loop backs off
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            backoffs.release()
            time.sleep(seconds)

    monkeypatch.setattr(_db, "time", Clock)
    path = tmp_path / "runs.db"
    store = RunStore(path)
    store._connection().execute("PRAGMA busy_timeout = 0")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.begin_run("r1", "etl", None)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    # the writer found the lock held and backed off, twice: it is retrying, not failing
    assert backoffs.acquire(timeout=30) and backoffs.acquire(timeout=30)
    assert writer.is_alive() and not errors
    blocker.execute("COMMIT")
    blocker.close()
    writer.join(timeout=10)
    assert not errors
    assert store.get_run("r1").state == "pending"
    store.close()


def test_a_lock_held_too_long_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_db, "RETRY_SECONDS", 0.1)
    path = tmp_path / "runs.db"
    store = RunStore(path)
    store._connection().execute("PRAGMA busy_timeout = 0")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(_db.StoreError, match=r"stayed locked .* another process holds"):
            store.begin_run("r1", "etl", None)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        store.close()


def test_a_second_connection_here_keeps_this_process_known_to_others(tmp_path: Path) -> None:
    """Opening the registry beside an open run store must not drop this process's
    SQLite locks (reading the file's header outside SQLite would): else another
    process, closing its last connection, takes it for gone and deletes the WAL."""
    from conveyor.models import ModelRegistry
    from conveyor.store import _health

    path = tmp_path / "runs.db"
    store = RunStore(path)
    try:
        with ModelRegistry(path) as registry:  # a second connection, made after the first
            registry.register("m", {"a": 1}, format="pickle")
        before = _health.log_identity(path)
        other = "from conveyor.models import ModelRegistry; import sys\n"
        other += "with ModelRegistry(sys.argv[1]) as r: print(r.resolve('m').version)"
        done = subprocess.run(
            [sys.executable, "-c", other, str(path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert done.stdout.strip() == "1"
        assert _health.log_identity(path) == before  # the WAL is where this process left it
        store.begin_run("r1", "p", None, {})  # and writing goes on
    finally:
        store.close()
