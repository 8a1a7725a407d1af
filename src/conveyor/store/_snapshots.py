"""SnapshotRecorder: a run's live state and its recording, written into the run store.

The dashboard (``conveyor dashboard``) reads the run store and nothing else, so what
it draws must be there: while a run goes on, a snapshot of every stage's counters
(items in and out, errors, dead letters, queue depth, busy workers) every
``every`` seconds, and the run's :class:`~conveyor.Recording` (bounded aggregates
and the window of per-unit detail) every ``recording_every`` seconds and once more,
final, when the run ends::

    store = RunStore()
    pipe.run(src, instruments=[StoreRecorder(store), SnapshotRecorder(store)])

A SnapshotRecorder *is* a :class:`~conveyor.Recorder` (``conveyor run`` uses it as
the recorder its report reads), so the recording costs nothing more. A writer thread
of its own takes the engine's statistics every ``every`` seconds (a run waiting on
its source, with no event to hook, is still seen) and writes them; the recording's
snapshot is taken in a hook, on the scheduler's thread that owns the recorder's
state, and encoded and written by the writer, so the run never waits for the disk.

Two tables hold it, made by the first writer (``CREATE TABLE IF NOT EXISTS``), apart
from the store's versioned schema, which knows nothing of them:

    run_snapshots    (run_id, at, data)      one JSON snapshot per row; a rolling
                                             window of ``keep_seconds`` per run
    run_recordings   (run_id, at, final, data)  the latest recording, gzipped JSON
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from conveyor.core.events import Key, RunInfo
from conveyor.errors import StoreError
from conveyor.observe.recorder import DETAIL_UNITS, Recorder
from conveyor.observe.recording import Recording
from conveyor.store._store import RunStore

__all__ = ["SnapshotRecorder", "latest_recording", "read_snapshots"]

ENCODE_SHARE = 20  # the recording's writes while a run goes on: at most 1/20 of its time

TABLES = (
    """
    CREATE TABLE IF NOT EXISTS run_snapshots (
        run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        at     REAL NOT NULL,
        data   TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS run_snapshots_run ON run_snapshots (run_id, at)",
    """
    CREATE TABLE IF NOT EXISTS run_recordings (
        run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
        at     REAL NOT NULL,
        final  INTEGER NOT NULL,
        data   BLOB NOT NULL
    )
    """,
)


class SnapshotRecorder(Recorder):
    """A :class:`~conveyor.Recorder` that also writes the run's live state and its
    recording into ``store`` (see the module docstring).

    Args:
        store: a RunStore, or a path to one (default: as :class:`RunStore`).
        every: seconds between two snapshots of the stages' counters.
        recording_every: seconds between two writes of the recording while the run
            goes on (it is written once more when the run ends); longer when encoding
            it would take more than a twentieth of that (a recording that keeps every
            unit's detail): twenty times the last encoding's time.
        keep_seconds: snapshots older than this (behind the run's latest) are
            deleted as new ones come: a service that runs for days keeps a window.
        detail: units of per-unit detail the recording keeps (as :class:`Recorder`).

    The run's row must be in the store (a :class:`StoreRecorder` in the same run
    writes it): snapshots of a run the store does not hold are dropped. A write that
    fails stops the writing (``error`` holds it); the run goes on.
    """

    def __init__(
        self,
        store: RunStore | str | None = None,
        *,
        every: float = 0.5,
        recording_every: float = 5.0,
        keep_seconds: float = 600.0,
        detail: int = DETAIL_UNITS,
    ) -> None:
        super().__init__(detail=detail)
        if not every > 0 or not recording_every > 0 or not keep_seconds > 0:
            raise ValueError(
                f"every={every!r}, recording_every={recording_every!r}, "
                f"keep_seconds={keep_seconds!r}: give positive numbers of seconds"
            )
        self.store = store if isinstance(store, RunStore) else RunStore(store)
        self.every_ns = int(every * 1e9)
        self.recording_every_ns = int(recording_every * 1e9)
        # Widened while the run goes on so that encoding the recording (large with
        # detail=every unit) takes at most 1/ENCODE_SHARE of the time between writes.
        self._s_rec_gap_ns = self.recording_every_ns
        self._s_encoding = False  # the writer holds a recording it has not written yet
        self.keep_seconds = keep_seconds
        self.error: StoreError | None = None
        self.snapshots_written = 0
        self._s_run_id: str | None = None
        self._s_ctl: Any = None
        self._s_next_ns = 0
        self._s_next_rec_ns = 0
        self._s_cond = threading.Condition()
        self._s_rows: list[tuple[float, dict[str, Any]]] = []
        self._s_rec: tuple[Recording, bool] | None = None
        self._s_closing = False
        self._s_writer: threading.Thread | None = None

    # --- hooks (the scheduler's thread) -------------------------------------------

    def run_started(self, run: RunInfo) -> None:
        super().run_started(run)
        if run.control is None:
            return  # nothing to read the counters from: a recorder only
        self._s_run_id, self._s_ctl = run.run_id, run.control
        self._s_next_ns = time.monotonic_ns() + self.every_ns  # the writer's clock
        self._s_next_rec_ns = run.started_ns + self.recording_every_ns
        self._s_rec_gap_ns = self.recording_every_ns
        self._s_encoding = False
        self._s_closing = False
        self._s_writer = threading.Thread(
            target=self._write_loop, args=(run.run_id,), name="conveyor-snapshot-writer",
            daemon=True,
        )  # fmt: skip
        self._s_writer.start()

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
        super().task_finished(stage, task, worker, keys, starts_ns, ends_ns, error)
        if ends_ns and ends_ns[-1] >= self._s_next_rec_ns and not self._s_encoding:
            # (the recorder's state is ours to read; none while one is being encoded)
            self._s_next_rec_ns = ends_ns[-1] + self._s_rec_gap_ns
            rec = self.snapshot()
            with self._s_cond:
                self._s_rec = (rec, False)
                self._s_encoding = True
                self._s_cond.notify_all()

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        super().run_finished(state, error, t_ns)
        if self._s_writer is None:
            return
        with self._s_cond:
            self._s_rows.append(self._take(state))
            self._s_rec = (self.recording, True)
            self._s_closing = True
            self._s_cond.notify_all()
        self._s_writer.join()
        self._s_writer = None
        self._s_ctl = None

    def _take(self, state: str) -> tuple[float, dict[str, Any]]:
        """The engine's counters now: read from the writer's thread while the run goes
        on, as a progress display reads them (each count is whole; counts of
        different stages may be a task apart), and from the scheduler's at the end."""
        stats = self._s_ctl.statistics()
        data = {
            "t": stats.elapsed_seconds,
            "state": state,
            "read": stats.items_read,
            "emitted": stats.items_emitted,
            "stages": [
                {
                    "name": s.name,
                    "in": s.items_in,
                    "out": s.items_out,
                    "errors": s.errors,
                    "dead": s.dead_lettered,
                    "depth": s.queue.depth,
                    "bound": s.queue.bound,
                    "busy": s.busy_workers,
                    "workers": s.workers,
                    "busy_s": s.busy_seconds,
                }
                for s in stats.stages.values()
            ],
        }
        return time.time(), data

    # --- the writer thread --------------------------------------------------------

    def _write_loop(self, run_id: str) -> None:
        made = False
        while True:
            with self._s_cond:
                if not self._s_rows and self._s_rec is None and not self._s_closing:
                    self._s_cond.wait(max(0.0, (self._s_next_ns - time.monotonic_ns()) / 1e9))
                if not self._s_closing and time.monotonic_ns() >= self._s_next_ns:
                    self._s_next_ns = time.monotonic_ns() + self.every_ns
                    self._s_rows.append(self._take("running"))
                rows, self._s_rows = self._s_rows, []
                rec, self._s_rec = self._s_rec, None
                closing = self._s_closing
            if self.error is None and (rows or rec is not None):
                blob = None
                if rec is not None:
                    took = time.perf_counter()
                    blob = (rec[0].to_bytes(), rec[1])
                    took = time.perf_counter() - took
                    gap = max(self.recording_every_ns, int(took * ENCODE_SHARE * 1e9))
                    self._s_rec_gap_ns = gap
                    self._s_next_rec_ns = max(self._s_next_rec_ns, time.monotonic_ns() + gap)
                    self._s_encoding = False
                try:
                    if not made:
                        self.store._write(_make_tables)
                        made = True
                    self.store._write(partial(self._insert, run_id=run_id, rows=rows, blob=blob))
                    self.snapshots_written += len(rows)
                except StoreError as exc:
                    self.error = exc
                except Exception as exc:  # never die silently
                    self.error = StoreError(f"the snapshot writer failed: {exc!r}")
            if closing:
                with self._s_cond:
                    if not self._s_rows and self._s_rec is None:
                        return

    def _insert(
        self,
        c: sqlite3.Connection,
        *,
        run_id: str,
        rows: list[tuple[float, dict[str, Any]]],
        blob: tuple[bytes, bool] | None,
    ) -> None:
        if c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            return  # a run the store does not hold (its StoreRecorder failed): nothing
        c.executemany(
            "INSERT INTO run_snapshots (run_id, at, data) VALUES (?, ?, ?)",
            [(run_id, at, json.dumps(d, separators=(",", ":"))) for at, d in rows],
        )
        if rows:
            c.execute(
                "DELETE FROM run_snapshots WHERE run_id = ? AND at < ?",
                (run_id, rows[-1][0] - self.keep_seconds),
            )
        if blob is not None:
            c.execute(
                "INSERT OR REPLACE INTO run_recordings (run_id, at, final, data) "
                "VALUES (?, ?, ?, ?)",
                (run_id, time.time(), int(blob[1]), blob[0]),
            )


def _make_tables(c: sqlite3.Connection) -> None:
    for sql in TABLES:
        c.execute(sql)


def _has_table(c: sqlite3.Connection, name: str) -> bool:
    row = c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def read_snapshots(
    store: RunStore, run_id: str, *, after: float | None = None, limit: int = 600
) -> list[tuple[float, dict[str, Any]]]:
    """Run ``run_id``'s stage snapshots as ``(unix time, data)``, oldest first: the
    latest ``limit``, or those written after ``after``."""

    def read(c: sqlite3.Connection) -> list[tuple[float, dict[str, Any]]]:
        if not _has_table(c, "run_snapshots"):
            return []
        rows = c.execute(
            "SELECT at, data FROM run_snapshots WHERE run_id = ? AND at > ? "
            "ORDER BY at DESC LIMIT ?",
            (run_id, -1.0 if after is None else after, limit),
        ).fetchall()
        return [(at, json.loads(data)) for at, data in reversed(rows)]

    return store._read(read)


def latest_recording(store: RunStore, run_id: str) -> tuple[Recording, bool] | None:
    """Run ``run_id``'s latest stored recording and whether it is final, or None."""

    def read(c: sqlite3.Connection) -> tuple[bytes, int] | None:
        if not _has_table(c, "run_recordings"):
            return None
        row = c.execute(
            "SELECT data, final FROM run_recordings WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    found = store._read(read)
    if found is None:
        return None
    return Recording.from_bytes(found[0], where=f"the recording of run {run_id}"), bool(found[1])
