"""conveyor's exceptions: one small hierarchy, each carrying its context.

    ConveyorError
    ├── PipelineError        the pipeline is built wrong (raised at build time)
    └── RunError             a run failed (raised from the result iterator)
        ├── StageError       a stage's function raised on an item
        └── WorkerLostError  a process worker died while it held an item

Messages state the rule, show the values, and suggest the fix.
"""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Base class of every error conveyor raises on its own account."""


class PipelineError(ConveyorError):
    """The pipeline definition breaks a rule; raised when it is built, before any item runs.

    Cycles, duplicate stage names, a stage whose function is not callable or takes
    the wrong number of arguments for its kind, or a function that cannot be sent
    to a process worker. ``stage`` names the offending stage where there is one.
    """

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class RunError(ConveyorError):
    """A run stopped because of a failure; every worker has been stopped when you see it."""

    def __init__(self, message: str, *, stage: str, key: Any = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.key = key


class StageError(RunError):
    """A stage's function raised on an item.

    ``stage`` and ``key`` name where; the original exception is chained as
    ``__cause__`` (for a process worker it carries the remote traceback as its own
    cause), so the traceback printed shows the line that failed.
    """


class WorkerLostError(RunError):
    """A process worker died (killed, crashed, ``os._exit``) while it held an item.

    Unlike :class:`StageError` the function did not raise: the process vanished.
    ``key`` is the item it was running, ``keys`` every item of the chunk it held,
    ``exitcode`` the process's exit code (negative: killed by that signal).
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
    ) -> None:
        super().__init__(message, stage=stage, key=key)
        self.keys = keys
        self.pid = pid
        self.exitcode = exitcode


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
