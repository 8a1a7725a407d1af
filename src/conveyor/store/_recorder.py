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

Hooks only append to in-memory buffers (a few hundred nanoseconds per item); every
``flush_rows`` rows or ``flush_seconds`` seconds the buffers go, as one batch, to a
writer thread that writes them in one transaction, so the scheduler's thread never
waits for the disk. ``run_finished`` drains the writer before it returns.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback as tb_module
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.core.events import Instrument, Key, RunInfo
from conveyor.errors import RunError, StoreError
from conveyor.store._store import DeadLetterRow, OutcomeRow, RunStore

if TYPE_CHECKING:
    from conveyor.core.pipeline import Pipeline

# A buffered chunk of "done" outcomes: (stage, keys, ends_ns), expanded by the writer.
_DoneChunk = tuple[str, Sequence[Key], Sequence[int]]
_Batch = tuple[
    list[_DoneChunk], list[OutcomeRow], list[tuple[Sequence[int], str]], list[DeadLetterRow]
]


class StoreRecorder(Instrument):
    """Records runs into a :class:`RunStore` (see the module docstring).

    Args:
        store: a RunStore, or a path to one; default ``./.conveyor/runs.db``.
        pipeline: the pipeline, to record its code fingerprint (for resume's check
            that the code has not changed); or pass ``fingerprint`` directly.
        params: the run's parameters, recorded as JSON.
        target: how to load the pipeline again, e.g. ``"etl.py:pipe"`` (for resume).
        flush_rows, flush_seconds: hand buffered rows to the writer after this many
            rows or seconds, whichever comes first.

    ``error`` holds the StoreError of a write that failed; the run goes on without
    recording, and the failure is reported once as a RuntimeWarning at its end.
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
        self.run_id: str | None = None
        self.error: StoreError | None = None
        self._reset()

    def _reset(self) -> None:
        self._done: list[_DoneChunk] = []
        self._rows: list[OutcomeRow] = []
        self._roots: list[tuple[Sequence[int], str]] = []
        self._letters: list[DeadLetterRow] = []
        self._buffered = 0
        self._last_flush_ns = time.monotonic_ns()
        self._unfinished: set[int] = set()
        self._items_read = 0  # the engine's own count is used when it can be had
        self._failed: set[tuple[str, Key]] = set()
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        self._control: Any = None
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    # --- hooks ----------------------------------------------------------------------

    def run_started(self, run: RunInfo) -> None:
        self._reset()
        self.run_id = run.run_id
        self.error = None
        self._control = run.control
        self.store.begin_run(run.run_id, run.pipeline, self.fingerprint, self.params, self.target)
        self.store.set_state(run.run_id, "running")
        self._writer = threading.Thread(
            target=self._write_batches, name="conveyor-store-writer", daemon=True
        )
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

    def roots_finished(self, roots: Sequence[int], state: str, t_ns: int) -> None:
        self._unfinished.difference_update(roots)
        self._roots.append((roots, state))
        self._added(len(roots), t_ns)

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        run_id = self.run_id
        if run_id is None:
            return
        self._record_run_error(error, t_ns)
        if self._unfinished:
            self._roots.append((sorted(self._unfinished), "pending"))
            self._unfinished = set()
        self._flush()
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        stats = self._control.statistics() if self._control is not None else None
        self._control = None
        try:
            if stats is not None:
                self.store.record_stage_statistics(run_id, stats.stages)
            self.store.finish_run(
                run_id,
                state,
                _error_text(error),
                items_read=stats.items_read if stats is not None else self._items_read,
                items_emitted=stats.items_emitted if stats is not None else None,
            )
        except StoreError as exc:
            self.error = self.error or exc
        if self.error is not None:
            warnings.warn(
                f"run {run_id} was not fully recorded in {self.store.path}: {self.error}",
                RuntimeWarning,
                stacklevel=2,
            )

    # --- buffering ------------------------------------------------------------------

    def _wall(self, t_ns: int) -> float:
        return (t_ns + self._offset_ns) / 1e9

    def _added(self, rows: int, t_ns: int) -> None:
        self._buffered += rows
        if self._buffered >= self.flush_rows or t_ns - self._last_flush_ns >= self.flush_ns:
            self._last_flush_ns = t_ns
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        self._queue.put((self._done, self._rows, self._roots, self._letters))
        self._done, self._rows, self._roots, self._letters = [], [], [], []
        self._buffered = 0

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

    def _write_batches(self) -> None:
        run_id = self.run_id
        assert run_id is not None
        offset = self._offset_ns
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self.error is not None:
                continue  # the store failed: drain without writing
            done, rows, roots, letters = batch
            try:
                self.store.record_batch(
                    run_id,
                    done=[(stage, keys, (max(ends) + offset) / 1e9) for stage, keys, ends in done],
                    outcomes=rows,
                    roots=[(r, state) for chunk, state in roots for r in chunk],
                    dead_letters=letters,
                )
            except StoreError as exc:
                self.error = exc


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    cause = error.__cause__
    if cause is not None and not isinstance(error, KeyboardInterrupt):
        text += f"\ncaused by {type(cause).__name__}: {cause}"
    return text
