"""The run store's schema, as a list of migrations.

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``; the version
lives in ``PRAGMA user_version`` (0 for a new, empty file). Opening a store runs
the missing steps in one ``BEGIN IMMEDIATE`` transaction, so two processes that
open an old store at once migrate it once. Never edit a released step: append one.

    v1  runs, stage_statistics, item_outcomes, dead_letters
    v2  roots (each source item's terminal state: the ledger) and item_ranges (done
        and cached outcomes of source items), both as ranges of consecutive items;
        runs.target, runs.items_read, runs.items_emitted; per-stage outcome index
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v0 -> v1: the first released schema.
    (
        """
        CREATE TABLE runs (
            id               TEXT PRIMARY KEY,
            pipeline         TEXT NOT NULL,
            fingerprint      TEXT,
            params           TEXT NOT NULL DEFAULT '{}',
            state            TEXT NOT NULL
                CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
            error            TEXT,
            created_at       REAL NOT NULL,
            started_at       REAL,
            finished_at      REAL,
            host             TEXT NOT NULL,
            pid              INTEGER NOT NULL,
            conveyor_version TEXT NOT NULL
        )
        """,
        "CREATE INDEX runs_created ON runs (created_at)",
        """
        CREATE TABLE stage_statistics (
            run_id       TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            stage        TEXT NOT NULL,
            position     INTEGER NOT NULL,
            kind         TEXT NOT NULL,
            executor     TEXT NOT NULL,
            workers      INTEGER NOT NULL,
            items_in     INTEGER NOT NULL,
            items_out    INTEGER NOT NULL,
            errors       INTEGER NOT NULL,
            tasks        INTEGER NOT NULL,
            busy_seconds REAL NOT NULL,
            queue_bound  INTEGER,
            queue_peak   INTEGER NOT NULL,
            PRIMARY KEY (run_id, stage)
        )
        """,
        """
        CREATE TABLE item_outcomes (
            run_id    TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            stage     TEXT NOT NULL,
            item_key  TEXT NOT NULL,
            outcome   TEXT NOT NULL CHECK (outcome IN ('done', 'failed', 'skipped', 'cached')),
            attempt   INTEGER,
            error     TEXT,
            traceback TEXT,
            at        REAL NOT NULL
        )
        """,
        """
        CREATE TABLE dead_letters (
            run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            stage      TEXT NOT NULL,
            item_key   TEXT NOT NULL,
            value      BLOB,
            value_repr TEXT NOT NULL,
            error_type TEXT NOT NULL,
            error      TEXT NOT NULL,
            traceback  TEXT,
            at         REAL NOT NULL
        )
        """,
        "CREATE INDEX dead_letters_run ON dead_letters (run_id)",
    ),
    # v1 -> v2: the ledger of source items, compact ranges, the run's target and counts.
    (
        # Each source item's terminal state, as ranges of consecutive source positions:
        # a run of 100,000 items that all end "done" is one row, not 100,000.
        """
        CREATE TABLE roots (
            run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            first  INTEGER NOT NULL,
            last   INTEGER NOT NULL,
            state  TEXT NOT NULL
                CHECK (state IN ('done', 'filtered', 'dead_lettered', 'pending')),
            CHECK (first <= last)
        )
        """,
        "CREATE INDEX roots_run ON roots (run_id, first)",
        # Outcomes without an error (done, cached) of source items (keys (i,)), as
        # ranges; item_outcomes keeps failures, skips and keys of derived items.
        """
        CREATE TABLE item_ranges (
            run_id  TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            stage   TEXT NOT NULL,
            first   INTEGER NOT NULL,
            last    INTEGER NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('done', 'cached')),
            at      REAL NOT NULL,
            CHECK (first <= last)
        )
        """,
        "CREATE INDEX item_ranges_run_stage ON item_ranges (run_id, stage)",
        "ALTER TABLE runs ADD COLUMN target TEXT",
        "ALTER TABLE runs ADD COLUMN items_read INTEGER",
        "ALTER TABLE runs ADD COLUMN items_emitted INTEGER",
        "CREATE INDEX item_outcomes_run_stage ON item_outcomes (run_id, stage)",
    ),
    # v2 -> v3: which run re-drove a dead letter (NULL: not re-driven yet).
    ("ALTER TABLE dead_letters ADD COLUMN redriven_by TEXT",),
)

SCHEMA_VERSION = len(MIGRATIONS)
