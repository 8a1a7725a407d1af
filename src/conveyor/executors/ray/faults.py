"""What the ray executor says when a stage's actors cannot run it at all."""

from __future__ import annotations

from conveyor.errors import StageError, WorkerLostError
from conveyor.executors.base import Failure, Outcome, Task
from conveyor.executors.processes.remote import Packed, rebuild


def load_failed(stage: str, packed: Packed, tb: str) -> StageError:
    """An actor could not load the stage's function (its error is the cause)."""
    exc = StageError(
        f"stage {stage!r} cannot run on Ray workers: loading its function "
        f"in an actor raised {packed.describe}; make the function importable on every "
        "node (defined at the top level of a module that imports cleanly there), or "
        "use executor='threads'",
        stage=stage,
    )
    exc.__cause__ = rebuild(packed, tb)
    return exc


def start_failed(stage: str, failures: int, pid: int | None) -> WorkerLostError:
    """The stage's actors exit before they are ready, ``failures`` in a row."""
    return WorkerLostError(
        f"stage {stage!r}: its Ray workers exit before they can start "
        f"({failures} in a row); see the actor's error above. Usually the "
        "stage's module cannot be imported on the nodes: keep the function at the top "
        "level of a module every node can import (ship it with a runtime_env)",
        stage=stage,
        pid=pid,
    )


def broken_outcome(task: Task, error: BaseException) -> Outcome:
    """Every unit of ``task`` fails with ``error``, fatally: the stage cannot run."""
    return Outcome(task.id, -1, [], [], [Failure(0, error, None, fatal=True)])
