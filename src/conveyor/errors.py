"""conveyor's exceptions and warnings: one tree, each error carrying its context.

    ConveyorError                  every error conveyor raises on its own account
    ├── PipelineError              the pipeline is built wrong (raised at build time)
    │   └── ConfigError            a config file (``--config``) names a wrong key or value
    ├── RunError                   a run failed; every worker is stopped when you see it
    │   ├── StageError             a stage's function raised on an item
    │   ├── WorkerLostError        a worker died (killed, crashed, exited) holding an item
    │   ├── StallError             work was in flight but no worker could finish it
    │   └── InstrumentError        an instrument declared critical raised in a hook
    ├── StoreError                 the run store cannot be used
    │   ├── RunNotFoundError       no run (or several) has the id asked for
    │   └── PipelineChangedError   the pipeline's code changed since the run was recorded
    ├── FingerprintError           a stage's code cannot be fingerprinted for the cache
    ├── RemoteError                a process worker's exception whose class cannot be
    │                              imported here (retry filters match it by name)
    ├── CacheError                 a stage's cache folder cannot be used (a file, read-only, full)
    ├── RecordingError             no recording: not recorded, or not a recording file
    ├── SourceError                a file or table source cannot be read as asked
    ├── OutputError                results cannot be written or converted as asked
    ├── TrainError                 the train extra was given something it cannot use
    │   └── MissingTorchError      a torch-backed part was used without PyTorch
    ├── ModelError                 the model registry cannot do what was asked
    │   ├── ModelNotFoundError     no model, version or alias of that name
    │   └── UnsafeModelError       loading would run code (a pickle) and was not trusted
    ├── ServeError                 a model server cannot start or be configured as asked
    └── LifecycleError             a gate, drift check, rollout or release cannot do as asked
        └── GateFailed             the candidate did not pass the evaluation gate

    CacheWarning                   a value could not be cached; the stage runs uncached
    InstrumentWarning              an instrument raised in a hook and was detached

Every error a run raises names its ``stage``, its ``run_id`` and, where there is
one, the item's ``key``. Messages state the rule, show the values, and suggest the
fix. ``RemoteTraceback`` is not an error of its own: it is the ``__cause__`` that
carries a process worker's formatted traceback.

An exception raised in a process worker comes back as itself when it can be
pickled. When it cannot (a constructor that takes other arguments than its
message, an attribute such as a lock), it comes back as an instance of a subclass
of its own class, named like it, with its message, its arguments and attributes
that pickle, and the remote traceback: ``except`` clauses and retry filters treat
it as the original. Only when its class cannot be imported in the driver does it
arrive as a :class:`RemoteError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "CacheError",
    "CacheWarning",
    "ConfigError",
    "ConveyorError",
    "FingerprintError",
    "GateFailed",
    "InstrumentError",
    "InstrumentWarning",
    "LifecycleError",
    "MissingTorchError",
    "ModelError",
    "ModelNotFoundError",
    "OutputError",
    "PipelineChangedError",
    "PipelineError",
    "RecordingError",
    "RemoteError",
    "RemoteTraceback",
    "RunError",
    "RunNotFoundError",
    "ServeError",
    "SourceError",
    "StageError",
    "StallError",
    "StoreError",
    "TrainError",
    "UnsafeModelError",
    "WorkerLostError",
]


class ConveyorError(Exception):
    """Base class of every error conveyor raises on its own account."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle the context attributes too, whatever the subclass's __init__ takes.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[ConveyorError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class PipelineError(ConveyorError):
    """The pipeline definition breaks a rule; raised when it is built, before any item runs.

    Cycles, duplicate stage names, a stage whose function is not callable or takes
    the wrong number of arguments for its kind, or a function that cannot be sent
    to a process worker. ``stage`` names the offending stage where there is one.
    """

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class ConfigError(PipelineError):
    """A config file (``Pipeline.with_config``, ``conveyor run --config``) cannot be
    applied: it is not valid TOML, names a stage the pipeline lacks or a key that is not
    a policy, or gives a value the policy refuses. ``path`` names the file and ``key``
    the dotted key (``stages.parse.workers``) where the fault is."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        key: str | None = None,
        stage: str | None = None,
    ) -> None:
        super().__init__(message, stage=stage)
        self.path = path
        self.key = key


class RunError(ConveyorError):
    """A run stopped because of a failure; every worker has been stopped when you see it.

    ``stage`` names where (``"<source>"`` for the source), ``key`` the item,
    ``run_id`` the run (set when the run ends, so that the run store's record can
    be found from the exception).
    """

    def __init__(
        self, message: str, *, stage: str, key: Any = None, run_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.key = key
        self.run_id = run_id


class StageError(RunError):
    """A stage's function raised on an item.

    ``stage`` and ``key`` name where; the original exception is chained as
    ``__cause__`` (for a process worker it carries the remote traceback as its own
    cause), so the traceback printed shows the line that failed.
    """


class WorkerLostError(RunError):
    """A worker died (killed, crashed, ``os._exit``, ``sys.exit`` in a thread) while it
    held an item.

    Unlike :class:`StageError` the function did not return or raise normally: the
    worker vanished. ``key`` is the item it was running, ``keys`` every item of the
    chunk it held, ``exitcode`` a process's exit code (negative: killed by that
    signal).
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        key: Any = None,
        keys: tuple[Any, ...] = (),
        pid: int | None = None,
        exitcode: int | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(message, stage=stage, key=key, run_id=run_id)
        self.keys = keys
        self.pid = pid
        self.exitcode = exitcode


class StallError(RunError):
    """Work was in flight at a stage, but no worker could ever finish it: the stage has
    no live worker, or its transport broke. Raised within seconds instead of waiting
    forever; ``keys`` are the items that were in flight there."""

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        keys: tuple[Any, ...] = (),
        run_id: str | None = None,
    ) -> None:
        super().__init__(message, stage=stage, key=keys[0] if keys else None, run_id=run_id)
        self.keys = keys


class InstrumentError(RunError):
    """An instrument that declared itself ``critical`` raised in one of its hooks, so the
    run stopped. A hook of an ordinary instrument that raises is detached with an
    :class:`InstrumentWarning` instead, and the run goes on. ``stage`` names the
    instrument's class; the hook's exception is chained."""


class StoreError(ConveyorError):
    """The run store cannot be used: missing, not a database, corrupt, from a newer
    conveyor, or asked for a run it does not hold. ``path`` names the store file."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class RunNotFoundError(StoreError):
    """No run, or more than one, has the id (or id prefix) asked for; ``candidates``
    holds the ids that matched (empty when none did)."""

    def __init__(
        self, message: str, *, path: Path | None = None, candidates: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, path=path)
        self.candidates = candidates


class PipelineChangedError(StoreError):
    """The pipeline's code fingerprint differs from the one recorded with the run, so
    its recorded results may not be what the code computes now (raised before resume)."""


class FingerprintError(ConveyorError):
    """A function's code fingerprint cannot be computed faithfully: it closes over (or
    refers to, or defaults to) a value that cannot be fingerprinted. Caching such a
    stage could serve results computed under another value, so it is refused."""


class RemoteError(ConveyorError):
    """An exception raised in a process worker whose class cannot be imported in the
    driver (made by a factory or inside a function, or defined in a module only the
    worker can import), or refuses subclasses, so it cannot come back as itself.

    ``type_name`` is its class's qualified name (``"module.Qualname"``),
    ``type_names`` those of its class and every base (builtins as
    ``"builtins.ValueError"``), ``message`` what ``str()`` of it said, and
    ``attributes`` those of its attributes that could be sent. A
    :class:`~conveyor.Retry` filter matches it by ``type_names``, exactly as it would
    match the original by class; the worker's traceback is its ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        type_name: str,
        type_names: tuple[str, ...] = (),
        remote_message: str = "",
        attributes: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.type_names = type_names or (type_name,)
        self.message = remote_message
        self.attributes = attributes or {}

    def is_a(self, cls: type[BaseException]) -> bool:
        """Whether the original exception was an instance of ``cls``, judged by the
        qualified names of its class and bases (how a retry filter matches it)."""
        return cls is RemoteError or f"{cls.__module__}.{cls.__qualname__}" in self.type_names


class CacheError(ConveyorError):
    """A cached stage's cache folder cannot be used: the path is a file, the folder
    cannot be made or written (read-only, no permission), or the disk is full.

    Raised when the run starts, before any item runs; ``stage`` names the stage and
    ``path`` the folder. A stage made with ``cache_required=False`` runs uncached
    instead, with a :class:`CacheWarning`.
    """

    def __init__(self, message: str, *, stage: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.path = path


class RecordingError(ConveyorError, ValueError):
    """There is no recording to be had: the run was started with ``record=False`` or
    has not started, or a file is not a recording (or of a version) this conveyor can
    read. The message says which, and what to do."""


class SourceError(ConveyorError):
    """A file or table source (:mod:`conveyor.sources`) cannot be read as asked.

    A missing file, a glob that matches nothing, a URL whose protocol needs a package
    that is not installed, a malformed line or row. ``path`` names the file (or the
    pattern) and ``line`` the 1-based line where the fault is, where there is one.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class OutputError(ConveyorError):
    """Results cannot be written or converted as asked (:mod:`conveyor.results`): a
    value JSON lines cannot hold (the message names its type), results that do not
    share one Parquet schema, or pyarrow or pandas not installed (the message says
    what to install)."""


class TrainError(ConveyorError):
    """The train extra was given something it cannot use.

    More stages than layers, a schedule that needs more micro-batches, a memory cap
    no partition meets, a model that is not a sequence of layers. Raised by the
    pure planners before anything runs, and by the launcher when a run fails or
    times out. When a rank failed, ``rank`` is its global rank and ``__cause__`` a
    :class:`RemoteTraceback` with its traceback; otherwise ``rank`` is None.
    """

    def __init__(self, message: str, *, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank


TORCH_HINT = (
    "conveyor.train needs PyTorch: pip install torch==2.13.0 && pip install 'conveyor[train]'"
)


class MissingTorchError(TrainError, ImportError):
    """A part of conveyor.train that runs PyTorch was used where torch is not installed."""

    def __init__(self) -> None:
        super().__init__(TORCH_HINT)


class ModelError(ConveyorError):
    """The model registry cannot do what was asked: an artifact whose checksum does not
    match, a format it cannot write or read, an extra that is not installed (the
    message says what to install)."""


class ModelNotFoundError(ModelError):
    """No registered model, version or alias answers the reference asked for
    (``name``, ``name:3``, ``name@champion``); the message lists what there is."""


class UnsafeModelError(ModelError):
    """Loading the artifact would run code of the artifact's choosing (a pickle), and
    the caller did not say it trusts it (``trust_pickle=True``)."""


class ServeError(ConveyorError):
    """A model server cannot start or be configured as asked (a port in use, a limit
    that makes no sense, a handler that is not a class). Errors of single requests are
    HTTP answers, never this."""


class CacheWarning(UserWarning):
    """A stage's cache could not serve or store a value (an input that cannot be
    fingerprinted, a result that cannot be pickled): the stage still runs, uncached.
    Issued once per stage and reason per process."""


class InstrumentWarning(RuntimeWarning):
    """An instrument raised in one of its hooks; it was detached and the run went on.
    Issued once per instrument, naming it and the exception."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a process worker.

    Attached as ``__cause__`` of the re-raised exception, as concurrent.futures does,
    so the driver's traceback shows where the worker failed.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class LifecycleError(ConveyorError):
    """The model lifecycle (:mod:`conveyor.lifecycle`) cannot do what was asked: a gate
    given predictions that do not line up with the labels, a drift reference and a
    window with different columns, a rollout with bad steps, a release that stopped.
    The message names the thing and the fix."""


class GateFailed(LifecycleError):
    """The candidate did not pass the evaluation gate; ``verdict`` holds the evidence
    (which metric and slice failed, by how much, with the interval)."""

    def __init__(self, message: str, *, verdict: Any = None) -> None:
        super().__init__(message)
        self.verdict = verdict
