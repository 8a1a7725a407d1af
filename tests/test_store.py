"""The run store: lifecycle, lookups, the ledger, the recorder, damaged and old stores."""

from __future__ import annotations

import pickle
import sqlite3
import threading
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from conveyor.core.events import RunInfo
from conveyor.store import (
    SCHEMA_VERSION,
    PipelineChangedError,
    RunNotFoundError,
    RunStore,
    StoreError,
    StoreRecorder,
)
from conveyor.store._schema import MIGRATIONS


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    s = RunStore(tmp_path / "runs.db")
    yield s
    s.close()


# --- lifecycle and lookups ---------------------------------------------------------------


def test_default_path_is_under_dot_conveyor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVEYOR_STORE")  # the default, when the variable is not set
    monkeypatch.chdir(tmp_path)
    with RunStore() as s:
        assert s.path == tmp_path / ".conveyor" / "runs.db"
        assert s.schema_version == SCHEMA_VERSION
    assert (tmp_path / ".conveyor" / "runs.db").is_file()
    mode = sqlite3.connect(tmp_path / ".conveyor" / "runs.db").execute("PRAGMA journal_mode")
    assert mode.fetchone()[0] == "wal"


def test_run_lifecycle(store: RunStore) -> None:
    store.begin_run("r1", "etl", "fp1", {"n": 3, "mode": "fast"}, "etl.py:pipe")
    r = store.get_run("r1")
    assert (r.state, r.started_at, r.finished_at) == ("pending", None, None)
    assert r.params == {"mode": "fast", "n": 3} and r.target == "etl.py:pipe"
    store.set_state("r1", "running")
    store.finish_run("r1", "failed", "ValueError: boom", items_read=10, items_emitted=4)
    r = store.get_run("r1")
    assert r.state == "failed" and r.error == "ValueError: boom"
    assert (r.items_read, r.items_emitted) == (10, 4)
    assert r.started_at is not None and r.finished_at is not None
    assert r.finished_at >= r.started_at and r.elapsed_seconds is not None


def test_state_machine_refuses_other_moves(store: RunStore) -> None:
    store.begin_run("r1", "etl", None)
    with pytest.raises(StoreError, match="run r1 is pending; it cannot become succeeded"):
        store.set_state("r1", "succeeded")
    store.set_state("r1", "running")
    store.finish_run("r1", "succeeded")
    with pytest.raises(StoreError, match=r"it cannot become running .allowed: none: it has ended"):
        store.set_state("r1", "running")
    with pytest.raises(StoreError, match="already in the run store"):
        store.begin_run("r1", "etl", None)
    with pytest.raises(RunNotFoundError, match="no run nope"):
        store.set_state("nope", "running")
    with pytest.raises(StoreError, match="finishes as one of"):
        store.finish_run("r1", "running")


def test_get_run_by_unique_prefix(store: RunStore) -> None:
    for run_id in ("abc123", "abd456", "xyz_%9"):
        store.begin_run(run_id, "etl", None)
    assert store.get_run("abc").id == "abc123"
    assert store.get_run("xyz_%").id == "xyz_%9"  # LIKE wildcards are taken literally
    with pytest.raises(RunNotFoundError, match="ambiguous") as info:
        store.get_run("ab")
    assert set(info.value.candidates) == {"abc123", "abd456"}
    with pytest.raises(RunNotFoundError, match=r"no run 'x%'.*latest are"):
        store.get_run("x%")
    assert [r.id for r in store.runs(2)] == ["xyz_%9", "abd456"]


def test_check_fingerprint(store: RunStore) -> None:
    store.begin_run("r1", "etl", "a" * 64)
    store.check_fingerprint("r1", "a" * 64)
    with pytest.raises(PipelineChangedError, match="pipeline 'etl' changed since run r1"):
        store.check_fingerprint("r1", "b" * 64)


# --- recording real runs -----------------------------------------------------------------


def test_recorded_run_balances_and_counts_every_stage(store: RunStore) -> None:
    pipe = cv.Pipeline("evens", [cv.stage(f.inc), cv.Stage(f.evens_only, kind="flat_map")])
    recorder = StoreRecorder(store, pipeline=pipe, params={"n": 500}, flush_rows=64)
    run = pipe.run(range(500), instruments=[recorder])
    assert recorder.error is None
    r = store.get_run(run.id)
    assert (r.state, r.items_read, r.items_emitted) == ("succeeded", 500, 250)
    assert r.fingerprint == recorder.fingerprint and r.fingerprint is not None
    ledger = store.ledger(run.id)
    assert (ledger.done, ledger.filtered, ledger.dead_lettered, ledger.pending) == (250, 250, 0, 0)
    assert ledger.balanced
    assert store.outcome_counts(run.id) == {"inc": {"done": 500}, "evens_only": {"done": 500}}
    keys = [o.key for o in store.item_outcomes(run.id, stage="inc")]
    assert sorted(keys, key=int) == [str(i) for i in range(500)]
    stats = store.stage_statistics(run.id)
    assert [(s.stage, s.items_in, s.items_out) for s in stats] == [
        ("inc", 500, 500),
        ("evens_only", 500, 250),
    ]


def test_recorder_on_every_executor(store: RunStore, executor: str) -> None:
    pipe = cv.Pipeline(
        "three",
        [
            cv.stage(f.square, executor=executor, workers=2),
            cv.Stage(f.explode, kind="flat_map", executor=executor),
            cv.Stage(f.batch_len, kind="batch", size=4, executor=executor),
        ],
    )
    run = pipe.run(range(60), instruments=[StoreRecorder(store, pipeline=pipe)])
    ledger = store.ledger(run.id)
    assert ledger.balanced and ledger.items_read == 60 and ledger.pending == 0
    assert ledger.done + ledger.filtered == 60
    assert ledger.filtered == sum(1 for x in range(60) if (x * x) % 4 == 0)
    counts = store.outcome_counts(run.id)
    assert counts["square"] == {"done": 60}
    assert counts["explode"] == {"done": 60}
    assert counts["batch_len"]["done"] == len(run.results or [])


def test_failed_run_records_the_failure_and_pending_items(store: RunStore) -> None:
    pipe = cv.Pipeline("unlucky", [cv.stage(f.fail_on_13, executor="sync")])
    run = pipe.stream(range(40), instruments=[StoreRecorder(store)])
    with pytest.raises(cv.StageError):
        run.wait()
    r = store.get_run(run.id)
    assert r.state == "failed"
    assert r.error is not None and "thirteen is unlucky" in r.error
    failed = [o for o in store.item_outcomes(run.id) if o.outcome == "failed"]
    assert [(o.stage, o.key) for o in failed] == [("fail_on_13", "13")]
    assert failed[0].traceback is not None and "fail_on_13" in failed[0].traceback
    ledger = store.ledger(run.id)
    assert ledger.balanced and ledger.items_read == r.items_read
    # done means "through the sinks": items 0-12 were, though the failure came before the
    # consumer took them (items_emitted counts only what the consumer received)
    assert ledger.done == 13 and r.items_emitted is not None and r.items_emitted <= 13
    assert ledger.pending == ledger.items_read - ledger.done
    done = [o.key for o in store.item_outcomes(run.id) if o.outcome == "done"]
    assert sorted(done, key=int) == [str(i) for i in range(13)]  # they ran before 13 failed


def test_cancelled_run_leaves_unfinished_items_pending(store: RunStore) -> None:
    pipe = cv.Pipeline("cut", [cv.stage(f.inc, executor="sync")])
    with pipe.stream(range(1000), instruments=[StoreRecorder(store)]) as run:
        got = [next(run) for _ in range(5)]
    assert got == [1, 2, 3, 4, 5]
    r = store.get_run(run.id)
    assert r.state == "cancelled"
    ledger = store.ledger(run.id)
    assert ledger.balanced and ledger.pending > 0 and ledger.done >= 5
    pending = store.root_ranges(run.id, "pending")
    assert sum(last - first + 1 for first, last, _ in pending) == ledger.pending
    assert pending[-1][1] == ledger.items_read - 1  # the last item read never finished


class _Control:
    def __init__(self, run: cv.Run) -> None:
        self.run = run

    def statistics(self) -> cv.RunStatistics:
        return self.run.statistics()

    def resize(self, stage: str, workers: int) -> None:
        raise NotImplementedError


def test_recorder_records_reliability_events(store: RunStore) -> None:
    """unit_failed, dead_lettered and cache_hits, as the engine's reliability half sends them."""
    rec = StoreRecorder(store, flush_rows=2)
    rec.run_started(RunInfo("rel1", "etl", (), False, 0))
    rec.items_read([(0,), (1,), (2,), (3,)], 10)
    rec.task_finished("parse", 1, 0, [(0,), (1,)], [1, 2], [2, 3], None)
    rec.cache_hits("parse", [(2,)], 4)
    err = ValueError("bad row")
    rec.unit_failed("parse", (3,), err, "Traceback: bad row", 1, True, 5)
    rec.unit_failed("parse", (3,), err, "Traceback: bad row", 2, False, 6)
    rec.dead_lettered("parse", (3,), {"row": 3}, err, "Traceback: bad row", 7)
    rec.roots_finished([0, 2], "done", 8)
    rec.roots_finished([3], "dead_lettered", 9)
    rec.run_finished("cancelled", None, 10)
    outcomes = [(o.key, o.outcome, o.attempt) for o in store.item_outcomes("rel1", "parse")]
    assert sorted(outcomes, key=str) == sorted(
        [
            ("0", "done", None),
            ("1", "done", None),
            ("2", "cached", None),
            ("3", "failed", 1),
            ("3", "failed", 2),
            ("3", "skipped", None),
        ],
        key=str,
    )
    (letter,) = store.dead_letters("rel1")
    assert (letter.stage, letter.key, letter.error_type, letter.error) == (
        "parse",
        "3",
        "ValueError",
        "bad row",
    )
    assert letter.load_value() == {"row": 3}
    ledger = store.ledger("rel1")
    assert (ledger.done, ledger.dead_lettered, ledger.pending) == (2, 1, 1)
    assert store.get_run("rel1").state == "cancelled"


def test_unpicklable_dead_letter_keeps_its_repr(store: RunStore) -> None:
    store.begin_run("r1", "etl", None)
    lock = threading.Lock()
    store.record_dead_letters("r1", [("s", (0,), lock, ValueError("x"), None, 1.0)])
    (letter,) = store.dead_letters("r1")
    assert letter.value_pickle is None and "lock" in letter.value_repr
    with pytest.raises(StoreError, match="could not be pickled"):
        letter.load_value()
    store.record_dead_letters("r1", [("s", ("user-key", 2), [1, 2], ValueError("y"), None, 2.0)])
    assert store.dead_letters("r1")[1].key == '["user-key", 2]'
    assert pickle.loads(store.dead_letters("r1")[1].value_pickle or b"") == [1, 2]


def test_ranges_store_many_items_in_few_rows_and_count_duplicates(store: RunStore) -> None:
    store.begin_run("r1", "etl", None)
    store.set_state("r1", "running")
    roots = [(i, "done") for i in range(1000) if i != 500] + [(500, "filtered")]
    store.record_roots("r1", reversed(roots))  # any order
    store.record_batch("r1", done=[("s", [(i,) for i in range(999, -1, -1)], 2.0)])
    store.record_item_outcomes("r1", [("s", (7, 0), "done", None, None, None, 3.0)])
    count = store._read(lambda c: c.execute("SELECT count(*) FROM roots").fetchone()[0])
    assert count == 3  # 0-499 done, 500 filtered, 501-999 done
    assert store.outcome_counts("r1") == {"s": {"done": 1001}}
    keys = [o.key for o in store.item_outcomes("r1", "s")]
    assert keys[-1] == "7.0" and sorted(keys[:-1], key=int) == [str(i) for i in range(1000)]
    store.finish_run("r1", "succeeded", items_read=1000)
    ledger = store.ledger("r1")
    assert (ledger.done, ledger.filtered, ledger.balanced) == (999, 1, True)
    assert store.root_ranges("r1") == [(0, 499, "done"), (500, 500, "filtered"), (501, 999, "done")]
    assert store.root_ranges("r1", "filtered") == [(500, 500, "filtered")]
    store.record_roots("r1", [(3, "dead_lettered")])  # an item accounted twice...
    assert not store.ledger("r1").balanced  # ...is caught by the ledger's check


def test_ledger_of_an_unfinished_run_is_not_balanced(store: RunStore) -> None:
    store.begin_run("r1", "etl", None)
    store.record_roots("r1", [(0, "done"), (1, "filtered")])
    ledger = store.ledger("r1")
    assert (ledger.done, ledger.filtered, ledger.pending, ledger.items_read) == (1, 1, 0, None)
    assert not ledger.balanced  # the run has not finished: no count of items read


# --- damaged, foreign, old and newer stores ----------------------------------------------


def test_garbage_file_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is a text file, not a database\n" * 10)
    with pytest.raises(StoreError, match=r"is not a conveyor run store \(file is not a database\)"):
        RunStore(path)
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 20)  # a header cut short
    with pytest.raises(StoreError, match="move it aside or pass another --store path"):
        RunStore(path)


def test_truncated_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with RunStore(path) as s:
        for i in range(200):
            s.begin_run(f"run{i:04d}", "etl", "x" * 64, {"i": i, "pad": "y" * 200})
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = path.read_bytes()
    assert len(data) > 8192
    path.write_bytes(data[: len(data) // 3])
    damaged = r"runs\.db (is corrupt|is not a conveyor run store)"
    with pytest.raises(StoreError, match=damaged), RunStore(path) as s:
        s.runs(1000)
        s.get_run("run0199")


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (t TEXT)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="an SQLite database but not a conveyor run store"):
        RunStore(path)


def test_newer_schema_names_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    RunStore(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    con.commit()
    con.close()
    with pytest.raises(StoreError) as info:
        RunStore(path)
    text = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 5}" in text
    assert f"(schema version {SCHEMA_VERSION})" in text and "upgrade conveyor" in text


def test_missing_store_is_not_created_for_readers(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no run store at"):
        RunStore(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_v1_store_is_migrated_to_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    con = sqlite3.connect(path)
    for sql in MIGRATIONS[0]:
        con.execute(sql)
    con.execute("PRAGMA user_version = 1")
    con.execute(
        "INSERT INTO runs (id, pipeline, fingerprint, params, state, created_at, started_at, "
        "finished_at, host, pid, conveyor_version) "
        "VALUES ('old1', 'etl', 'fp', '{\"n\": 1}', 'succeeded', 1.0, 2.0, 5.0, 'h', 7, '0.0.9')"
    )
    con.execute(
        "INSERT INTO item_outcomes VALUES ('old1', 'parse', '0', 'done', NULL, NULL, NULL, 3.0)"
    )
    con.commit()
    con.close()

    with RunStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 3
        old = s.get_run("old1")
        assert (old.pipeline, old.params, old.target, old.items_read) == (
            "etl",
            {"n": 1},
            None,
            None,
        )
        assert old.elapsed_seconds == 3.0
        assert [o.key for o in s.item_outcomes("old1")] == ["0"]
        s.record_roots("old1", [(0, "done")])  # tables v2 added
        s.record_batch("old1", done=[("parse", [(1,)], 4.0)])
        assert s.outcome_counts("old1") == {"parse": {"done": 2}}
        assert s.ledger("old1").done == 1
        s.begin_run("new1", "etl", None, target="etl.py:pipe")
        assert s.get_run("new1").target == "etl.py:pipe"
    indexes = {
        row[0]
        for row in sqlite3.connect(path).execute(
            "SELECT name FROM sqlite_master WHERE type='index'"
        )
    }
    assert {"item_outcomes_run_stage", "item_ranges_run_stage", "roots_run"} <= indexes
