"""The run store: each run's row, stage statistics, item outcomes, dead letters and ledger.

One SQLite file (``./.conveyor/runs.db`` unless told otherwise) holds every run;
any number of processes may write to it at once (see :mod:`conveyor.store._db`).
Writers are :class:`~conveyor.store.StoreRecorder` (during a run) and whoever ends
or resumes runs; readers are ``conveyor runs``, ``show`` and ``deadletters``::

    store = RunStore()                       # ./.conveyor/runs.db
    run = store.get_run("7f3a")              # a unique id prefix
    print(store.ledger(run.id))              # done 98 + filtered 1 + dead-lettered 1 = read 100

A run moves through pending → running → succeeded | failed | cancelled, and
:meth:`RunStore.set_state` refuses any other move. Item keys are stored as text:
``"3"`` for source item 3, ``"3.1"`` for the second result of a flat_map on it,
JSON for keys that are not whole numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import reprlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from conveyor.core.statistics import StageStatistics
from conveyor.errors import PipelineChangedError, RunNotFoundError, StoreError
from conveyor.store import _db

T = TypeVar("T")

DEFAULT_PATH = Path(".conveyor") / "runs.db"

RUN_STATES = ("pending", "running", "succeeded", "failed", "cancelled")
TERMINAL_RUN_STATES = ("succeeded", "failed", "cancelled")
_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("running", "failed", "cancelled"),
    "running": TERMINAL_RUN_STATES,
    "succeeded": (),
    "failed": (),
    "cancelled": (),
}
OUTCOMES = ("done", "failed", "skipped", "cached")
ROOT_STATES = ("done", "filtered", "dead_lettered", "pending")

# (stage, key, outcome, attempt, error, traceback, at): one item's outcome at one stage.
OutcomeRow = tuple[
    str, "tuple[Any, ...] | str", str, "int | None", "str | None", "str | None", float
]
# (stage, key, value, error, traceback, at): an item a stage gave up on.
DeadLetterRow = tuple[str, "tuple[Any, ...] | str", Any, BaseException, "str | None", float]


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run as the store holds it; times are Unix seconds."""

    id: str
    pipeline: str
    fingerprint: str | None
    params: dict[str, Any]
    target: str | None
    state: str
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    host: str
    pid: int
    conveyor_version: str
    items_read: int | None
    items_emitted: int | None

    @property
    def elapsed_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """A stage's statistics at the end of a run (see :class:`~conveyor.StageStatistics`)."""

    stage: str
    position: int
    kind: str
    executor: str
    workers: int
    items_in: int
    items_out: int
    errors: int
    tasks: int
    busy_seconds: float
    queue_bound: int | None
    queue_peak: int


@dataclasses.dataclass(frozen=True)
class ItemOutcome:
    """One item's outcome at one stage: done, failed (one row per failed attempt),
    skipped (dead-lettered) or cached (served from the stage's cache)."""

    stage: str
    key: str
    outcome: str
    attempt: int | None
    error: str | None
    traceback: str | None
    at: float


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An item a stage gave up on, with its input value (pickled when it could be)."""

    stage: str
    key: str
    value_pickle: bytes | None
    value_repr: str
    error_type: str
    error: str
    traceback: str | None
    at: float

    def load_value(self) -> Any:
        """The item's input value, unpickled; StoreError if it could not be pickled."""
        if self.value_pickle is None:
            raise StoreError(
                f"the value of dead letter {self.key} at stage {self.stage!r} could not be "
                f"pickled when it was recorded; only its repr is kept: {self.value_repr}"
            )
        return pickle.loads(self.value_pickle)


@dataclasses.dataclass(frozen=True)
class Ledger:
    """Where every source item of a run ended: each is in exactly one terminal state.

    ``balanced`` holds when the states sum to the items read from the source; a run
    whose process died before it finished has ``items_read`` None and is not balanced.
    """

    run_id: str
    items_read: int | None
    done: int
    filtered: int
    dead_lettered: int
    pending: int

    @property
    def accounted(self) -> int:
        return self.done + self.filtered + self.dead_lettered + self.pending

    @property
    def balanced(self) -> bool:
        return self.items_read is not None and self.accounted == self.items_read

    def __str__(self) -> str:
        read = "?" if self.items_read is None else str(self.items_read)
        sign = "=" if self.balanced else "!="
        return (
            f"done {self.done} + filtered {self.filtered} + dead-lettered "
            f"{self.dead_lettered} + pending {self.pending} {sign} read {read}"
        )


def encode_key(key: tuple[Any, ...] | str) -> str:
    """An item key as stored: ``(3, 1)`` → ``"3.1"``; other keys as JSON."""
    if isinstance(key, str):
        return key
    if all(type(k) is int for k in key):
        return ".".join(map(str, key))
    return json.dumps(list(key), default=repr)


class RunStore:
    """The run history in one SQLite file, safe to share between processes.

    Args:
        path: the database file; default ``./.conveyor/runs.db`` (its folder is made).
        create: make the store if it does not exist; readers pass False to get a
            StoreError naming the missing file instead of an empty new store.

    Raises StoreError when the file is not a conveyor store, is corrupt, or has a
    schema newer than this conveyor's; older schemas are migrated on open.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True) -> None:
        if path is None:  # $CONVEYOR_STORE, as the CLI, or ./.conveyor/runs.db
            path = os.environ.get("CONVEYOR_STORE") or Path.cwd() / DEFAULT_PATH
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = _db.connect(self.path, create=create)

    # --- plumbing -------------------------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return _db.read(self._connection(), fn, path=self.path)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return _db.write(self._connection(), fn, path=self.path)

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

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._read(lambda c: int(c.execute("PRAGMA user_version").fetchone()[0]))

    # --- writing --------------------------------------------------------------------

    def begin_run(
        self,
        run_id: str,
        pipeline: str,
        fingerprint: str | None,
        params: Mapping[str, Any] | None = None,
        target: str | None = None,
    ) -> None:
        """Record a new run in state ``pending``. StoreError if ``run_id`` is taken."""
        from conveyor import __version__

        params_text = json.dumps(dict(params or {}), sort_keys=True, default=repr)
        row = (
            run_id, pipeline, fingerprint, params_text, target, time.time(),
            socket.gethostname(), os.getpid(), __version__,
        )  # fmt: skip

        def insert(c: sqlite3.Connection) -> None:
            if c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise StoreError(
                    f"run {run_id} is already in the run store {self.path}; give each run a new id",
                    path=self.path,
                )
            c.execute(
                "INSERT INTO runs (id, pipeline, fingerprint, params, target, state, "
                "created_at, host, pid, conveyor_version) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                row,
            )

        self._write(insert)

    def set_state(self, run_id: str, state: str) -> None:
        """Move run ``run_id`` to ``state`` (pending → running → succeeded | failed |
        cancelled); StoreError for an unknown run or a move the state machine forbids."""
        self._write(lambda c: self._transition(c, run_id, state, error_text=None))

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
        error that ended it and the source's item counts."""
        if state not in TERMINAL_RUN_STATES:
            raise StoreError(
                f"finish_run({run_id!r}, {state!r}): a run finishes as one of "
                f"{', '.join(TERMINAL_RUN_STATES)}"
            )

        def finish(c: sqlite3.Connection) -> None:
            self._transition(c, run_id, state, error_text=error_text)
            c.execute(
                "UPDATE runs SET items_read = coalesce(?, items_read), "
                "items_emitted = coalesce(?, items_emitted) WHERE id = ?",
                (items_read, items_emitted, run_id),
            )

        self._write(finish)

    def _transition(
        self, c: sqlite3.Connection, run_id: str, state: str, *, error_text: str | None
    ) -> None:
        if state not in RUN_STATES:
            raise StoreError(f"unknown run state {state!r}; one of {', '.join(RUN_STATES)}")
        row = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(
                f"no run {run_id} in the run store {self.path}; begin_run() first", path=self.path
            )
        current = row[0]
        if state not in _TRANSITIONS[current]:
            allowed = ", ".join(_TRANSITIONS[current]) or "none: it has ended"
            raise StoreError(
                f"run {run_id} is {current}; it cannot become {state} (allowed: {allowed})",
                path=self.path,
            )
        now = time.time()
        if state == "running":
            c.execute(
                "UPDATE runs SET state = ?, started_at = ? WHERE id = ?", (state, now, run_id)
            )
        elif state in TERMINAL_RUN_STATES:
            c.execute(
                "UPDATE runs SET state = ?, finished_at = ?, error = ?, "
                "started_at = coalesce(started_at, ?) WHERE id = ?",
                (state, now, error_text, now, run_id),
            )

    def record_stage_statistics(self, run_id: str, stats: Mapping[str, StageStatistics]) -> None:
        """Record (or replace) each stage's statistics; ``stats`` in topological order."""
        rows = [
            (
                run_id,
                name,
                i,
                s.kind,
                s.executor,
                s.workers,
                s.items_in,
                s.items_out,
                s.errors,
                s.tasks,
                s.busy_seconds,
                s.queue.bound,
                s.queue.peak_depth,
            )
            for i, (name, s) in enumerate(stats.items())
        ]
        self._write(
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO stage_statistics VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        )

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
        singles: dict[tuple[str, str], list[int]] = {}
        latest: dict[tuple[str, str], float] = {}
        outcome_rows: list[tuple[Any, ...]] = []
        for stage, keys, at in done:
            ints = singles.setdefault((stage, "done"), [])
            for done_key in keys:
                if len(done_key) == 1 and type(done_key[0]) is int:
                    ints.append(done_key[0])
                else:
                    outcome_rows.append(
                        (run_id, stage, encode_key(done_key), "done", None, None, None, at)
                    )
            latest[stage, "done"] = max(at, latest.get((stage, "done"), at))
        for stage, key, outcome, attempt, error, tb, at in outcomes:
            if (
                outcome in ("done", "cached")
                and error is None
                and isinstance(key, tuple)
                and len(key) == 1
                and type(key[0]) is int
            ):
                singles.setdefault((stage, outcome), []).append(key[0])
                latest[stage, outcome] = max(at, latest.get((stage, outcome), at))
            else:
                outcome_rows.append(
                    (run_id, stage, encode_key(key), outcome, attempt, error, tb, at)
                )
        range_rows = [
            (run_id, stage, first, last, outcome, latest[stage, outcome])
            for (stage, outcome), ints in singles.items()
            for first, last in _ranges(ints)
        ]
        by_state: dict[str, list[int]] = {}
        for root, state in roots:
            by_state.setdefault(state, []).append(root)
        root_rows = [
            (run_id, first, last, state)
            for state, ints in by_state.items()
            for first, last in _ranges(ints)
        ]
        letter_rows = [
            (
                run_id, stage, encode_key(key), _pickle_or_none(value), reprlib.repr(value),
                type(error).__name__, str(error), tb, at,
            )
            for stage, key, value, error, tb, at in dead_letters
        ]  # fmt: skip
        if not (outcome_rows or range_rows or root_rows or letter_rows):
            return

        def insert(c: sqlite3.Connection) -> None:
            if range_rows:
                c.executemany("INSERT INTO item_ranges VALUES (?, ?, ?, ?, ?, ?)", range_rows)
            if outcome_rows:
                c.executemany(
                    "INSERT INTO item_outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", outcome_rows
                )
            if root_rows:
                c.executemany("INSERT INTO roots VALUES (?, ?, ?, ?)", root_rows)
            if letter_rows:
                c.executemany(
                    "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", letter_rows
                )

        self._write(insert)

    # --- reading --------------------------------------------------------------------

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """The latest ``limit`` runs, newest first."""
        rows = self._read(
            lambda c: c.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [_run_record(r) for r in rows]

    def get_run(self, prefix: str) -> RunRecord:
        """The run whose id is ``prefix`` or starts with it. RunNotFoundError when none or
        several match, listing the candidates (or the latest runs)."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"

        def find(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            exact = c.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (prefix,))
            row = exact.fetchone()
            if row is not None:
                return [row]
            return c.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE id LIKE ? ESCAPE '\\' "
                "ORDER BY created_at DESC LIMIT 11",
                (pattern,),
            ).fetchall()

        rows = self._read(find)
        if len(rows) == 1:
            return _run_record(rows[0])
        if not rows:
            latest = [r.id for r in self.runs(5)]
            hint = f"the latest are {', '.join(latest)}" if latest else "it holds no runs yet"
            raise RunNotFoundError(
                f"no run {prefix!r} in the run store {self.path}; {hint} (see conveyor runs)",
                path=self.path,
            )
        ids = tuple(r[0] for r in rows)
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
        rows = self._read(
            lambda c: c.execute(
                "SELECT stage, position, kind, executor, workers, items_in, items_out, errors, "
                "tasks, busy_seconds, queue_bound, queue_peak FROM stage_statistics "
                "WHERE run_id = ? ORDER BY position",
                (run_id,),
            ).fetchall()
        )
        return [StageRecord(*r) for r in rows]

    def ledger(self, run_id: str) -> Ledger:
        """Count run ``run_id``'s source items per terminal state (see :class:`Ledger`)."""

        def count(c: sqlite3.Connection) -> tuple[Any, dict[str, int]]:
            read = c.execute("SELECT items_read FROM runs WHERE id = ?", (run_id,)).fetchone()
            states = c.execute(
                "SELECT state, sum(last - first + 1) FROM roots WHERE run_id = ? GROUP BY state",
                (run_id,),
            ).fetchall()
            return read, dict(states)

        read, states = self._read(count)
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
        where, args = "WHERE run_id = ?", [run_id]
        if state is not None:
            where += " AND state = ?"
            args.append(state)
        rows = self._read(
            lambda c: c.execute(
                f"SELECT first, last, state FROM roots {where} ORDER BY first, last", args
            ).fetchall()
        )
        merged: list[tuple[int, int, str]] = []
        for first, last, st in rows:
            if merged and merged[-1][2] == st and merged[-1][1] + 1 == first:
                merged[-1] = (merged[-1][0], last, st)
            else:
                merged.append((first, last, st))
        return merged

    def dead_letters(self, run_id: str) -> list[DeadLetter]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT stage, item_key, value, value_repr, error_type, error, traceback, at "
                "FROM dead_letters WHERE run_id = ? ORDER BY at, rowid",
                (run_id,),
            ).fetchall()
        )
        return [DeadLetter(*r) for r in rows]

    def item_outcomes(
        self, run_id: str, stage: str | None = None, *, outcome: str | None = None
    ) -> list[ItemOutcome]:
        """Run ``run_id``'s item outcomes, of one stage (and one outcome) or all, in the
        order they were recorded (one stored in a range has the time of the range's last).
        """
        where = "WHERE run_id = ?"
        args: list[str] = [run_id]
        if stage is not None:
            where += " AND stage = ?"
            args.append(stage)
        if outcome is not None:
            where += " AND outcome = ?"
            args.append(outcome)

        def query(c: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            rows = c.execute(
                "SELECT stage, item_key, outcome, attempt, error, traceback, at "
                f"FROM item_outcomes {where} ORDER BY rowid",
                args,
            ).fetchall()
            if outcome not in (None, "done", "cached"):
                return rows, []
            ranges = c.execute(
                f"SELECT stage, first, last, outcome, at FROM item_ranges {where} ORDER BY rowid",
                args,
            ).fetchall()
            return rows, ranges

        rows, ranges = self._read(query)
        found = [ItemOutcome(*r) for r in rows]
        for stage_name, first, last, kind, at in ranges:
            found.extend(
                ItemOutcome(stage_name, str(i), kind, None, None, None, at)
                for i in range(first, last + 1)
            )
        found.sort(key=lambda o: o.at)  # stable: rows keep their order within one time
        return found

    def outcome_counts(self, run_id: str) -> dict[str, dict[str, int]]:
        """``{stage: {outcome: count}}`` for run ``run_id``."""

        def query(c: sqlite3.Connection) -> list[Any]:
            return c.execute(
                "SELECT stage, outcome, count(*) FROM item_outcomes WHERE run_id = ? "
                "GROUP BY stage, outcome UNION ALL "
                "SELECT stage, outcome, sum(last - first + 1) FROM item_ranges WHERE run_id = ? "
                "GROUP BY stage, outcome",
                (run_id, run_id),
            ).fetchall()

        counts: dict[str, dict[str, int]] = {}
        for stage, outcome, n in self._read(query):
            per_stage = counts.setdefault(stage, {})
            per_stage[outcome] = per_stage.get(outcome, 0) + n
        return counts

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"


_RUN_COLUMNS = (
    "id, pipeline, fingerprint, params, target, state, error, created_at, started_at, "
    "finished_at, host, pid, conveyor_version, items_read, items_emitted"
)


def _run_record(row: Sequence[Any]) -> RunRecord:
    values = list(row)
    values[3] = json.loads(values[3])
    return RunRecord(*values)


def _ranges(ints: list[int]) -> list[tuple[int, int]]:
    """``[5, 1, 2, 3, 7, 6]`` → ``[(1, 3), (5, 7)]``; duplicates are kept as their own
    ranges, so a count over ranges never hides an item recorded twice."""
    if not ints:
        return []
    ints.sort()
    out = []
    first = last = ints[0]
    for i in ints[1:]:
        if i == last + 1:
            last = i
        else:
            out.append((first, last))
            first = last = i
    out.append((first, last))
    return out


def _pickle_or_none(value: Any) -> bytes | None:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:  # any object may refuse pickling, in any way
        return None
