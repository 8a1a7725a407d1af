"""The registry's pages, as plain data: the models, and one model's versions and the
history of its aliases, read from the registry's tables in the run store (a store the
registry never opened has none of them: no models)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from typing import Any

from conveyor.store import RunStore

__all__ = ["model_view", "models_view"]

MOVES_SHOWN = 200  # a model's page: its latest alias moves


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _has_registry(c: sqlite3.Connection) -> bool:
    row = c.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alias_moves'"
    ).fetchone()
    return bool(row[0])


def _aliases(c: sqlite3.Connection, name: str | None = None) -> dict[str, dict[str, int]]:
    sql = "SELECT name, alias, version FROM model_aliases"
    rows = (
        c.execute(sql + " WHERE name = ? ORDER BY alias", (name,))
        if name
        else c.execute(sql + " ORDER BY name, alias")
    )
    out: dict[str, dict[str, int]] = {}
    for n, alias, version in rows:
        out.setdefault(n, {})[alias] = version
    return out


def models_view(store: RunStore) -> dict[str, Any]:
    """Every model: its latest version, how many, when, and where its aliases point."""

    def read(c: sqlite3.Connection) -> list[dict[str, Any]]:
        if not _has_registry(c):
            return []
        aliases = _aliases(c)
        rows = c.execute(
            "SELECT name, max(version), count(*), max(created_at) FROM model_versions "
            "GROUP BY name ORDER BY max(created_at) DESC"
        ).fetchall()
        return [
            {
                "name": name,
                "latest": latest,
                "versions": count,
                "updated": _when(updated),
                "aliases": aliases.get(name, {}),
            }
            for name, latest, count, updated in rows
        ]

    return {"models": store._read(read)}


def model_view(store: RunStore, name: str) -> dict[str, Any] | None:
    """One model's versions (newest first, with metrics, the run that made each and
    the aliases on it) and its latest alias moves; None when there is no such model."""

    def read(c: sqlite3.Connection) -> dict[str, Any] | None:
        if not _has_registry(c):
            return None
        rows = c.execute(
            "SELECT version, format, size, metrics, run_id, created_at, created_by, "
            "description FROM model_versions WHERE name = ? ORDER BY version DESC",
            (name,),
        ).fetchall()
        if not rows:
            return None
        aliases = _aliases(c, name).get(name, {})
        on: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            on.setdefault(version, []).append(alias)
        versions = [
            {
                "version": v,
                "format": fmt,
                "size": size,
                "metrics": json.loads(metrics),
                "run_id": run_id,
                "created": _when(created),
                "by": by,
                "description": description,
                "aliases": on.get(v, []),
            }
            for v, fmt, size, metrics, run_id, created, by, description in rows
        ]
        moves = [
            {"alias": a, "from": f, "to": t, "at": _when(at), "by": by, "reason": reason}
            for a, f, t, at, by, reason in c.execute(
                "SELECT alias, from_version, to_version, moved_at, moved_by, reason "
                "FROM alias_moves WHERE name = ? ORDER BY id DESC LIMIT ?",
                (name, MOVES_SHOWN),
            )
        ]
        return {"name": name, "versions": versions, "aliases": aliases, "moves": moves}

    return store._read(read)
