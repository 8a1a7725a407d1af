"""The run store's reads: runs by id prefix, stage statistics, outcomes, ledger.

Each function runs one query (or a few, in one read) on the connection that
:class:`~conveyor.store.RunStore` hands it, and returns plain rows or records;
turning "not found" into an error that names the store is left to the caller.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from conveyor.store._records import RUN_COLUMNS, ItemOutcome, RunRecord, StageRecord, run_record


def latest_runs(c: sqlite3.Connection, limit: int) -> list[RunRecord]:
    rows = c.execute(
        f"SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)
    ).fetchall()
    return [run_record(r) for r in rows]


def runs_by_prefix(c: sqlite3.Connection, prefix: str) -> list[RunRecord]:
    """The run with id ``prefix``, else up to 11 runs whose id starts with it."""
    exact = c.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (prefix,)).fetchone()
    if exact is not None:
        return [run_record(exact)]
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = c.execute(
        f"SELECT {RUN_COLUMNS} FROM runs WHERE id LIKE ? ESCAPE '\\' "
        "ORDER BY created_at DESC LIMIT 11",
        (pattern,),
    ).fetchall()
    return [run_record(r) for r in rows]


def stage_records(c: sqlite3.Connection, run_id: str) -> list[StageRecord]:
    rows = c.execute(
        "SELECT stage, position, kind, executor, workers, items_in, items_out, errors, "
        "tasks, busy_seconds, queue_bound, queue_peak FROM stage_statistics "
        "WHERE run_id = ? ORDER BY position",
        (run_id,),
    ).fetchall()
    return [StageRecord(*r) for r in rows]


def root_counts(c: sqlite3.Connection, run_id: str) -> tuple[Any, dict[str, int]]:
    """(the run's ``(items_read,)`` row or None, {terminal state: source items})."""
    read = c.execute("SELECT items_read FROM runs WHERE id = ?", (run_id,)).fetchone()
    states = c.execute(
        "SELECT state, sum(last - first + 1) FROM roots WHERE run_id = ? GROUP BY state",
        (run_id,),
    ).fetchall()
    return read, dict(states)


def root_ranges(
    c: sqlite3.Connection, run_id: str, state: str | None
) -> list[tuple[int, int, str]]:
    """``(first, last, state)`` in source order, adjacent ranges of one state joined."""
    where, args = "WHERE run_id = ?", [run_id]
    if state is not None:
        where += " AND state = ?"
        args.append(state)
    rows = c.execute(
        f"SELECT first, last, state FROM roots {where} ORDER BY first, last", args
    ).fetchall()
    merged: list[tuple[int, int, str]] = []
    for first, last, st in rows:
        if merged and merged[-1][2] == st and merged[-1][1] + 1 == first:
            merged[-1] = (merged[-1][0], last, st)
        else:
            merged.append((first, last, st))
    return merged


def dead_letter_rows(c: sqlite3.Connection, run_id: str) -> list[tuple[Any, ...]]:
    return c.execute(
        "SELECT stage, item_key, value, value_repr, error_type, error, traceback, at, "
        "redriven_by FROM dead_letters WHERE run_id = ? ORDER BY at, rowid",
        (run_id,),
    ).fetchall()


def item_outcomes(
    c: sqlite3.Connection, run_id: str, stage: str | None, outcome: str | None
) -> list[ItemOutcome]:
    """Outcome rows and ranges expanded to one ItemOutcome per item, by time (an item
    stored in a range has the time of the range's last)."""
    where = "WHERE run_id = ?"
    args: list[str] = [run_id]
    if stage is not None:
        where += " AND stage = ?"
        args.append(stage)
    if outcome is not None:
        where += " AND outcome = ?"
        args.append(outcome)
    rows = c.execute(
        "SELECT stage, item_key, outcome, attempt, error, traceback, at "
        f"FROM item_outcomes {where} ORDER BY rowid",
        args,
    ).fetchall()
    ranges = []
    if outcome in (None, "done", "cached"):
        ranges = c.execute(
            f"SELECT stage, first, last, outcome, at FROM item_ranges {where} ORDER BY rowid",
            args,
        ).fetchall()
    found = [ItemOutcome(*r) for r in rows]
    for stage_name, first, last, kind, at in ranges:
        found.extend(
            ItemOutcome(stage_name, str(i), kind, None, None, None, at)
            for i in range(first, last + 1)
        )
    found.sort(key=lambda o: o.at)  # stable: rows keep their order within one time
    return found


def outcome_counts(c: sqlite3.Connection, run_id: str) -> dict[str, dict[str, int]]:
    """``{stage: {outcome: count}}``, rows and ranges together."""
    rows = c.execute(
        "SELECT stage, outcome, count(*) FROM item_outcomes WHERE run_id = ? "
        "GROUP BY stage, outcome UNION ALL "
        "SELECT stage, outcome, sum(last - first + 1) FROM item_ranges WHERE run_id = ? "
        "GROUP BY stage, outcome",
        (run_id, run_id),
    ).fetchall()
    counts: dict[str, dict[str, int]] = {}
    for stage, outcome, n in rows:
        per_stage = counts.setdefault(stage, {})
        per_stage[outcome] = per_stage.get(outcome, 0) + n
    return counts
