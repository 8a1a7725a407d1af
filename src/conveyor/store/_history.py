"""StoreRecorder: an instrument that writes a run into the run store as it goes.

::

    store = RunStore()
    run = pipe.run(src, instruments=[StoreRecorder(store, pipeline=pipe)])
    store.ledger(run.id)          # every source item in exactly one terminal state

What it records, from which hook:

    run_started      the run's row (pending, then running)
    task_finished    ``done`` for each item that ran without error
    unit_failed      ``failed`` for each failed attempt, with error and traceback
    dead_lettered    ``skipped``, and the item's value in dead_letters
    cache_hits       ``cached``
    roots_finished   each source item's terminal state (done, filtered, dead_lettered)
    run_finished     source items never finished as ``pending``, each stage's
                     statistics, and the run's final state and error

Hooks only append to in-memory buffers (a few hundred nanoseconds per item). Every
``flush_rows`` rows or ``flush_seconds`` seconds the buffers are coalesced into a
:class:`~conveyor.store._rows.Batch` (consecutive source items become ranges) and
handed to a writer thread, which writes what it has been handed in one
transaction, so the scheduler's thread does not wait for the disk::

    hooks ──append──▶ buffers ──every flush_rows──▶ pending Batch ◀──takes── writer ══▶ SQLite
                                                     (coalesces while the writer is busy)

While the writer is busy, further hand-overs merge into the one pending batch, so
a slow disk costs memory per *range* (and per rare row: failures, dead letters),
not per item. Only when the pending batch passes ``max_pending_rows`` rows does
the hook wait for the writer to take it: backpressure on the run, never
unbounded memory. ``run_finished`` drains the writer before it returns.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import traceback as tb_module
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.core.events import Instrument, Key, RunInfo
from conveyor.errors import InstrumentError, RunError, StoreError
from conveyor.store._rows import Batch, DeadLetterRow, OutcomeRow
from conveyor.store._store import RunStore

if TYPE_CHECKING:
    from conveyor.core.pipeline import Pipeline

# A buffered chunk of "done" outcomes: (stage, keys, ends_ns), coalesced at hand-over.
_DoneChunk = tuple[str, Sequence[Key], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class WriterStatistics:
    """A snapshot of a :class:`StoreRecorder`'s hand-off to its writer thread.

    ``pending_rows`` is what waits for the writer now (ranges count one row each),
    ``peak_pending_rows`` the most it ever held; ``waits`` counts the times a hook
    waited for the writer because the pending batch was full, and ``waiting`` is
    true while one does.
    """

    batches_written: int
    pending_rows: int
    peak_pending_rows: int
    waits: int
    waiting: bool


class StoreRecorder(Instrument):
    """Records runs into a :class:`RunStore` (see the module docstring).

    Args:
        store: a RunStore, or a path to one; default ``$CONVEYOR_STORE``, else the
            nearest ``.conveyor/runs.db`` upwards (:func:`default_store_path`).
        pipeline: the pipeline, to record its code fingerprint (for resume's check
            that the code has not changed); or pass ``fingerprint`` directly.
        params: the run's parameters, recorded as JSON.
        target: how to load the pipeline again, e.g. ``"etl.py:pipe"`` (for resume).
        flush_rows, flush_seconds: hand buffered rows to the writer after this many
            rows or seconds, whichever comes first.
        max_pending_rows: the most rows (a range counts one) waiting for the writer
            before a hook waits for it; default ``10 * flush_rows``.

    ``error`` holds the StoreError of a write that failed; the run goes on without
    recording, is recorded as ``failed`` (its record is not whole) when it ends, and
    the failure is reported once as a RuntimeWarning. A subclass with
    ``critical = True`` (what ``conveyor run`` uses) stops the run instead, at the
    next hook after the failed write. ``ended`` is the final state the store holds
    once the run has ended (None if even that could not be written).
    """

    def __init__(
        self,
        store: RunStore | str | os.PathLike[str] | None = None,
        *,
        pipeline: Pipeline | None = None,
        fingerprint: str | None = None,
        params: Mapping[str, Any] | None = None,
        target: str | None = None,
        flush_rows: int = 1000,
        flush_seconds: float = 0.5,
        max_pending_rows: int | None = None,
    ) -> None:
        self.store = store if isinstance(store, RunStore) else RunStore(store)
        if fingerprint is None and pipeline is not None:
            from conveyor.cache import FingerprintError, fingerprint_pipeline

            try:
                fingerprint = fingerprint_pipeline(pipeline)
            except FingerprintError:
                fingerprint = None  # recorded as unknown: resume cannot check the code
        self.fingerprint = fingerprint
        self.params = dict(params or {})
        self.target = target
        self.flush_rows = flush_rows
        self.flush_ns = int(flush_seconds * 1e9)
        self.max_pending_rows = 10 * flush_rows if max_pending_rows is None else max_pending_rows
        self.run_id: str | None = None
        self.error: StoreError | None = None
        self.ended: str | None = None
        self._failure: BaseException | None = None
        self._begun = False
        self._cond = threading.Condition()
        self._reset()

    def _reset(self) -> None:
        # Buffers: touched by the hooks only (the scheduler's thread).
        self._done: list[_DoneChunk] = []
        self._rows: list[OutcomeRow] = []
        self._roots: list[tuple[Sequence[int], str]] = []
        self._letters: list[DeadLetterRow] = []
        self._buffered = 0
        self._last_flush_ns = time.monotonic_ns()
        self._unfinished: set[int] = set()
        self._dropped: set[int] = set()  # roots done at the output, never handed out
        self._items_read = 0  # the engine's own count is used when it can be had
        self._failed: set[tuple[str, Key]] = set()
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        self._control: Any = None
        # The hand-off: shared with the writer thread, under self._cond.
        self._pending = Batch()
        self._closing = False
        self._batches_written = 0
        self._peak_pending = 0
        self._waits = 0
        self._waiting = False
        self._writer: threading.Thread | None = None

    def statistics(self) -> WriterStatistics:
        """How the hand-off to the writer thread stands (see :class:`WriterStatistics`)."""
        with self._cond:
            return WriterStatistics(
                batches_written=self._batches_written,
                pending_rows=self._pending.rows,
                peak_pending_rows=self._peak_pending,
                waits=self._waits,
                waiting=self._waiting,
            )

    # --- hooks ----------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """Record the run as ``failed`` with ``error`` when it ends, whatever state the
        engine gives it: its caller is stopping it because of ``error`` (e.g. its
        results could not be written)."""
        self._failure = self._failure or error

    def run_started(self, run: RunInfo) -> None:
        self._reset()
        self.run_id = run.run_id
        self.error = None
        self.ended = None
        self._failure = None
        self._begun = False
        self._control = run.control
        try:
            self.store.begin_run(
                run.run_id, run.pipeline, self.fingerprint, self.params, self.target
            )
            self._begun = True
            self.store.set_state(run.run_id, "running")
        except StoreError as exc:
            self.error = exc  # the run cannot be recorded: said once, by whoever runs it
            raise
        self._writer = threading.Thread(
            target=self._write_batches, args=(run.run_id,), name="conveyor-store-writer",
            daemon=True,
        )  # fmt: skip
        self._writer.start()

    def items_read(self, keys: Sequence[Key], t_ns: int) -> None:
        self._unfinished.update(k[0] for k in keys)
        self._items_read += len(keys)

    def task_finished(
        self,
        stage: str,
        task: int,
        worker: int,
        keys: Sequence[Key],
        starts_ns: Sequence[int],
        ends_ns: Sequence[int],
        error: BaseException | None,
    ) -> None:
        if error is not None:  # the failing item, last, is recorded by unit_failed
            keys, ends_ns = keys[:-1], ends_ns[:-1]
        if keys:
            self._done.append((stage, keys, ends_ns))
            self._added(len(keys), ends_ns[-1])

    def unit_failed(
        self,
        stage: str,
        key: Key,
        error: BaseException,
        traceback: str | None,
        attempt: int,
        retrying: bool,
        t_ns: int,
    ) -> None:
        self._failed.add((stage, key))
        text = f"{type(error).__name__}: {error}"
        self._rows.append((stage, key, "failed", attempt, text, traceback, self._wall(t_ns)))
        self._added(1, t_ns)

    def dead_lettered(
        self,
        stage: str,
        key: Key,
        value: Any,
        error: BaseException,
        traceback: str | None,
        t_ns: int,
    ) -> None:
        at = self._wall(t_ns)
        text = f"{type(error).__name__}: {error}"
        self._rows.append((stage, key, "skipped", None, text, traceback, at))
        self._letters.append((stage, key, value, error, traceback, at))
        self._added(1, t_ns)

    def cache_hits(self, stage: str, keys: Sequence[Key], t_ns: int) -> None:
        at = self._wall(t_ns)
        self._rows.extend((stage, k, "cached", None, None, None, at) for k in keys)
        self._added(len(keys), t_ns)

    def results_dropped(self, keys: Sequence[Key], t_ns: int) -> None:
        # done at the output, never handed out: kept in params for resume to run again
        self._dropped.update(k[0] for k in keys if isinstance(k[0], int))

    def roots_finished(self, roots: Sequence[int], state: str, t_ns: int) -> None:
        self._unfinished.difference_update(roots)
        self._roots.append((roots, state))
        self._added(len(roots), t_ns)

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        run_id = self.run_id
        if run_id is None or not self._begun:
            return
        self._record_run_error(error, t_ns)
        if self._dropped:
            try:  # resume must not skip them: their results never reached the consumer
                self.store.update_params(run_id, {"undelivered": _ranges(self._dropped)})
            except StoreError as exc:
                self.error = self.error or exc
            self._dropped = set()
        if self._unfinished:
            self._roots.append((sorted(self._unfinished), "pending"))
            self._buffered += len(self._unfinished)  # even when nothing else is buffered
            self._unfinished = set()
        self._flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        stats = self._control.statistics() if self._control is not None else None
        self._control = None
        if stats is not None and self.error is None:
            try:
                self.store.record_stage_statistics(run_id, stats.stages)
            except StoreError as exc:
                self.error = exc
        state, text = self._final(state, error)
        try:
            self.store.finish_run(
                run_id,
                state,
                text,
                # the items this recorder saw read, which its done and pending rows
                # cover: a Ctrl-C between the engine counting a burst of items and
                # reporting it leaves those out of both, and the ledger balanced
                items_read=self._items_read,
                items_emitted=stats.items_emitted if stats is not None else None,
            )
        except StoreError as exc:
            self.error = self.error or exc
        else:
            self.ended = state
        if self.error is not None and not self.critical:
            warnings.warn(
                f"run {run_id} was not fully recorded in {self.store.path}: {self.error}",
                RuntimeWarning,
                stacklevel=2,
            )

    def _final(self, state: str, error: BaseException | None) -> tuple[str, str | None]:
        """The state and error text to record: ``failed`` when the run's record is not
        whole (a write failed) or its caller failed it (:meth:`fail`)."""
        text = _error_text(error)
        if self._failure is not None:
            state, text = "failed", _error_text(self._failure)
        if self.error is not None:
            note = f"the run store could not record this run in full: {self.error}"
            ours = isinstance(error, InstrumentError) and error.__cause__ is self.error
            state, text = "failed", note if text is None or ours else f"{text}\n{note}"
        return state, text

    # --- buffering and the hand-off -------------------------------------------------

    def _wall(self, t_ns: int) -> float:
        return (t_ns + self._offset_ns) / 1e9

    def _added(self, rows: int, t_ns: int) -> None:
        if self.error is not None and self.critical:
            raise self.error  # a critical recorder stops the run it cannot record
        self._buffered += rows
        if self._buffered >= self.flush_rows or t_ns - self._last_flush_ns >= self.flush_ns:
            self._last_flush_ns = t_ns
            self._flush()

    def _flush(self) -> None:
        """Coalesce the buffers into a batch and hand it to the writer."""
        if not self._buffered:
            return
        batch = Batch()
        offset = self._offset_ns
        for stage, keys, ends in self._done:
            batch.add_done(stage, keys, (max(ends) + offset) / 1e9)
        for row in self._rows:
            batch.add_outcome(row)
        for roots, state in self._roots:
            batch.add_roots(roots, state)
        for letter in self._letters:
            batch.add_letter(letter)
        self._done, self._rows, self._roots, self._letters = [], [], [], []
        self._buffered = 0
        self._hand_over(batch)

    def _hand_over(self, batch: Batch) -> None:
        """Merge ``batch`` into the one the writer takes next; wait for the writer
        only while that one holds more than ``max_pending_rows`` rows."""
        with self._cond:
            if self.error is not None or self._writer is None:
                return  # the store failed (or no run): the run goes on unrecorded
            if self._pending:
                self._pending.update(batch)
            else:
                self._pending = batch
            pending = self._pending.rows
            self._peak_pending = max(self._peak_pending, pending)
            self._cond.notify_all()
            if pending > self.max_pending_rows:
                self._waits += 1
                self._waiting = True
                while self._pending.rows > self.max_pending_rows and self.error is None:
                    self._cond.wait()
                self._waiting = False

    def _record_run_error(self, error: BaseException | None, t_ns: int) -> None:
        """A stage failure that no unit_failed event reported (the engine reports the
        run's error in any case) still gets its item's ``failed`` row."""
        if not isinstance(error, RunError) or error.key is None:
            return
        key = error.key
        if (error.stage, key) in self._failed:
            return
        cause = error.__cause__ or error
        text = f"{type(cause).__name__}: {cause}"
        trace = "".join(tb_module.format_exception(cause))
        self._rows.append((error.stage, key, "failed", None, text, trace, self._wall(t_ns)))
        self._buffered += 1

    def _write_batches(self, run_id: str) -> None:
        """The writer thread: take the pending batch, write it, until closing."""
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, Batch()
                self._cond.notify_all()  # a hook waiting for room goes on
            if self.error is not None:
                continue  # the store failed: drain without writing
            try:
                self.store._write_batch(run_id, batch)
            except StoreError as exc:
                self._fail(exc)
            except Exception as exc:  # never die silently: a hook may wait for us
                self._fail(StoreError(f"the run store's writer failed: {exc!r}"))
            else:
                with self._cond:
                    self._batches_written += 1

    def _fail(self, exc: StoreError) -> None:
        with self._cond:
            self.error = exc
            self._pending = Batch()
            self._cond.notify_all()


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    cause = error.__cause__
    if cause is not None and not isinstance(error, KeyboardInterrupt):
        text += f"\ncaused by {type(cause).__name__}: {cause}"
    return text


def _ranges(positions: set[int]) -> list[list[int]]:
    """Sorted ``positions`` as ``[first, last]`` ranges of consecutive ones."""
    out: list[list[int]] = []
    for p in sorted(positions):
        if out and out[-1][1] + 1 == p:
            out[-1][1] = p
        else:
            out.append([p, p])
    return out
