"""RunStore: the run history in one SQLite file, safe to share between processes.

One file (``./.conveyor/runs.db`` unless told otherwise) holds every run; any
number of processes may write to it at once (see :mod:`conveyor.store._db`).
Writers are :class:`~conveyor.store.StoreRecorder` (during a run) and whoever ends
or resumes runs; readers are ``conveyor runs``, ``show`` and ``deadletters``::

    store = RunStore()                       # ./.conveyor/runs.db
    run = store.get_run("7f3a")              # a unique id prefix
    print(store.ledger(run.id))              # done 98 + filtered 1 + dead-lettered 1 = read 100

The class is the store's one door: it owns the connection and its lock and runs
each method in one read or one write transaction. The SQL lives beside it, by
concept: :mod:`~conveyor.store._writes` (a run's lifecycle, batches of rows),
:mod:`~conveyor.store._queries` (reads), :mod:`~conveyor.store._rows` (what writes
take) and :mod:`~conveyor.store._records` (what reads return). Item keys are
stored as text: ``"3"`` for source item 3, ``"3.1"`` for the second result of a
flat_map on it, JSON for keys that are not whole numbers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from conveyor.core.statistics import StageStatistics
from conveyor.errors import PipelineChangedError, RunNotFoundError, StoreError
from conveyor.store import _check, _db, _health, _queries, _writes
from conveyor.store._check import StoreCheck
from conveyor.store._records import DeadLetter, ItemOutcome, Ledger, RunRecord, StageRecord
from conveyor.store._rows import Batch, DeadLetterRow, OutcomeRow

T = TypeVar("T")

DEFAULT_PATH = Path(".conveyor") / "runs.db"


def default_store_path(start: str | os.PathLike[str] | None = None) -> Path:
    """Where the run store is when no path is given, found as git finds its repository.

    ``$CONVEYOR_STORE`` when it is set; else ``.conveyor/runs.db`` in the nearest folder,
    from ``start`` (the current folder) upwards, that has a ``.conveyor/`` folder, so
    that the commands see the same runs from any sub-folder of a project; else
    ``./.conveyor/runs.db`` in ``start`` (made there by the first run).
    """
    env = os.environ.get("CONVEYOR_STORE")
    if env:
        return Path(env)
    here = Path(start if start is not None else Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / ".conveyor").is_dir():
            return folder / DEFAULT_PATH
    return here / DEFAULT_PATH


class RunStore:
    """The run history in one SQLite file, safe to share between processes.

    Args:
        path: the database file; default ``$CONVEYOR_STORE``, else
            ``.conveyor/runs.db`` in the nearest folder upwards that has a
            ``.conveyor/``, else ``./.conveyor/runs.db`` (its folder is made); see
            :func:`default_store_path`.
        create: make the store if it does not exist; readers pass False to get a
            StoreError naming the missing file instead of an empty new store.
        readonly: open it read-only (SQLite's ``mode=ro``): every write is refused,
            and a store in a folder this process cannot write can still be read.
        check_on_open: when a writer of this host ended without closing the store,
            run SQLite's quick check before anything is written, and refuse a damaged
            store (see :mod:`conveyor.store._health`); False skips that (for a check
            that looks deeper, :meth:`check`).

    Raises StoreError when the file is not a conveyor store, is corrupt, or has a
    schema newer than this conveyor's; older schemas are migrated on open.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        create: bool = True,
        readonly: bool = False,
        check_on_open: bool = True,
    ) -> None:
        if path is None:  # $CONVEYOR_STORE, or the nearest .conveyor/ upwards
            path = default_store_path()
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._release: Callable[[], None] | None = None
        self._log: tuple[Any, ...] = ()
        self._conn: sqlite3.Connection | None = _db.connect(
            self.path, create=create, readonly=readonly
        )
        if not readonly:
            try:
                self._watch(check_on_open)
            except BaseException:
                self.close()
                raise

    def _watch(self, check_on_open: bool) -> None:
        """Mark this process as a writer, check the store if a writer died (see
        :mod:`conveyor.store._health`), and note the WAL files to watch them."""
        self._release = _health.release_on_exit(self, _health.mark_writer(self.path))
        stale = _health.stale_marks(self.path)
        if stale and check_on_open:
            found = _db.damage(self._connection(), self.path)
            if found:
                more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
                raise StoreError(
                    f"run store {self.path} was left open by a process that ended without "
                    f"closing it, and SQLite's quick check finds it damaged: {found[0]}{more}; "
                    f"run conveyor store check --store {self.path} to repair what can be, "
                    "or move the store aside",
                    path=self.path,
                )
            _health.clear(stale)
        self._log = _health.log_identity(self.path)

    # --- plumbing -------------------------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return _db.read(self._connection(), fn, path=self.path)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self.readonly:
            raise StoreError(
                f"run store {self.path} is open read-only; open it without readonly=True "
                "to write to it",
                path=self.path,
            )
        with self._lock:
            conn = self._connection()
            if self._log:
                _health.check_log(self.path, self._log)
            return _db.write(conn, fn, path=self.path)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(
                f"run store {self.path} is closed; open a new RunStore", path=self.path
            )
        return self._conn

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._release is not None:
                self._release()  # the writer's mark goes once its connection has
                self._release = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def verify(self) -> None:
        """SQLite's quick check of every page: StoreError naming the damage and the fix
        when the store is damaged (``conveyor run`` calls it before the work starts)."""
        found = _db.damage(self._connection(), self.path)
        if found:
            more = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
            raise StoreError(
                f"run store {self.path} is damaged: {found[0]}{more}; run conveyor store "
                f"check --store {self.path} to repair what can be, or move it aside (a new "
                "one is made on the next run) or pass another --store path",
                path=self.path,
            )

    def check(self, *, repair: bool = False) -> StoreCheck:
        """Look the whole store over (see :class:`StoreCheck`): SQLite's integrity
        check, rows whose run is gone, and every finished run's ledger. With
        ``repair``, damaged indexes are rebuilt from their tables and checked again;
        a store found sound clears the marks of writers that died."""
        if repair and self.readonly:
            raise StoreError(
                f"run store {self.path} is open read-only; open it for writing to repair it",
                path=self.path,
            )
        with self._lock:
            found = _check.check(self._connection(), self.path, repair=repair)
        if found.ok and not self.readonly:
            _health.clear(_health.stale_marks(self.path))
        return found

    @property
    def schema_version(self) -> int:
        return self._read(lambda c: int(c.execute("PRAGMA user_version").fetchone()[0]))

    # --- a run's lifecycle ----------------------------------------------------------

    def begin_run(
        self,
        run_id: str,
        pipeline: str,
        fingerprint: str | None,
        params: Mapping[str, Any] | None = None,
        target: str | None = None,
    ) -> None:
        """Record a new run in state ``pending``. StoreError if ``run_id`` is taken."""
        params_text = json.dumps(dict(params or {}), sort_keys=True, default=repr)
        self._write(
            lambda c: _writes.insert_run(
                c, self.path, run_id, pipeline, fingerprint, params_text, target
            )
        )

    def set_state(self, run_id: str, state: str) -> None:
        """Move run ``run_id`` to ``state`` (pending → running → succeeded | failed |
        cancelled); StoreError for an unknown run or a move the state machine forbids."""
        self._write(lambda c: _writes.transition(c, self.path, run_id, state, error_text=None))

    def finish_run(
        self,
        run_id: str,
        state: str,
        error_text: str | None = None,
        *,
        items_read: int | None = None,
        items_emitted: int | None = None,
    ) -> None:
        """End run ``run_id`` in ``state`` (succeeded, failed or cancelled), with the
        error that ended it and the source's item counts; when this returns, the run
        is in the database file itself (checkpointed), not only in its ``-wal`` file.
        On a full disk the WAL's space is reused to write the end (see
        ``docs/reliability-store.md``)."""
        if state not in _writes.TERMINAL_RUN_STATES:
            raise StoreError(
                f"finish_run({run_id!r}, {state!r}): a run finishes as one of "
                f"{', '.join(_writes.TERMINAL_RUN_STATES)}"
            )

        def finish(c: sqlite3.Connection) -> None:
            _writes.finish(c, self.path, run_id, state, error_text, items_read, items_emitted)

        try:
            self._write(finish)
        except StoreError as exc:
            if not _db.is_full(exc):
                raise
            with self._lock:  # the disk is full: reuse the WAL's space, then try once more
                _db.make_room(self._connection(), self.path)
            self._write(finish)
        with self._lock:  # a finished run lives in the database file, not only the WAL
            _db.checkpoint(self._connection(), self.path)

    def record_stage_statistics(self, run_id: str, stats: Mapping[str, StageStatistics]) -> None:
        """Record (or replace) each stage's statistics; ``stats`` in topological order."""
        rows = _writes.stage_statistics_rows(run_id, stats)
        self._write(lambda c: _writes.insert_stage_statistics(c, rows))

    # --- item outcomes, roots, dead letters -----------------------------------------

    def record_item_outcomes(self, run_id: str, rows: Iterable[OutcomeRow]) -> None:
        """Record item outcomes in one transaction: ``(stage, key, outcome, attempt,
        error, traceback, at)`` rows, outcome one of done, failed, skipped, cached."""
        self.record_batch(run_id, outcomes=rows)

    def record_roots(self, run_id: str, rows: Iterable[tuple[int, str]]) -> None:
        """Record source items' terminal states: ``(root, state)`` rows, state one of
        done, filtered, dead_lettered, pending."""
        self.record_batch(run_id, roots=rows)

    def record_dead_letters(self, run_id: str, rows: Iterable[DeadLetterRow]) -> None:
        """Record items a stage gave up on: ``(stage, key, value, error, traceback, at)``.
        The value is pickled when it can be; its repr is kept in any case."""
        self.record_batch(run_id, dead_letters=rows)

    def record_batch(
        self,
        run_id: str,
        *,
        done: Iterable[tuple[str, Sequence[tuple[Any, ...]], float]] = (),
        outcomes: Iterable[OutcomeRow] = (),
        roots: Iterable[tuple[int, str]] = (),
        dead_letters: Iterable[DeadLetterRow] = (),
    ) -> None:
        """Write item outcomes, root states and dead letters in one transaction.

        ``done`` is the cheap form of many ``done`` outcomes: ``(stage, keys, at)``, the
        keys that finished at ``stage``, the last at ``at``. Error-free outcomes (done,
        cached) of source items and root states are stored as ranges of consecutive
        source positions, so a batch of a thousand items costs a few rows.
        """
        batch = Batch()
        for stage, keys, at in done:
            batch.add_done(stage, keys, at)
        for row in outcomes:
            batch.add_outcome(row)
        for root, state in roots:
            batch.add_roots((root,), state)
        for letter in dead_letters:
            batch.add_letter(letter)
        self._write_batch(run_id, batch)

    def _write_batch(self, run_id: str, batch: Batch) -> None:
        """Write everything ``batch`` holds in one transaction (the recorder's writer)."""
        rows = _writes.batch_rows(batch, run_id)  # pickled outside the lock
        if rows is not None:
            self._write(lambda c: _writes.insert_batch(c, rows))

    # --- reading --------------------------------------------------------------------

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """The latest ``limit`` runs, newest first."""
        return self._read(lambda c: _queries.latest_runs(c, limit))

    def get_run(self, prefix: str) -> RunRecord:
        """The run whose id is ``prefix`` or starts with it. RunNotFoundError when none or
        several match, listing the candidates (or the latest runs)."""
        found = self._read(lambda c: _queries.runs_by_prefix(c, prefix))
        if len(found) == 1:
            return found[0]
        if not found:
            latest = [r.id for r in self.runs(5)]
            hint = f"the latest are {', '.join(latest)}" if latest else "it holds no runs yet"
            raise RunNotFoundError(
                f"no run {prefix!r} in the run store {self.path}; {hint} (see conveyor runs)",
                path=self.path,
            )
        ids = tuple(r.id for r in found)
        more = ", ..." if len(ids) > 10 else ""
        raise RunNotFoundError(
            f"run id {prefix!r} is ambiguous: it starts {', '.join(ids[:10])}{more}; give "
            "more characters of the id",
            path=self.path,
            candidates=ids[:10],
        )

    def check_fingerprint(self, run_id: str, fingerprint: str) -> None:
        """PipelineChangedError when the pipeline's code fingerprint now differs from the
        one recorded with run ``run_id`` (call before resuming it)."""
        run = self.get_run(run_id)
        if run.fingerprint is not None and run.fingerprint != fingerprint:
            raise PipelineChangedError(
                f"pipeline {run.pipeline!r} changed since run {run.id}: its code fingerprint "
                f"was {run.fingerprint[:12]}, now {fingerprint[:12]}; results recorded by "
                "that run may differ from what the code computes now: start a new run, or "
                "restore the code of that run",
                path=self.path,
            )

    def stage_statistics(self, run_id: str) -> list[StageRecord]:
        return self._read(lambda c: _queries.stage_records(c, run_id))

    def ledger(self, run_id: str) -> Ledger:
        """Count run ``run_id``'s source items per terminal state (see :class:`Ledger`)."""
        read, states = self._read(lambda c: _queries.root_counts(c, run_id))
        if read is None:
            raise RunNotFoundError(f"no run {run_id} in the run store {self.path}", path=self.path)
        return Ledger(
            run_id=run_id,
            items_read=read[0],
            done=states.get("done", 0),
            filtered=states.get("filtered", 0),
            dead_lettered=states.get("dead_lettered", 0),
            pending=states.get("pending", 0),
        )

    def root_ranges(self, run_id: str, state: str | None = None) -> list[tuple[int, int, str]]:
        """Run ``run_id``'s source items by terminal state, as ``(first, last, state)``
        ranges of source positions in order, adjacent ranges of one state merged; e.g.
        what resume skips (done, filtered, dead_lettered) and what it runs again
        (pending)."""
        return self._read(lambda c: _queries.root_ranges(c, run_id, state))

    def dead_letters(self, run_id: str) -> list[DeadLetter]:
        rows = self._read(lambda c: _queries.dead_letter_rows(c, run_id))
        return [DeadLetter(*r) for r in rows]

    def update_params(self, run_id: str, extra: Mapping[str, Any]) -> None:
        """Add ``extra`` to run ``run_id``'s params (what is known only as it ends)."""

        def update(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT params FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id} in the run store {self.path}")
            params = {**json.loads(row[0] or "{}"), **extra}
            text = json.dumps(params, sort_keys=True, default=repr)
            c.execute("UPDATE runs SET params = ? WHERE id = ?", (text, run_id))

        self._write(update)

    def resumes_of(self, run_id: str) -> list[str]:
        """The runs that resumed run ``run_id``, oldest first."""

        def find(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT id, params FROM runs WHERE params LIKE ? ORDER BY created_at, rowid",
                (f"%{run_id}%",),
            ).fetchall()
            return [i for i, p in rows if json.loads(p or "{}").get("resumed_from") == run_id]

        return self._read(find)

    def mark_redriven(self, run_id: str, letters: Iterable[DeadLetter], by: str) -> None:
        """Mark run ``run_id``'s dead letters ``letters`` as re-driven by run ``by``."""
        rows = [(by, run_id, d.stage, d.key) for d in letters]

        def mark(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE dead_letters SET redriven_by = ? "
                "WHERE run_id = ? AND stage = ? AND item_key = ?",
                rows,
            )

        self._write(mark)

    def item_outcomes(
        self, run_id: str, stage: str | None = None, *, outcome: str | None = None
    ) -> list[ItemOutcome]:
        """Run ``run_id``'s item outcomes, of one stage (and one outcome) or all, in the
        order they were recorded (one stored in a range has the time of the range's last).
        """
        return self._read(lambda c: _queries.item_outcomes(c, run_id, stage, outcome))

    def outcome_counts(self, run_id: str) -> dict[str, dict[str, int]]:
        """``{stage: {outcome: count}}`` for run ``run_id``."""
        return self._read(lambda c: _queries.outcome_counts(c, run_id))

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"
