"""What the run store's reads return: frozen records of runs, stages, outcomes,
dead letters, and the ledger of a run's source items.

Each record is plain data with no connection to the store; times are Unix seconds.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Sequence
from typing import Any

from conveyor.errors import StoreError


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run as the store holds it; times are Unix seconds."""

    id: str
    pipeline: str
    fingerprint: str | None
    params: dict[str, Any]
    target: str | None
    state: str
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    host: str
    pid: int
    conveyor_version: str
    items_read: int | None
    items_emitted: int | None

    @property
    def elapsed_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


# The runs table's columns in RunRecord's order, and a row of them as a record.
RUN_COLUMNS = (
    "id, pipeline, fingerprint, params, target, state, error, created_at, started_at, "
    "finished_at, host, pid, conveyor_version, items_read, items_emitted"
)


def run_record(row: Sequence[Any]) -> RunRecord:
    values = list(row)
    values[3] = json.loads(values[3])
    return RunRecord(*values)


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """A stage's statistics at the end of a run (see :class:`~conveyor.StageStatistics`)."""

    stage: str
    position: int
    kind: str
    executor: str
    workers: int
    items_in: int
    items_out: int
    errors: int
    tasks: int
    busy_seconds: float
    queue_bound: int | None
    queue_peak: int


@dataclasses.dataclass(frozen=True)
class ItemOutcome:
    """One item's outcome at one stage: done, failed (one row per failed attempt),
    skipped (dead-lettered) or cached (served from the stage's cache)."""

    stage: str
    key: str
    outcome: str
    attempt: int | None
    error: str | None
    traceback: str | None
    at: float


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An item a stage gave up on, with its input value (pickled when it could be)."""

    stage: str
    key: str
    value_pickle: bytes | None
    value_repr: str
    error_type: str
    error: str
    traceback: str | None
    at: float
    redriven_by: str | None = None  # the run that re-drove it, once one has

    def load_value(self) -> Any:
        """The item's input value, unpickled; StoreError if it could not be pickled."""
        if self.value_pickle is None:
            raise StoreError(
                f"the value of dead letter {self.key} at stage {self.stage!r} could not be "
                f"pickled when it was recorded; only its repr is kept: {self.value_repr}"
            )
        return pickle.loads(self.value_pickle)


@dataclasses.dataclass(frozen=True)
class Ledger:
    """Where every source item of a run ended: each is in exactly one terminal state.

    ``balanced`` holds when the states sum to the items read from the source; a run
    whose process died before it finished has ``items_read`` None and is not balanced.
    """

    run_id: str
    items_read: int | None
    done: int
    filtered: int
    dead_lettered: int
    pending: int

    @property
    def accounted(self) -> int:
        return self.done + self.filtered + self.dead_lettered + self.pending

    @property
    def balanced(self) -> bool:
        return self.items_read is not None and self.accounted == self.items_read

    def __str__(self) -> str:
        read = "?" if self.items_read is None else str(self.items_read)
        sign = "=" if self.balanced else "!="
        return (
            f"done {self.done} + filtered {self.filtered} + dead-lettered "
            f"{self.dead_lettered} + pending {self.pending} {sign} read {read}"
        )
