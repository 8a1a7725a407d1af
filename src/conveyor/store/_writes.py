"""The run store's writes: a run's lifecycle (begin, state moves, finish), its stage
statistics, and batches of item outcomes, root states and dead letters.

Each function runs inside one write transaction that :class:`~conveyor.store.RunStore`
opens (``BEGIN IMMEDIATE``, see :mod:`conveyor.store._db`) and takes its connection.

A run moves through the states below, and :func:`transition` refuses any other move::

    pending ──▶ running ──▶ succeeded | failed | cancelled
       └──────────────────▶ failed | cancelled
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.core.statistics import StageStatistics
from conveyor.errors import RunNotFoundError, StoreError
from conveyor.store._rows import Batch

RUN_STATES = ("pending", "running", "succeeded", "failed", "cancelled")
TERMINAL_RUN_STATES = ("succeeded", "failed", "cancelled")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("running", "failed", "cancelled"),
    "running": TERMINAL_RUN_STATES,
    "succeeded": (),
    "failed": (),
    "cancelled": (),
}
OUTCOMES = ("done", "failed", "skipped", "cached")
ROOT_STATES = ("done", "filtered", "dead_lettered", "pending")


def insert_run(
    c: sqlite3.Connection,
    path: Path,
    run_id: str,
    pipeline: str,
    fingerprint: str | None,
    params_text: str,
    target: str | None,
) -> None:
    """A new run in state ``pending``; StoreError if ``run_id`` is taken."""
    from conveyor import __version__

    if c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
        raise StoreError(
            f"run {run_id} is already in the run store {path}; give each run a new id",
            path=path,
        )
    c.execute(
        "INSERT INTO runs (id, pipeline, fingerprint, params, target, state, "
        "created_at, host, pid, conveyor_version) "
        "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
        (
            run_id, pipeline, fingerprint, params_text, target, time.time(),
            socket.gethostname(), os.getpid(), __version__,
        ),
    )  # fmt: skip


def transition(
    c: sqlite3.Connection, path: Path, run_id: str, state: str, *, error_text: str | None
) -> None:
    """Move run ``run_id`` to ``state``, stamping its start or end time."""
    if state not in RUN_STATES:
        raise StoreError(f"unknown run state {state!r}; one of {', '.join(RUN_STATES)}")
    row = c.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFoundError(
            f"no run {run_id} in the run store {path}; begin_run() first", path=path
        )
    current = row[0]
    if state not in TRANSITIONS[current]:
        allowed = ", ".join(TRANSITIONS[current]) or "none: it has ended"
        raise StoreError(
            f"run {run_id} is {current}; it cannot become {state} (allowed: {allowed})",
            path=path,
        )
    now = time.time()
    if state == "running":
        c.execute("UPDATE runs SET state = ?, started_at = ? WHERE id = ?", (state, now, run_id))
    elif state in TERMINAL_RUN_STATES:
        c.execute(
            "UPDATE runs SET state = ?, finished_at = ?, error = ?, "
            "started_at = coalesce(started_at, ?) WHERE id = ?",
            (state, now, error_text, now, run_id),
        )


def finish(
    c: sqlite3.Connection,
    path: Path,
    run_id: str,
    state: str,
    error_text: str | None,
    items_read: int | None,
    items_emitted: int | None,
) -> None:
    """End run ``run_id`` in a terminal ``state`` with its error and item counts."""
    transition(c, path, run_id, state, error_text=error_text)
    c.execute(
        "UPDATE runs SET items_read = coalesce(?, items_read), "
        "items_emitted = coalesce(?, items_emitted) WHERE id = ?",
        (items_read, items_emitted, run_id),
    )


def stage_statistics_rows(
    run_id: str, stats: Mapping[str, StageStatistics]
) -> list[tuple[Any, ...]]:
    """One stage_statistics row per stage, ``stats`` in topological order."""
    return [
        (
            run_id, name, i, s.kind, s.executor, s.workers, s.items_in, s.items_out,
            s.errors, s.tasks, s.busy_seconds, s.queue.bound, s.queue.peak_depth,
        )
        for i, (name, s) in enumerate(stats.items())
    ]  # fmt: skip


def insert_stage_statistics(c: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    c.executemany(
        "INSERT OR REPLACE INTO stage_statistics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def insert_batch(c: sqlite3.Connection, rows: tuple[list[tuple[Any, ...]], ...]) -> None:
    """Insert a :meth:`Batch.sql_rows` result: ranges, outcomes, roots, dead letters."""
    range_rows, outcome_rows, root_rows, letter_rows = rows
    for run_id, stage, first, last, outcome, at in range_rows:
        first, last = _coalesce(c, "item_ranges", "stage = ? AND outcome = ?", (stage, outcome),
                                run_id, first, last)  # fmt: skip
        c.execute(
            "INSERT INTO item_ranges VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, stage, first, last, outcome, at),
        )
    if outcome_rows:
        c.executemany("INSERT INTO item_outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", outcome_rows)
    for run_id, first, last, state in root_rows:
        first, last = _coalesce(c, "roots", "state = ?", (state,), run_id, first, last)
        c.execute("INSERT INTO roots VALUES (?, ?, ?, ?)", (run_id, first, last, state))
    if letter_rows:
        c.executemany(
            "INSERT INTO dead_letters (run_id, stage, item_key, value, value_repr, error_type, "
            "error, traceback, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            letter_rows,
        )


def _coalesce(
    c: sqlite3.Connection,
    table: str,
    same: str,
    values: tuple[Any, ...],
    run_id: str,
    first: int,
    last: int,
) -> tuple[int, int]:
    """Delete the rows of ``table`` (the same run, and ``same``) whose range ends just
    before ``first`` or starts just after ``last``; return the range that spans them.

    Items finish out of order, so each batch's ranges leave gaps that later batches
    fill: merging on both sides keeps one row per contiguous range, and the store of a
    run that never ends as small as its gaps, instead of a row per batch."""
    where = f"run_id = ? AND {same}"
    before = c.execute(
        f"SELECT rowid, first FROM {table} WHERE {where} AND last = ?",
        (run_id, *values, first - 1),
    ).fetchone()
    after = c.execute(
        f"SELECT rowid, last FROM {table} WHERE {where} AND first = ?",
        (run_id, *values, last + 1),
    ).fetchone()
    for row in (before, after):
        if row is not None:
            c.execute(f"DELETE FROM {table} WHERE rowid = ?", (row[0],))
    return (before[1] if before else first), (after[1] if after else last)


def batch_rows(batch: Batch, run_id: str) -> tuple[list[tuple[Any, ...]], ...] | None:
    """``batch``'s rows, computed outside the transaction; None when it has none."""
    rows = batch.sql_rows(run_id)
    return rows if any(rows) else None
