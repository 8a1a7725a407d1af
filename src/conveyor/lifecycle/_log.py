"""LifecycleLog: the lifecycle's decisions, rollouts and traffic in the run store.

::

    log = LifecycleLog()                       # the run store's file, as ModelRegistry
    alarm = log.record("digits", "drift_alarm", version=1, summary="...", evidence={...})
    log.events("digits")                       # every decision, oldest first
    log.lineage(event_id)                      # the chain of causes, the root first

One connection per object, used under a lock; the tables are described in
:mod:`conveyor.lifecycle._tables`. Everything written is also what the dashboard and
``conveyor deployments`` read.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from conveyor.errors import LifecycleError
from conveyor.lifecycle import _tables
from conveyor.lifecycle._arms import ArmStats
from conveyor.lifecycle._records import (
    ENDED,
    EVENT_COLUMNS,
    ROLLOUT_COLUMNS,
    RUNNING,
    LifecycleEvent,
    Rollout,
    TrafficWindow,
    event_from_row,
    jsonable,
    rollout_from_row,
)


class LifecycleLog:
    """The lifecycle's records in one run store (default: the one ``conveyor runs`` reads)."""

    def __init__(self, path: str | Path | None = None) -> None:
        from conveyor.store import _db, default_store_path

        self.path = Path(path) if path is not None else default_store_path()
        self._db = _db
        self._conn = _db.connect(self.path, create=True)
        self._lock = threading.Lock()
        if not _db.read(self._conn, _tables.has_tables, path=self.path):
            self._write(_tables.create_tables)

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return self._db.read(self._conn, fn, path=self.path)

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return self._db.write(self._conn, fn, path=self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LifecycleLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the decision log -----------------------------------------------------------------

    def record(
        self,
        name: str,
        kind: str,
        *,
        version: int | None = None,
        passed: bool | None = None,
        summary: str = "",
        evidence: dict[str, Any] | None = None,
        parent: int | None = None,
        rollout: int | None = None,
        run_id: str | None = None,
    ) -> LifecycleEvent:
        """Write one event and return it (with its id, for the events it causes)."""
        _check_name(name)
        try:
            text = json.dumps(evidence or {}, sort_keys=True, default=jsonable)
        except (TypeError, ValueError) as exc:
            raise LifecycleError(f"the evidence of a {kind} event is not JSON: {exc}") from None
        at = time.time()
        flag = None if passed is None else int(bool(passed))

        def insert(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "INSERT INTO lifecycle_events (at, name, kind, version, passed, summary, "
                "evidence, parent, rollout, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, name, kind, version, flag, summary, text, parent, rollout, run_id),
            )
            return int(cur.lastrowid or 0)

        id_ = self._write(insert)
        return LifecycleEvent(
            id_, at, name, kind, version, passed, summary, json.loads(text), parent, rollout, run_id
        )

    def events(
        self,
        name: str | None = None,
        *,
        kinds: Iterable[str] | None = None,
        after: int = 0,
        limit: int | None = None,
    ) -> list[LifecycleEvent]:
        """Events (of ``name``, of these ``kinds``, with ids above ``after``), oldest first."""
        where, args = ["id > ?"], [after]
        if name is not None:
            where.append("name = ?")
            args.append(name)  # type: ignore[arg-type]
        if kinds is not None:
            kinds = list(kinds)
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)  # type: ignore[arg-type]
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM lifecycle_events WHERE {' AND '.join(where)} ORDER BY id"
        )
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT {int(limit)}) ORDER BY id"

        def query(c: sqlite3.Connection) -> list[LifecycleEvent]:
            return [event_from_row(row) for row in c.execute(sql, args)]

        result: list[LifecycleEvent] = self._read(query)
        return result

    def event(self, id_: int) -> LifecycleEvent:
        def query(c: sqlite3.Connection) -> Any:
            return c.execute(
                f"SELECT {EVENT_COLUMNS} FROM lifecycle_events WHERE id = ?", (id_,)
            ).fetchone()

        row = self._read(query)
        if row is None:
            raise LifecycleError(f"no lifecycle event {id_}; list them with conveyor deployments")
        return event_from_row(row)

    def lineage(self, id_: int) -> list[LifecycleEvent]:
        """Event ``id_`` and every event that caused it, the root cause first."""
        chain, seen = [], set()
        current: int | None = id_
        while current is not None and current not in seen:
            seen.add(current)
            event = self.event(current)
            chain.append(event)
            current = event.parent
        return chain[::-1]

    def descendants(self, id_: int) -> list[LifecycleEvent]:
        """Every event caused, directly or not, by event ``id_`` (oldest first)."""

        def query(c: sqlite3.Connection) -> list[LifecycleEvent]:
            rows = c.execute(
                f"WITH RECURSIVE below(id) AS (SELECT id FROM lifecycle_events WHERE parent = ? "
                "UNION SELECT e.id FROM lifecycle_events e JOIN below b ON e.parent = b.id) "
                f"SELECT {EVENT_COLUMNS} FROM lifecycle_events WHERE id IN below ORDER BY id",
                (id_,),
            )
            return [event_from_row(row) for row in rows]

        result: list[LifecycleEvent] = self._read(query)
        return result

    # --- rollouts -----------------------------------------------------------------------

    def start_rollout(
        self,
        name: str,
        alias: str,
        *,
        mode: str,
        champion: int | None,
        candidate: int,
        share: float,
        policy: dict[str, Any] | None = None,
        parent: int | None = None,
    ) -> Rollout:
        """Begin a rollout of ``candidate`` on ``name@alias``; a server serving that alias
        picks it up within its ``watch`` seconds. Only one runs per alias at a time."""
        _check_name(name)
        if mode not in ("shadow", "canary", "watch"):
            raise LifecycleError(f"rollout mode {mode!r}: use 'shadow', 'canary' or 'watch'")
        if not 0.0 <= share <= 1.0:
            raise LifecycleError(f"share={share!r}: give a fraction of traffic in [0, 1]")
        now = time.time()

        def insert(c: sqlite3.Connection) -> int:
            running = c.execute(
                "SELECT id, mode, candidate FROM rollouts WHERE name = ? AND alias = ? "
                "AND state = ?",
                (name, alias, RUNNING),
            ).fetchone()
            if running is not None:
                raise LifecycleError(
                    f"{name}@{alias} already has a {running[1]} of version {running[2]} "
                    f"running (rollout {running[0]}); wait for it, or stop it with "
                    f"conveyor rollback {name}"
                )
            cur = c.execute(
                f"INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES "
                "(NULL, ?, ?, ?, ?, ?, ?, 0, ?, '', ?, ?, ?, NULL, ?)",
                (
                    name,
                    alias,
                    mode,
                    champion,
                    candidate,
                    share,
                    RUNNING,
                    json.dumps(policy or {}, default=jsonable),
                    now,
                    now,
                    parent,
                ),
            )
            return int(cur.lastrowid or 0)

        return self.rollout(self._write(insert))

    def rollout(self, id_: int) -> Rollout:
        def query(c: sqlite3.Connection) -> Any:
            return c.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?", (id_,)
            ).fetchone()

        row = self._read(query)
        if row is None:
            raise LifecycleError(f"no rollout {id_}; list them with conveyor deployments")
        return rollout_from_row(row)

    def active_rollout(self, name: str, alias: str) -> Rollout | None:
        """The rollout running on ``name@alias`` now, if any."""

        def query(c: sqlite3.Connection) -> Any:
            return c.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE name = ? AND alias = ? "
                "AND state = ? ORDER BY id DESC LIMIT 1",
                (name, alias, RUNNING),
            ).fetchone()

        row = self._read(query)
        return None if row is None else rollout_from_row(row)

    def rollouts(self, name: str | None = None, *, limit: int = 100) -> list[Rollout]:
        """Rollouts (of ``name``), newest first."""

        def query(c: sqlite3.Connection) -> list[Rollout]:
            where = "WHERE name = ?" if name is not None else ""
            args = (name,) if name is not None else ()
            return [
                rollout_from_row(row)
                for row in c.execute(
                    f"SELECT {ROLLOUT_COLUMNS} FROM rollouts {where} ORDER BY id DESC "
                    f"LIMIT {int(limit)}",
                    args,
                )
            ]

        result: list[Rollout] = self._read(query)
        return result

    def set_share(self, id_: int, share: float, *, step: int) -> Rollout:
        """Move a running rollout to ``step`` with the candidate's ``share`` of traffic."""
        if not 0.0 <= share <= 1.0:
            raise LifecycleError(f"share={share!r}: give a fraction of traffic in [0, 1]")

        def update(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE rollouts SET share = ?, step = ?, updated_at = ? WHERE id = ? "
                "AND state = ?",
                (share, step, time.time(), id_, RUNNING),
            )

        self._write(update)
        return self.rollout(id_)

    def finish_rollout(self, id_: int, state: str, reason: str) -> Rollout:
        """End a rollout: ``promoted``, ``rolled_back``, ``passed`` or ``stopped``. The
        server stops sending the candidate traffic within its ``watch`` seconds."""
        if state not in ENDED:
            raise LifecycleError(f"state {state!r}: end a rollout as one of {', '.join(ENDED)}")

        def update(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE rollouts SET state = ?, reason = ?, share = 0, updated_at = ? "
                "WHERE id = ? AND state = ?",
                (state, reason, time.time(), id_, RUNNING),
            )

        self._write(update)
        return self.rollout(id_)

    def mark_served(self, id_: int) -> None:
        """A server has the rollout's candidate loaded and warm (first time only)."""

        def update(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE rollouts SET served_at = ? WHERE id = ? AND served_at IS NULL",
                (time.time(), id_),
            )

        self._write(update)

    # --- traffic ------------------------------------------------------------------------

    def write_traffic(
        self,
        rollout: int,
        step: int,
        arm: str,
        *,
        version: int | None,
        share: float,
        stats: ArmStats,
        first_at: float,
        replica: str = "",
    ) -> None:
        """Store one replica's cumulative counts of an arm at one step (replacing its
        last write; other replicas' rows stay beside it)."""
        text = json.dumps(stats.to_dict())

        def upsert(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO traffic (rollout, step, arm, replica, version, share, first_at, "
                "last_at, stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                "(rollout, step, arm, replica) DO UPDATE SET stats = excluded.stats, "
                "last_at = excluded.last_at",
                (rollout, step, arm, replica, version, share, first_at, time.time(), text),
            )

        self._write(upsert)

    def traffic(self, rollout: int) -> list[TrafficWindow]:
        """What each arm served at each step of ``rollout``, summed over the servers
        (by step, then arm)."""

        def query(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return list(
                c.execute(
                    "SELECT step, arm, version, share, first_at, last_at, stats FROM traffic "
                    "WHERE rollout = ? ORDER BY step, arm",
                    (rollout,),
                )
            )

        merged: dict[tuple[int, str], TrafficWindow] = {}
        for step, arm, version, share, first, last, text in self._read(query):
            stats = ArmStats.from_dict(json.loads(text))
            seen = merged.get((step, arm))
            if seen is not None:
                stats = seen.stats.merge(stats)
                first, last = min(first, seen.first_at), max(last, seen.last_at)
            merged[step, arm] = TrafficWindow(
                rollout, step, arm, version, share, first, last, stats
            )
        return list(merged.values())

    def window(self, rollout: int, step: int, arm: str) -> ArmStats:
        """An arm's counts at one step, summed over the servers (empty: none yet)."""
        for w in self.traffic(rollout):
            if w.step == step and w.arm == arm:
                return w.stats
        return ArmStats()

    # --- drift references and labeled requests -------------------------------------------

    def save_reference(self, name: str, version: int, reference: bytes) -> None:
        """Keep a version's drift reference (``Reference.to_bytes()``) with it."""

        def upsert(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR REPLACE INTO drift_references VALUES (?, ?, ?, ?)",
                (name, version, reference, time.time()),
            )

        self._write(upsert)

    def reference(self, name: str, version: int) -> bytes | None:
        def query(c: sqlite3.Connection) -> Any:
            return c.execute(
                "SELECT reference FROM drift_references WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()

        row = self._read(query)
        return None if row is None else bytes(row[0])

    def add_labeled(self, rows: list[tuple[Any, ...]]) -> None:
        """Store served requests joined with their labels: (name, version, request_id,
        served_at, labeled_at, request, answer, label, correct) each, JSON for values."""

        def insert(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO labeled_requests (name, version, request_id, served_at, "
                "labeled_at, request, answer, label, correct) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        if rows:
            self._write(insert)

    def labeled(
        self, name: str, *, since: float = 0.0, until: float | None = None
    ) -> list[tuple[Any, Any, int | None]]:
        """(request, label, version) of the requests to ``name`` served in
        [``since``, ``until``) whose labels arrived, oldest first."""

        def query(c: sqlite3.Connection) -> list[tuple[Any, Any, int | None]]:
            rows = c.execute(
                "SELECT request, label, version FROM labeled_requests WHERE name = ? AND "
                "served_at >= ? AND served_at < ? ORDER BY served_at",
                (name, since, until if until is not None else float("inf")),
            )
            return [(json.loads(r), json.loads(label), v) for r, label, v in rows]

        result: list[tuple[Any, Any, int | None]] = self._read(query)
        return result

    def live_performance(self, name: str, *, since: float = 0.0) -> dict[int, tuple[int, int]]:
        """Per served version: (labeled requests, of those answered right) since ``since``."""

        def query(c: sqlite3.Connection) -> dict[int, tuple[int, int]]:
            rows = c.execute(
                "SELECT version, count(*), sum(correct) FROM labeled_requests WHERE name = ? "
                "AND served_at >= ? AND correct IS NOT NULL GROUP BY version",
                (name, since),
            )
            return {int(v): (int(n), int(k or 0)) for v, n, k in rows if v is not None}

        result: dict[int, tuple[int, int]] = self._read(query)
        return result

    def __repr__(self) -> str:
        return f"LifecycleLog({str(self.path)!r})"


def _check_name(name: str) -> None:
    """A model's name as the registry allows it (so the dashboard's links reach it)."""
    from conveyor.errors import ModelError
    from conveyor.models._records import check_name

    try:
        check_name(name, "model name")
    except ModelError as exc:
        raise LifecycleError(str(exc)) from None
