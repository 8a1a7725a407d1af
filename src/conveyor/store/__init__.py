"""The run store: run history, stage statistics, item outcomes, dead letters and the
ledger of source items, in embedded SQLite (``./.conveyor/runs.db``)."""

from conveyor.store._db import PipelineChangedError, RunNotFoundError, StoreError
from conveyor.store._recorder import StoreRecorder
from conveyor.store._schema import SCHEMA_VERSION
from conveyor.store._store import (
    DeadLetter,
    ItemOutcome,
    Ledger,
    RunRecord,
    RunStore,
    StageRecord,
    encode_key,
)

__all__ = [
    "SCHEMA_VERSION",
    "DeadLetter",
    "ItemOutcome",
    "Ledger",
    "PipelineChangedError",
    "RunNotFoundError",
    "RunRecord",
    "RunStore",
    "StageRecord",
    "StoreError",
    "StoreRecorder",
    "encode_key",
]
