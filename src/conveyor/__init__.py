"""conveyor: streaming compute pipelines that explain themselves.

Stages connected by bounded queues, each running a pool of workers at the same
time as the others; items flow through like cars on an assembly line.
"""

from conveyor._errors import (
    ConveyorError,
    PipelineError,
    RemoteTraceback,
    RunError,
    StageError,
    WorkerLostError,
)
from conveyor._instrument import Instrument, RunInfo, StageInfo
from conveyor._metrics import Metrics
from conveyor._pipeline import Pipeline
from conveyor._policy import Retry
from conveyor._rebalance import Rebalancer
from conveyor._recorder import Recorder, Recording, RecordingError
from conveyor._run import Run
from conveyor._stage import Stage, stage
from conveyor._statistics import QueueStatistics, RunStatistics, StageStatistics

__version__ = "0.1.0"

__all__ = [
    "ConveyorError",
    "Instrument",
    "Metrics",
    "Pipeline",
    "PipelineError",
    "QueueStatistics",
    "Rebalancer",
    "Recorder",
    "Recording",
    "RecordingError",
    "RemoteTraceback",
    "Retry",
    "Run",
    "RunError",
    "RunInfo",
    "RunStatistics",
    "Stage",
    "StageError",
    "StageInfo",
    "StageStatistics",
    "WorkerLostError",
    "stage",
]
