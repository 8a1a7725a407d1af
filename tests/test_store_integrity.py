"""The run store keeps what it said it kept: finished runs live in the database file,
not only in its -wal; damage is found (on open after an unclean end, by
``conveyor store check``) and indexes are rebuilt; readers open it read-only."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import conveyor as cv
import stagefns as f
from conveyor.cli import cli
from conveyor.errors import StoreError
from conveyor.store import SCHEMA_VERSION, RunStore, StoreRecorder

PAGE = 4096


def check(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["store", "check", "--store", str(store), *args])


def record_history(path: Path, runs: int, items: int = 200) -> list[str]:
    """``runs`` finished runs written through the API, each with ``items`` source items
    (done ranges and a failed attempt on every third), as a recorded run leaves them."""
    ids = []
    with RunStore(path) as store:
        for i in range(runs):
            run_id = f"h{i:03d}"
            store.begin_run(run_id, "history", None)
            store.set_state(run_id, "running")
            store.record_batch(
                run_id,
                done=[("s", [(k,) for k in range(items)], 1.0)],
                outcomes=[
                    ("t", (k,), "failed", 1, "ValueError: x", "tb " * 100, 1.0)
                    for k in range(0, items, 3)
                ],
                roots=[(k, "done") for k in range(items)],
            )
            store.finish_run(run_id, "succeeded", items_read=items, items_emitted=items)
            ids.append(run_id)
    return ids


# --- finished runs are in the database file ----------------------------------------


def test_six_recorded_runs_survive_a_lost_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = RunStore(path)  # a long-lived process: the store stays open, its WAL with it
    pipe = cv.Pipeline("six", [cv.stage(f.inc), cv.Stage(f.evens_only, kind="flat_map")])
    ids = []
    for _ in range(6):
        run = pipe.run(range(50), instruments=[StoreRecorder(store, pipeline=pipe)], record=False)
        ids.append(run.id)
    assert (tmp_path / "runs.db-wal").exists()
    # a copy without its -wal: a backup tool, a copy by hand, a lost or damaged -wal
    copy = tmp_path / "copy" / "runs.db"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    store.close()
    with RunStore(copy, create=False) as copied:
        assert sorted(r.id for r in copied.runs()) == sorted(ids)
        for run_id in ids:
            assert copied.get_run(run_id).state == "succeeded"
            ledger = copied.ledger(run_id)
            assert ledger.balanced and ledger.done + ledger.filtered == 50, ledger


# --- reading a store read-only ------------------------------------------------------


def test_a_reader_opens_the_store_read_only(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    record_history(path, 2)
    with RunStore(path, create=False, readonly=True) as store:
        assert [r.id for r in store.runs()] == ["h001", "h000"]
        assert os.listdir(tmp_path / "runs.db-writers") == []  # a reader leaves no mark
        with pytest.raises(StoreError, match="is open read-only"):
            store.begin_run("new", "p", None)
        with pytest.raises(StoreError, match="read-only"):
            store.check(repair=True)
        # past the store's own refusal, SQLite refuses too: the connection is mode=ro
        with pytest.raises(sqlite3.OperationalError, match="readonly database"):
            store._connection().execute("DELETE FROM runs")
    with RunStore(path, create=False, readonly=True) as store:
        assert len(store.runs()) == 2


def test_a_read_only_open_of_an_older_store_migrates_it_first(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.touch()  # an empty file: SQLite makes a store in it (schema version 0 to 2)
    with RunStore(path, create=False, readonly=True) as store:
        assert store.runs() == [] and store.schema_version == SCHEMA_VERSION


# --- a check on open, after an unclean end ------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from conveyor.store import RunStore
    store = RunStore(sys.argv[1])
    store.begin_run("held", "p", None)
    print("open", flush=True)
    time.sleep(600)
    """
)


def damage_page(path: Path, page: int) -> None:
    with path.open("r+b") as fh:
        fh.seek((page - 1) * PAGE)
        fh.write(b"\xff" * 64)  # a b-tree page header no SQLite accepts


def table_page(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(
            conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[
                0
            ]
        )
    finally:
        conn.close()


def test_a_store_left_by_a_killed_writer_is_checked_on_open(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    record_history(path, 3)
    root = table_page(path, "item_outcomes")
    # a clean history: a damaged page is not looked for on open (that would read the
    # whole store every time) ...
    damage_page(path, root)
    with RunStore(path, create=False) as store:
        assert store.get_run("h000").state == "succeeded"
    # ... but once a writer ended without closing the store, the next one checks it
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    marks = os.listdir(tmp_path / "runs.db-writers")
    assert len(marks) == 1 and f"~{proc.pid}~" in marks[0]
    with pytest.raises(StoreError) as refused:
        RunStore(path, create=False)
    message = str(refused.value)
    assert "ended without closing it" in message and "quick check finds it damaged" in message
    assert f"conveyor store check --store {path}" in message
    assert len(os.listdir(tmp_path / "runs.db-writers")) == 1  # checked again next time
    # readers still read it, and the check says what cannot be repaired
    with RunStore(path, create=False, readonly=True) as store:
        assert store.get_run("h001").state == "succeeded"
    result = check(path)
    assert result.exit_code == 1, result.output
    assert "damaged:" in result.output and "cannot be repaired" in result.output


def test_a_sound_store_left_by_a_killed_writer_is_checked_once(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    record_history(path, 2)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert len(os.listdir(tmp_path / "runs.db-writers")) == 1
    with RunStore(path, create=False) as store:  # checked: sound, so the mark goes
        assert store.get_run("held").state == "pending"
        assert len(os.listdir(tmp_path / "runs.db-writers")) == 1  # this writer's own
    assert os.listdir(tmp_path / "runs.db-writers") == []


# --- conveyor store check -----------------------------------------------------------


def test_store_check_of_a_sound_store(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    record_history(path, 3)
    result = check(path)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{path}: 3 runs", "ok: the store is sound"]
    missing = check(tmp_path / "none.db")
    assert missing.exit_code == 2 and "no run store at" in missing.output


def drop_index_rows(path: Path, index: str, table_rows: str) -> None:
    """Damage ``index`` as a lost page does: rows inserted by ``table_rows`` while the
    index is hidden from SQLite are in the table but not in the index."""
    conn = sqlite3.connect(path, isolation_level=None)
    row = conn.execute("SELECT * FROM sqlite_master WHERE name = ?", (index,)).fetchone()
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("DELETE FROM sqlite_master WHERE name = ?", (index,))
    conn.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(table_rows)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("INSERT INTO sqlite_master VALUES (?, ?, ?, ?, ?)", row)
    conn.close()


def test_store_check_rebuilds_a_damaged_index(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    record_history(path, 3)
    drop_index_rows(
        path,
        "item_ranges_run_stage",
        "INSERT INTO item_ranges SELECT run_id, 'u', first, last, outcome, at FROM item_ranges",
    )
    looked = check(path, "--no-repair")
    assert looked.exit_code == 3, looked.output
    assert "missing from index item_ranges_run_stage" in looked.output
    assert "repairable: run conveyor store check without --no-repair" in looked.output
    with RunStore(path, create=False, readonly=True) as store:
        assert store.outcome_counts("h000")["s"]["done"] == 200  # the index hides "u"

    repaired = check(path)
    assert repaired.exit_code == 0, repaired.output
    assert "repaired: index item_ranges_run_stage rebuilt from its table" in repaired.output
    assert repaired.output.strip().endswith("ok: the store is sound after the repairs")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with RunStore(path, create=False, readonly=True) as store:
        assert store.outcome_counts("h000")["u"]["done"] == 200  # found through the index
    assert check(path).exit_code == 0


def test_store_check_reports_lost_rows_and_unbalanced_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    record_history(path, 3)
    conn = sqlite3.connect(path, isolation_level=None)  # foreign keys off: nothing cascades
    conn.execute("DELETE FROM runs WHERE id = 'h001'")  # a lost row of the runs table
    conn.execute("UPDATE roots SET last = 100 WHERE run_id = 'h002'")  # roots 101 to 199 lost
    conn.close()
    result = check(path)
    assert result.exit_code == 1, result.output
    out = result.output.splitlines()
    lost = "belong to no run in the store (the run's row was lost)"
    assert f"lost: 67 rows of item_outcomes {lost}" in out
    assert f"lost: 1 row of item_ranges {lost}" in out
    assert f"lost: 1 row of roots {lost}" in out
    ledger = "done 101 + filtered 0 + dead-lettered 0 + pending 0 != read 200"
    assert f"unbalanced: run h002: {ledger}" in out
    assert "h000" not in result.output and "cannot be repaired" in result.output


def test_a_store_with_damaged_table_pages_is_reported_not_repaired(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    record_history(path, 3)
    damage_page(path, table_page(path, "item_outcomes"))
    result = check(path)
    assert result.exit_code == 1, result.output
    assert "damaged:" in result.output and "cannot be repaired" in result.output
    assert "Traceback" not in result.output


# --- deleting the -wal and -shm files while runs record -----------------------------

STEPPER = textwrap.dedent(
    """
    import sys
    from conveyor.store import RunStore
    store = None
    for line in sys.stdin:
        cmd, *args = line.split()
        try:
            if cmd == "open":
                store = RunStore(sys.argv[1])
            elif cmd == "begin":
                store.begin_run(args[0], "p", None)
                store.set_state(args[0], "running")
            elif cmd == "batch":
                first = int(args[1])
                store.record_batch(
                    args[0],
                    done=[("s", [(k,) for k in range(first, first + 100)], 1.0)],
                    outcomes=[("t", (first + k, 1), "failed", 1, "ValueError: x", "tb " * 100,
                               1.0) for k in range(0, 100, 3)],
                    roots=[(k, "done") for k in range(first, first + 100)],
                )
            elif cmd == "finish":
                store.finish_run(args[0], "succeeded", items_read=int(args[1]))
            elif cmd == "close":
                store.close()
            print("ok", flush=True)
        except Exception as exc:
            print(f"error {exc}", flush=True)
    """
)


class Writer:
    """A process that records runs through the RunStore API, one step per command."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", STEPPER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __call__(self, *commands: str) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        answers = []
        for command in commands:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            answers.append(self.proc.stdout.readline().strip())
        return answers

    def end(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()


def test_wal_and_shm_deleted_while_two_runs_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    record_history(path, 30, items=200)
    a, b = Writer(path), Writer(path)
    try:
        assert a("open", "begin a1", "batch a1 0", "batch a1 100") == ["ok"] * 4
        (tmp_path / "runs.db-wal").unlink()  # a cleanup script, while run a1 records
        (tmp_path / "runs.db-shm").unlink()
        assert b("open", "begin z1", "batch z1 0") == ["ok"] * 3  # makes new ones
        # the writer whose log was deleted under it says so, and writes nothing more
        refused = a("batch a1 200", "finish a1 300")
        assert all(r.startswith("error ") for r in refused), refused
        assert "runs.db-wal and runs.db-shm were deleted or replaced" in refused[0]
        assert f"run conveyor store check --store {path}" in refused[0]
        assert b("batch z1 100", "finish z1 200", "close") == ["ok"] * 3
        assert a("close") == ["ok"]  # closing, it checkpoints its orphaned log
    finally:
        a.end()
        b.end()

    looked = check(path, "--no-repair")
    assert looked.exit_code in (1, 3), looked.output  # found, whatever SQLite finds
    assert "damaged:" in looked.output or "unbalanced:" in looked.output
    if looked.exit_code == 3:  # the damage is to indexes only: rebuilt from the tables
        repaired = check(path)
        assert repaired.exit_code == 0, repaired.output
        assert "repaired: index" in repaired.output
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
