"""Runs found by pipeline, state and date, a page at a time (the dashboard's runs page).

::

    page = find_runs(store, pipeline="etl", state="failed", since=time.time() - 86400)
    page.total, [r.id for r in page.runs]      # every match counted, 50 shown

Each query is one indexed read, whatever the number of runs: the page is cut by
SQLite (``ORDER BY created_at DESC LIMIT``), and duration and throughput are
computed in the query, so a store of 10,000 runs answers in a few milliseconds.
"""

from __future__ import annotations

import dataclasses
import sqlite3

from conveyor.store._records import DeadLetter
from conveyor.store._store import RunStore

__all__ = ["RunPage", "RunRow", "dead_letter_page", "find_runs", "pipeline_names"]

RUN_STATES = ("pending", "running", "succeeded", "failed", "cancelled")


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One run as the runs page shows it; times are Unix seconds."""

    id: str
    pipeline: str
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    items_read: int | None
    items_emitted: int | None
    error: str | None

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    @property
    def throughput(self) -> float | None:
        """Items read per second of the run (None while it goes on)."""
        s = self.seconds
        if not s or self.items_read is None:
            return None
        return self.items_read / s


@dataclasses.dataclass(frozen=True)
class RunPage:
    runs: tuple[RunRow, ...]
    total: int  # runs matching the filter, on every page
    offset: int
    limit: int


def find_runs(
    store: RunStore,
    *,
    pipeline: str | None = None,
    state: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 50,
    offset: int = 0,
) -> RunPage:
    """The runs that match, newest first, ``limit`` from ``offset``; ``since`` and
    ``until`` bound when they were created (Unix seconds). ValueError for a state
    that is not one of pending, running, succeeded, failed, cancelled."""
    if state is not None and state not in RUN_STATES:
        raise ValueError(f"state {state!r}: give one of {', '.join(RUN_STATES)}")
    limit, offset = max(1, min(int(limit), 500)), max(0, int(offset))
    where, args = [], []
    for clause, value in (
        ("pipeline = ?", pipeline),
        ("state = ?", state),
        ("created_at >= ?", since),
        ("created_at < ?", until),
    ):
        if value is not None:
            where.append(clause)
            args.append(value)
    cond = f"WHERE {' AND '.join(where)}" if where else ""

    def read(c: sqlite3.Connection) -> RunPage:
        total = c.execute(f"SELECT COUNT(*) FROM runs {cond}", args).fetchone()[0]
        rows = c.execute(
            "SELECT id, pipeline, state, created_at, started_at, finished_at, items_read, "
            f"items_emitted, error FROM runs {cond} ORDER BY created_at DESC, rowid DESC "
            "LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return RunPage(tuple(RunRow(*r) for r in rows), total, offset, limit)

    return store._read(read)


def pipeline_names(store: RunStore) -> list[str]:
    """Every pipeline the store has runs of, by name."""
    return store._read(
        lambda c: [r[0] for r in c.execute("SELECT DISTINCT pipeline FROM runs ORDER BY 1")]
    )


def dead_letter_page(
    store: RunStore, run_id: str, *, limit: int = 100
) -> tuple[list[DeadLetter], int]:
    """Run ``run_id``'s first ``limit`` dead letters (without their pickled values) and
    how many it has: a page of a run with a million of them reads a hundred."""

    def read(c: sqlite3.Connection) -> tuple[list[DeadLetter], int]:
        total = c.execute("SELECT COUNT(*) FROM dead_letters WHERE run_id = ?", (run_id,))
        rows = c.execute(
            "SELECT stage, item_key, NULL, value_repr, error_type, error, traceback, at, "
            "redriven_by FROM dead_letters WHERE run_id = ? ORDER BY rowid LIMIT ?",
            (run_id, limit),
        ).fetchall()
        return [DeadLetter(*r) for r in rows], total.fetchone()[0]

    return store._read(read)
