"""The lifecycle's pages, as plain data: a model's rollouts, the traffic each version
served and its decisions; one decision with its evidence, its causes and its effects.

They read the lifecycle's tables (:mod:`conveyor.lifecycle._tables`) through the run
store's read-only connection, with the lifecycle's own column lists and row readers;
no :class:`~conveyor.lifecycle.LifecycleLog` is opened, since one would make the
tables in a store that has none. Such a store has no deployments, and says so.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from conveyor.dashboard._views import when
from conveyor.lifecycle._arms import ArmStats
from conveyor.lifecycle._records import (
    EVENT_COLUMNS,
    ROLLOUT_COLUMNS,
    RUNNING,
    LifecycleEvent,
    Rollout,
    event_from_row,
    rollout_from_row,
)
from conveyor.lifecycle._tables import has_log
from conveyor.store import RunStore

__all__ = ["deployments_view", "event_view"]

EVENTS_SHOWN = 50  # a model's page: its latest decisions
ROLLOUTS_SHOWN = 20  # its latest rollouts, and their traffic in the chart
DESCENDANTS_SHOWN = 200  # an event's page: the first events it caused
LINEAGE_MAX = 1000  # causes followed back at most (a chain is a few events long)
EVIDENCE_CHARS = 20_000  # one evidence value's text, at most
SERVED_ARMS = ("champion", "candidate")  # "shadow" answers are compared, never served


def _rollout(r: Rollout) -> dict[str, Any]:
    steps = r.policy.get("steps") if isinstance(r.policy, dict) else None
    of = f" of {len(steps)}" if isinstance(steps, list) and r.mode == "canary" else ""
    if r.mode == "canary":
        now = f"v{r.candidate} serves {r.share:.0%} of traffic, step {r.step + 1}{of}"
    elif r.mode == "shadow":
        now = f"{r.share:.0%} of answered batches mirrored to v{r.candidate}"
    else:
        now = f"v{r.candidate} serves all traffic, watched"
    versions = f"v{r.candidate}" if r.champion is None else f"v{r.champion} → v{r.candidate}"
    return {
        "id": r.id,
        "alias": r.alias,
        "mode": r.mode,
        "versions": versions,
        "now": now,
        "state": r.state,
        "reason": r.reason,
        "started": when(r.started_at),
        "updated": when(r.updated_at),
        "served": when(r.served_at) if r.served_at is not None else None,
    }


def _event(e: LifecycleEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "name": e.name,
        "kind": e.kind,
        "version": e.version,
        "passed": {True: "pass", False: "fail", None: "-"}[e.passed],
        "first": e.summary.splitlines()[0] if e.summary else "",
        "at": when(e.at),
    }


def _served(r: Rollout, arms: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The share of ``r``'s requests each arm answered at one step: a canary's as its
    arms' rows say; in a shadow the champion answers all (the shadow's answers are
    compared, never returned), and in a watch the champion, the new one, does."""
    if r.mode != "canary":
        return {"champion": 1.0}
    if "candidate" in arms:
        share = float(arms["candidate"]["share"])
    else:
        share = 1.0 - float(arms["champion"]["share"])
    return {"champion": 1.0 - share, "candidate": share}


def _version(r: Rollout, arm: str, arms: dict[str, dict[str, Any]]) -> int | None:
    """The version an arm served: as its row says, else as the rollout says."""
    version = arms.get(arm, {}).get("version")
    if version is not None:
        return int(version)
    return r.champion if arm == "champion" and r.mode != "watch" else r.candidate


def _traffic(
    rollouts: list[Rollout], rows: list[tuple[Any, ...]]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The traffic table's rows summed over the servers, one per rollout, step and arm
    (newest first), and the chart: per version, its share of traffic over time."""
    by_id = {r.id: r for r in rollouts}
    windows: dict[tuple[int, int, str], dict[str, Any]] = {}
    for rollout, step, arm, version, share, first, last, text in rows:
        stats = ArmStats.from_dict(json.loads(text))
        seen = windows.get((rollout, step, arm))
        if seen is not None:
            stats = seen["stats"].merge(stats)
            first, last = min(first, seen["first"]), max(last, seen["last"])
        windows[rollout, step, arm] = {
            "rollout": rollout,
            "step": step,
            "arm": arm,
            "version": version,
            "share": share,
            "first": first,
            "last": last,
            "stats": stats,
        }
    steps: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for (rollout, step, arm), w in windows.items():
        steps.setdefault((rollout, step), {})[arm] = w
    # segments: each step of a rollout holds from its first count to the next step's
    segments: list[tuple[str, float, float, dict[int | None, float]]] = []
    table: list[dict[str, Any]] = []
    for rollout_id in sorted({k[0] for k in steps}):
        r = by_id[rollout_id]
        keys = sorted(k for k in steps if k[0] == rollout_id)
        starts = [min(w["first"] for w in steps[k].values()) for k in keys]
        end = max(w["last"] for k in keys for w in steps[k].values())
        for i, key in enumerate(keys):
            arms = steps[key]
            served = _served(r, arms) if any(a in arms for a in SERVED_ARMS) else {}
            stop = starts[i + 1] if i + 1 < len(keys) else end
            if served:
                shares: dict[int | None, float] = {}
                for arm, share in served.items():
                    version = _version(r, arm, arms)
                    shares[version] = shares.get(version, 0.0) + share
                segments.append((r.alias, starts[i], max(stop, starts[i]), shares))
            step_rows = []
            for arm, w in sorted(arms.items()):
                step_rows.append(
                    {
                        "rollout": r.id,
                        "alias": r.alias,
                        "mode": r.mode,
                        "step": key[1] + 1,
                        "arm": arm,
                        "version": w["version"],
                        "share": served.get(arm),
                        "mirrored": w["share"] if arm == "shadow" else None,
                        "requests": w["stats"].requests,
                        "errors": w["stats"].errors,
                        "first": when(w["first"]),
                        "last": when(w["last"]),
                    }
                )
            table[:0] = step_rows  # the newest step first, its arms in order
    return table, _chart(segments)


def _chart(segments: list[tuple[str, float, float, dict[int | None, float]]]) -> Any:
    """uPlot's columns: times, then per (alias, version) the share in % at each time
    (None where no rollout of that alias counted: the line breaks there)."""
    if not segments:
        return None
    aliases = sorted({s[0] for s in segments})
    keys = sorted({(s[0], v) for s in segments for v in s[3]}, key=lambda k: (k[0], k[1] or 0))
    xs = sorted({t for s in segments for t in (s[1], s[2], s[2] + 0.001)})
    series = []
    for alias, version in keys:
        mine = [s for s in segments if s[0] == alias]
        values: list[float | None] = []
        for x in xs:
            covering = [s for s in mine if s[1] <= x <= s[2]]
            values.append(round(covering[-1][3].get(version, 0.0) * 100, 2) if covering else None)
        label = f"v{version}" if version is not None else "no version"
        if len(aliases) > 1:
            label += f" @{alias}"
        series.append({"label": label, "values": values})
    return {"x": [round(x, 3) for x in xs], "series": series}


def deployments_view(store: RunStore, name: str) -> dict[str, Any]:
    """A model's rollouts (the running ones, then the latest, newest first), the traffic
    they served and its latest decisions, with how many more there are."""

    def read(c: sqlite3.Connection) -> dict[str, Any]:
        if not has_log(c):
            return {"lifecycle": False, "active": [], "rollouts": [], "events": [], "chart": None}
        count = "SELECT count(*) FROM {} WHERE name = ?"
        events = [
            event_from_row(row)
            for row in c.execute(
                f"SELECT {EVENT_COLUMNS} FROM lifecycle_events WHERE name = ? "
                "ORDER BY id DESC LIMIT ?",
                (name, EVENTS_SHOWN),
            )
        ]
        rollouts = [
            rollout_from_row(row)
            for row in c.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE name = ? ORDER BY id DESC LIMIT ?",
                (name, ROLLOUTS_SHOWN),
            )
        ]
        active = [
            rollout_from_row(row)
            for row in c.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE name = ? AND state = ? "
                "ORDER BY id DESC",
                (name, RUNNING),
            )
        ]
        rows = c.execute(
            "SELECT rollout, step, arm, version, share, first_at, last_at, stats FROM traffic "
            f"WHERE rollout IN ({', '.join('?' * len(rollouts))}) ORDER BY rollout, step, arm",
            [r.id for r in rollouts],
        ).fetchall()
        table, chart = _traffic(rollouts, rows)
        return {
            "lifecycle": True,
            "active": [_rollout(r) for r in active],
            "rollouts": [_rollout(r) for r in rollouts],
            "rollouts_total": c.execute(count.format("rollouts"), (name,)).fetchone()[0],
            "events": [_event(e) for e in events],
            "events_total": c.execute(count.format("lifecycle_events"), (name,)).fetchone()[0],
            "traffic": table,
            "chart": chart,
        }

    result: dict[str, Any] = store._read(read)
    return result


def _pretty(value: Any, depth: int = 0) -> str:
    """JSON as text to read: an object's keys one a line, lists of plain values on one."""
    pad = "  " * (depth + 1)
    if depth < 32 and isinstance(value, dict) and value:
        inner = ",\n".join(
            f"{pad}{json.dumps(k)}: {_pretty(v, depth + 1)}" for k, v in value.items()
        )
        return "{\n" + inner + "\n" + "  " * depth + "}"
    if depth < 32 and isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        inner = ",\n".join(pad + _pretty(v, depth + 1) for v in value)
        return "[\n" + inner + "\n" + "  " * depth + "]"
    return json.dumps(value, ensure_ascii=False)


def _evidence(evidence: Any) -> list[dict[str, Any]]:
    """Each key of the evidence with its value as text: plain values as they are,
    objects and lists as indented JSON (``block``), long ones cut with a note."""
    items = evidence.items() if isinstance(evidence, dict) else [("evidence", evidence)]
    out = []
    for key, value in items:
        block = isinstance(value, (dict, list))
        text = value if isinstance(value, str) else _pretty(value)
        cut = max(0, len(text) - EVIDENCE_CHARS)
        out.append({"key": key, "text": text[:EVIDENCE_CHARS], "block": block, "cut": cut})
    return out


def event_view(store: RunStore, name: str, id_: int) -> dict[str, Any] | None:
    """Event ``id_`` of model ``name``: its fields and evidence, the chain of its causes
    (the root first) and the events it caused (oldest first, with their depth); None
    when there is no such event, or it is another model's."""

    def one(c: sqlite3.Connection, id_: int) -> LifecycleEvent | None:
        row = c.execute(
            f"SELECT {EVENT_COLUMNS} FROM lifecycle_events WHERE id = ?", (id_,)
        ).fetchone()
        return None if row is None else event_from_row(row)

    def read(c: sqlite3.Connection) -> dict[str, Any] | None:
        if not has_log(c):
            return None
        event = one(c, id_)
        if event is None or event.name != name:
            return None
        chain, seen, missing = [event], {event.id}, None
        parent = event.parent
        while parent is not None and parent not in seen and len(chain) < LINEAGE_MAX:
            found = one(c, parent)
            if found is None:
                missing = parent
                break
            chain.append(found)
            seen.add(found.id)
            parent = found.parent
        below = c.execute(
            "WITH RECURSIVE below(id, depth) AS (SELECT id, 1 FROM lifecycle_events WHERE "
            "parent = ? UNION SELECT e.id, b.depth + 1 FROM lifecycle_events e JOIN below b "
            "ON e.parent = b.id WHERE b.depth < ?) SELECT id, min(depth) FROM below "
            "GROUP BY id ORDER BY id",
            (id_, LINEAGE_MAX),
        ).fetchall()
        depth = dict(below[:DESCENDANTS_SHOWN])
        descendants = [
            {**_event(event_from_row(row)), "depth": depth[row[0]], "parent": row[8]}
            for row in c.execute(
                f"SELECT {EVENT_COLUMNS} FROM lifecycle_events WHERE id IN "
                f"({', '.join('?' * len(depth))}) ORDER BY id",
                list(depth),
            )
        ]
        rollout = None
        if event.rollout is not None:
            row = c.execute(
                f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?", (event.rollout,)
            ).fetchone()
            rollout = None if row is None else _rollout(rollout_from_row(row))
        return {
            "event": {
                **_event(event),
                "summary": event.summary,
                "parent": event.parent,
                "rollout": event.rollout,
                "run_id": event.run_id,
            },
            "evidence": _evidence(event.evidence),
            "rollout": rollout,
            "lineage": [_event(e) for e in reversed(chain)],
            "missing_parent": missing,
            "descendants": descendants,
            "descendants_total": len(below),
        }

    result: dict[str, Any] | None = store._read(read)
    return result
