"""The lifecycle's tables, in the run store's SQLite file, made the first time a
:class:`~conveyor.lifecycle.LifecycleLog` opens it (beside the registry's tables).

``lifecycle_events`` is the decision log: every gate verdict, shadow and canary
judgement, traffic step, promotion, rollback, drift check and retraining, each with
its evidence (JSON) and ``parent``, the event that caused it (lineage: a drift alarm →
the retraining release → its gate → its canary → the promotion). ``rollouts`` holds
one row per shadow, canary or post-release watch: which versions, the candidate's
share now and its step, the state; ``rollout_leases`` when its controller last said
it was alive (:mod:`conveyor.lifecycle._lease`). ``traffic`` is what each server (replica)
measured per rollout, step and arm (cumulative counts, rewritten every few
seconds; readers sum the replicas), so which
version served which share of traffic when is on record. ``drift_references`` keeps
a model version's reference statistics; ``labeled_requests`` the served requests
whose labels arrived later (joined by request id), the data a retraining reads.
"""

from __future__ import annotations

import sqlite3

TABLES = (
    """CREATE TABLE IF NOT EXISTS lifecycle_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        version INTEGER,
        passed INTEGER,
        summary TEXT NOT NULL,
        evidence TEXT NOT NULL,
        parent INTEGER,
        rollout INTEGER,
        run_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS lifecycle_events_by_name ON lifecycle_events (name, id)",
    """CREATE TABLE IF NOT EXISTS rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        mode TEXT NOT NULL,
        champion INTEGER,
        candidate INTEGER NOT NULL,
        share REAL NOT NULL,
        step INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        policy TEXT NOT NULL,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        served_at REAL,
        parent INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS rollouts_by_name ON rollouts (name, alias, state)",
    """CREATE TABLE IF NOT EXISTS rollout_leases (
        rollout INTEGER PRIMARY KEY,
        renewed_at REAL NOT NULL,
        seconds REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS traffic (
        rollout INTEGER NOT NULL,
        step INTEGER NOT NULL,
        arm TEXT NOT NULL,
        replica TEXT NOT NULL,
        version INTEGER,
        share REAL NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        stats TEXT NOT NULL,
        PRIMARY KEY (rollout, step, arm, replica)
    )""",
    """CREATE TABLE IF NOT EXISTS drift_references (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        reference BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (name, version)
    )""",
    """CREATE TABLE IF NOT EXISTS labeled_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        version INTEGER,
        request_id TEXT NOT NULL,
        served_at REAL NOT NULL,
        labeled_at REAL NOT NULL,
        request TEXT NOT NULL,
        answer TEXT,
        label TEXT NOT NULL,
        correct INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS labeled_by_time ON labeled_requests (name, served_at)",
)


def create_tables(conn: sqlite3.Connection) -> None:
    """Make the lifecycle's tables if they are not there (inside a write transaction)."""
    for sql in TABLES:
        conn.execute(sql)


def has_tables(conn: sqlite3.Connection) -> bool:
    """Whether every table is there (a store made by an older conveyor may lack the
    newest: ``create_tables`` adds it)."""
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
        "('labeled_requests', 'rollout_leases')"
    ).fetchone()
    return bool(row[0] == 2)


def has_log(conn: sqlite3.Connection) -> bool:
    """Whether the lifecycle ever wrote to this store (its tables of any version)."""
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'labeled_requests'"
    ).fetchone()
    return bool(row[0])
