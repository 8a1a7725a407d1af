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
    if range_rows:
        c.executemany("INSERT INTO item_ranges VALUES (?, ?, ?, ?, ?, ?)", range_rows)
    if outcome_rows:
        c.executemany("INSERT INTO item_outcomes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", outcome_rows)
    if root_rows:
        c.executemany("INSERT INTO roots VALUES (?, ?, ?, ?)", root_rows)
    if letter_rows:
        c.executemany("INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", letter_rows)


def batch_rows(batch: Batch, run_id: str) -> tuple[list[tuple[Any, ...]], ...] | None:
    """``batch``'s rows, computed outside the transaction; None when it has none."""
    rows = batch.sql_rows(run_id)
    return rows if any(rows) else None
