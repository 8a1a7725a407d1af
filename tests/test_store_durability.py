"""The run store survives writers killed at random moments: SIGKILL, mid-transaction,
mid-checkpoint, mid-creation. Afterwards SQLite finds nothing wrong, the store opens,
lists its runs, and every run that finished still balances."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import wait_until
from conveyor.store import RunStore, _db
from conveyor.store._schema import SCHEMA_VERSION

# A writer of many small runs through the RunStore API. It logs a line to its progress
# file after each step, so the test can kill it after a chosen number of steps while
# it keeps writing (the kill then lands anywhere in the steps that follow).
WRITER = textwrap.dedent(
    """
    import sys, time
    from conveyor.store import RunStore

    path, name, progress, checkpoint = sys.argv[1:5]
    log = open(progress, "a", buffering=1)
    log.write("start\\n")
    store = RunStore(path)
    if checkpoint != "default":  # checkpoint often: kills land inside checkpoints too
        store._connection().execute(f"PRAGMA wal_autocheckpoint = {checkpoint}")
    log.write("opened\\n")
    for i in range(100_000):
        run_id = f"{name}-{i}"
        store.begin_run(run_id, "durable", "f" * 64, {"writer": name, "i": i})
        store.set_state(run_id, "running")
        log.write("begun\\n")
        for part in range(3):
            first = part * 200
            store.record_batch(
                run_id,
                done=[("s", [(k,) for k in range(first, first + 200)], time.time())],
                outcomes=[("t", (first + k, 1), "failed", 1, "ValueError: x", "tb " * 50,
                           time.time()) for k in range(20)],
                roots=[(k, "done") for k in range(first, first + 200)],
                dead_letters=[("t", (first,), {"payload": "x" * 500}, ValueError("x"), "tb",
                               time.time())],
            )
            log.write("batch\\n")
        store.finish_run(run_id, "succeeded", items_read=600, items_emitted=600)
        log.write("finished\\n")
    """
)

# A real recorded run: the StoreRecorder's writer thread and the run's own writes.
RECORDED = textwrap.dedent(
    """
    import sys
    import conveyor as cv
    from conveyor.store import RunStore, StoreRecorder

    path, name, progress = sys.argv[1:4]
    log = open(progress, "a", buffering=1)
    log.write("start\\n")

    def inc(x):
        return x + 1

    class Progress(cv.Instrument):
        def roots_finished(self, roots, state, t_ns):
            log.write("roots\\n")

    pipe = cv.Pipeline("recorded", [cv.Stage(inc, executor="threads", workers=2)])
    recorder = StoreRecorder(RunStore(path), pipeline=pipe, flush_rows=50, flush_seconds=0.01)
    for _ in range(100_000):
        pipe.run(range(5000), instruments=[recorder, Progress()], record=False)
        log.write("finished\\n")
    """
)


def spawn(script: str, *args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def steps(progress: Path) -> int:
    try:
        return len(progress.read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_writers_killed_at_random_moments_leave_a_sound_store(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "runs.db"  # not there yet: the first writers race to create it
    killed = 0
    for rnd in range(3):
        procs: list[tuple[subprocess.Popen[bytes], Path, int]] = []
        try:
            for k in range(4):
                progress = tmp_path / f"progress-{rnd}-{k}"
                if k == 3:
                    proc = spawn(RECORDED, path, f"rec{rnd}", progress)
                else:
                    checkpoint = rng.choice(["default", "4"])
                    proc = spawn(WRITER, path, f"w{rnd}{k}", progress, checkpoint)
                # kill it after this many steps (1: as it starts, maybe creating the store)
                procs.append((proc, progress, rng.randint(1, 60)))
            for proc, progress, after in procs:
                reached = lambda p=proc, f=progress, n=after: steps(f) >= n or p.poll() is not None  # noqa: E731
                assert wait_until(reached, 60)
                if proc.poll() is not None:
                    pytest.fail(f"a writer died on its own: {proc.communicate()[1].decode()}")
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
        finally:  # a failed assertion above must not leave writers running
            for proc, _, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=30)
        assert all(proc.returncode == -signal.SIGKILL for proc, _, _ in procs)
    assert killed == 12

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
    with RunStore(path, create=False) as store:
        runs = store.runs(limit=100_000)
        assert runs
        for run in runs:
            assert run.state in ("pending", "running", "succeeded"), run
            if run.state == "succeeded":
                ledger = store.ledger(run.id)
                assert ledger.balanced, (run, ledger)
        # a new run can still be written and read back
        store.begin_run("after", "durable", None)
        store.set_state("after", "running")
        store.finish_run("after", "succeeded", items_read=0)
        assert store.get_run("after").state == "succeeded"


def test_a_migration_committed_between_two_reads_is_not_taken_for_a_foreign_database(
    tmp_path: Path,
) -> None:
    # Another process creates the store just after this one read its schema version.
    # Read as two statements, the version came from before that commit and the table
    # count from after it, and a fresh store was called "not a conveyor run store".
    path = tmp_path / "runs.db"
    migrated = sqlite3.connect(path, isolation_level=None)
    migrated.execute("PRAGMA journal_mode = WAL")
    checked = sqlite3.connect(path, isolation_level=None)

    class Racing:
        """A connection on which another process's migration commits after each statement."""

        def execute(self, sql: str) -> sqlite3.Cursor:
            cursor = checked.execute(sql)
            rows = cursor.fetchall()
            if not migrated.execute("PRAGMA user_version").fetchone()[0]:
                _db.migrate(migrated, path)
            return _Rows(rows)

    try:
        assert _db._user_version(Racing(), path) in (0, SCHEMA_VERSION)  # type: ignore[arg-type]
        assert _db._user_version(checked, path) == SCHEMA_VERSION
    finally:
        migrated.close()
        checked.close()


class _Rows:
    def __init__(self, rows: list[tuple[object, ...]]) -> None:
        self.rows = rows

    def fetchone(self) -> tuple[object, ...]:
        return self.rows[0]
