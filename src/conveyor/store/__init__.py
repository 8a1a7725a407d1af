"""The run store: run history, stage statistics, item outcomes, dead letters and the
ledger of source items, in embedded SQLite (``.conveyor/runs.db``, found upwards from the current
folder)."""

from conveyor.errors import PipelineChangedError, RunNotFoundError, StoreError
from conveyor.store._check import StoreCheck
from conveyor.store._history import StoreRecorder, WriterStatistics
from conveyor.store._listing import (
    RunPage,
    RunRow,
    dead_letter_page,
    find_runs,
    pipeline_names,
)
from conveyor.store._records import DeadLetter, ItemOutcome, Ledger, RunRecord, StageRecord
from conveyor.store._resume import ResumePlan, plan_resume, redrive_plan, resume_report
from conveyor.store._rows import encode_key
from conveyor.store._schema import SCHEMA_VERSION
from conveyor.store._snapshots import SnapshotRecorder, latest_recording, read_snapshots
from conveyor.store._source import DigestingSource, ItemDigest, ResumeSource, file_fingerprint
from conveyor.store._store import DEFAULT_PATH, RunStore, default_store_path

__all__ = [
    "DEFAULT_PATH",
    "SCHEMA_VERSION",
    "DeadLetter",
    "DigestingSource",
    "ItemDigest",
    "ItemOutcome",
    "Ledger",
    "PipelineChangedError",
    "ResumePlan",
    "ResumeSource",
    "RunNotFoundError",
    "RunPage",
    "RunRecord",
    "RunRow",
    "RunStore",
    "SnapshotRecorder",
    "StageRecord",
    "StoreCheck",
    "StoreError",
    "StoreRecorder",
    "WriterStatistics",
    "dead_letter_page",
    "default_store_path",
    "encode_key",
    "file_fingerprint",
    "find_runs",
    "latest_recording",
    "pipeline_names",
    "plan_resume",
    "read_snapshots",
    "redrive_plan",
    "resume_report",
]
