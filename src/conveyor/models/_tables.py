"""The registry's tables, in the run store's SQLite file, made here (not by the
store's migrations) the first time the registry opens the store.

``model_versions`` holds one row per version of a name; ``model_aliases`` where each
alias points now (one row, moved by one upsert); ``alias_moves`` every move ever made,
who made it, when, from which version, to which, and why.
"""

from __future__ import annotations

import sqlite3

TABLES = (
    """CREATE TABLE IF NOT EXISTS model_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        format TEXT NOT NULL,
        artifact TEXT NOT NULL,
        size INTEGER NOT NULL,
        metrics TEXT NOT NULL,
        run_id TEXT,
        data_fingerprint TEXT,
        code_fingerprint TEXT,
        builder TEXT,
        signature TEXT,
        description TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (name, version)
    )""",
    """CREATE TABLE IF NOT EXISTS model_aliases (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        moved_at REAL NOT NULL,
        PRIMARY KEY (name, alias),
        FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
    )""",
    """CREATE TABLE IF NOT EXISTS alias_moves (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        from_version INTEGER,
        to_version INTEGER NOT NULL,
        moved_at REAL NOT NULL,
        moved_by TEXT NOT NULL,
        reason TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alias_moves_by_name ON alias_moves (name, alias, id)",
)


def create_tables(conn: sqlite3.Connection) -> None:
    """Make the registry's tables if they are not there (inside a write transaction)."""
    for sql in TABLES:
        conn.execute(sql)


def has_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alias_moves'"
    ).fetchone()
    return bool(row[0])
