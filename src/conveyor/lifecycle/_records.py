"""What the lifecycle log returns: frozen records of events, rollouts and traffic."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from conveyor.lifecycle._arms import ArmStats

EVENT_COLUMNS = "id, at, name, kind, version, passed, summary, evidence, parent, rollout, run_id"
ROLLOUT_COLUMNS = (
    "id, name, alias, mode, champion, candidate, share, step, state, reason, policy, "
    "started_at, updated_at, served_at, parent"
)
RUNNING = "running"
ENDED = ("promoted", "rolled_back", "passed", "stopped")


@dataclass(frozen=True)
class LifecycleEvent:
    """One decision or happening, with its evidence and the event that caused it."""

    id: int
    at: float
    name: str
    kind: str  # gate, shadow, canary_step, promote, rollback, drift_alarm, ...
    version: int | None
    passed: bool | None
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    parent: int | None = None
    rollout: int | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Rollout:
    """A shadow, a canary or a watch after promotion: the candidate's share of the
    traffic of ``name@alias`` now, at step ``step``, and how it ended."""

    id: int
    name: str
    alias: str
    mode: str  # "shadow", "canary" or "watch"
    champion: int | None
    candidate: int
    share: float
    step: int
    state: str  # "running", then "promoted", "rolled_back", "passed" or "stopped"
    reason: str
    policy: dict[str, Any]
    started_at: float
    updated_at: float
    served_at: float | None  # when a server first served it (None: no server yet)
    parent: int | None


@dataclass(frozen=True)
class TrafficWindow:
    """What one arm of a rollout served at one step (cumulative)."""

    rollout: int
    step: int
    arm: str  # "champion", "candidate" or "shadow"
    version: int | None
    share: float  # of live requests it answered (a shadow's: of batches mirrored to it)
    first_at: float
    last_at: float
    stats: ArmStats


def event_from_row(row: tuple[Any, ...]) -> LifecycleEvent:
    id_, at, name, kind, version, passed, summary, evidence, parent, rollout, run_id = row
    return LifecycleEvent(
        int(id_),
        float(at),
        name,
        kind,
        version,
        None if passed is None else bool(passed),
        summary,
        json.loads(evidence),
        parent,
        rollout,
        run_id,
    )


def rollout_from_row(row: tuple[Any, ...]) -> Rollout:
    values = list(row)
    values[10] = json.loads(values[10])
    return Rollout(*values)


def jsonable(value: Any) -> Any:
    """NumPy scalars and arrays, sets and dataclass-like objects as JSON."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
