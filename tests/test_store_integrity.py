"""The run store keeps what it said it kept: finished runs live in the database file,
not only in its -wal; readers open it read-only."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from conveyor.errors import StoreError
from conveyor.store import SCHEMA_VERSION, RunStore, StoreRecorder


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
        with pytest.raises(StoreError, match="is open read-only"):
            store.begin_run("new", "p", None)
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
