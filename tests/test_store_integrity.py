"""The run store keeps what it said it kept: finished runs live in the database file,
not only in its -wal."""

from __future__ import annotations

import shutil
from pathlib import Path

import conveyor as cv
import stagefns as f
from conveyor.store import RunStore, StoreRecorder

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
