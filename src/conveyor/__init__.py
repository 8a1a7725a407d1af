"""conveyor: streaming compute pipelines that explain themselves.

Stages connected by bounded queues, each running a pool of workers at the same
time as the others; items flow through like cars on an assembly line.

Everything a pipeline's author needs is here; the layers below have their own
public modules: :mod:`conveyor.errors`, :mod:`conveyor.observe`,
:mod:`conveyor.analysis`, :mod:`conveyor.store`, :mod:`conveyor.cache`,
:mod:`conveyor.executors`, :mod:`conveyor.sources` (file and table sources) and the
extras :mod:`conveyor.train`.
"""

from conveyor.core.events import Instrument, RunInfo, StageInfo
from conveyor.core.pipeline import Pipeline
from conveyor.core.policy import Retry
from conveyor.core.run import Run
from conveyor.core.service import Service
from conveyor.core.stage import Stage, stage
from conveyor.core.statistics import QueueStatistics, RunStatistics, StageStatistics
from conveyor.errors import (
    CacheError,
    CacheWarning,
    ConfigError,
    ConveyorError,
    FingerprintError,
    GateFailed,
    InstrumentError,
    InstrumentWarning,
    LifecycleError,
    MissingTorchError,
    ModelError,
    ModelNotFoundError,
    OutputError,
    PipelineChangedError,
    PipelineError,
    RecordingError,
    RemoteError,
    RemoteTraceback,
    RunError,
    RunNotFoundError,
    ServeError,
    SourceError,
    StageError,
    StallError,
    StoreError,
    TrainError,
    UnsafeModelError,
    WorkerLostError,
)
from conveyor.observe.metrics import Metrics
from conveyor.observe.rebalance import Rebalancer
from conveyor.observe.recorder import Recorder, Recording
from conveyor.results import ResultsWriter, write_results

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "CacheWarning",
    "ConfigError",
    "ConveyorError",
    "FingerprintError",
    "GateFailed",
    "Instrument",
    "InstrumentError",
    "InstrumentWarning",
    "LifecycleError",
    "Metrics",
    "MissingTorchError",
    "ModelError",
    "ModelNotFoundError",
    "OutputError",
    "Pipeline",
    "PipelineChangedError",
    "PipelineError",
    "QueueStatistics",
    "Rebalancer",
    "Recorder",
    "Recording",
    "RecordingError",
    "RemoteError",
    "RemoteTraceback",
    "ResultsWriter",
    "Retry",
    "Run",
    "RunError",
    "RunInfo",
    "RunNotFoundError",
    "RunStatistics",
    "ServeError",
    "Service",
    "SourceError",
    "Stage",
    "StageError",
    "StageInfo",
    "StageStatistics",
    "StallError",
    "StoreError",
    "TrainError",
    "UnsafeModelError",
    "WorkerLostError",
    "stage",
    "write_results",
]

for _name in __all__:
    # Reprs, tracebacks and pickles name the public path (conveyor.Stage), not the module
    # that happens to define it.
    globals()[_name].__module__ = "conveyor"
del _name


def __getattr__(name: str) -> object:
    # cv.models, cv.serve and cv.lifecycle without importing them (and the serve extra) up front.
    if name in ("models", "serve", "lifecycle"):
        import importlib

        return importlib.import_module(f"conveyor.{name}")
    raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
