"""The errors a run raises, made in one place: what failed, where, and what to do.

Pure functions from the facts (stage, item key, attempt, exit code) to the
exception the user sees; the scheduler decides when to raise them.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.errors import PipelineError, StageError, StallError, WorkerLostError
from conveyor.executors.base import LostWorker

if TYPE_CHECKING:
    from conveyor.core.flow import StageState
    from conveyor.core.pipeline import Pipeline
    from conveyor.executors.base import Task

Key = tuple[Any, ...]


class Cancelled(BaseException):
    """Raised in the scheduler's thread when another thread closes the run."""


def show(key: Key) -> str:
    """A key as users think of it: the source position alone for a source item."""
    return str(key[0]) if len(key) == 1 else str(key)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def lost_error(
    stage: str, timeout: float | None, worker: int, keys: Sequence[Key], lost: LostWorker
) -> BaseException:
    """The error a stopped worker stands for: TimeoutError or WorkerLostError."""
    index = lost.unit_index if 0 <= lost.unit_index < len(keys) else 0
    key = keys[index]
    if lost.timed_out:
        how = "was killed and replaced" if lost.pid is not None else "was abandoned and replaced"
        return TimeoutError(
            f"item {show(key)} ran longer than stage {stage!r}'s timeout of {timeout} s; "
            f"its worker {how}"
        )
    return WorkerLostError(
        f"stage {stage!r} lost process worker {worker} (pid {lost.pid}, "
        f"{describe_exit(lost.exitcode)}) while it ran item {show(key)}; the item did not "
        "complete. If the process was killed for memory, lower this stage's workers or "
        "the pipeline's capacity",
        stage=stage,
        key=key,
        keys=tuple(keys),
        pid=lost.pid,
        exitcode=lost.exitcode,
    )


def stage_error(
    stage: str,
    key: Key,
    error: BaseException,
    *,
    batch: int | None = None,
    attempt: int = 1,
    attempts: int = 1,
) -> StageError:
    """A stage's function failed on ``key`` for good (chain ``error`` when raising)."""
    what = f"item {show(key)}"
    if batch is not None:
        what = f"a batch of {batch} items starting at {show(key)}"
    tries = f" (attempt {attempt} of {attempts})" if attempts > 1 else ""
    return StageError(
        f"stage {stage!r} failed on {what}{tries}: {type(error).__name__}: {_text(error)}",
        stage=stage,
        key=key,
    )


def stall_error(stage: str, tasks: int, keys: Sequence[Key]) -> StallError:
    shown = ", ".join(show(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
    return StallError(
        f"stage {stage!r} has {tasks} task(s) in flight ({len(keys)} items: {shown}) but "
        "no live worker to finish them, and none can come back; this is a bug in the "
        "stage's executor or a worker killed in a way conveyor cannot see: please report it",
        stage=stage,
        keys=tuple(keys),
    )


def check_resize(pipeline: Pipeline, stage: str, workers: int) -> None:
    """Raise PipelineError unless ``stage`` of ``pipeline`` can have ``workers`` workers."""
    s = pipeline.stages.get(stage)
    if s is None:
        raise PipelineError(
            f"cannot resize stage {stage!r}: pipeline {pipeline.name!r} has no such "
            f"stage (its stages: {', '.join(pipeline.stages)})",
            stage=stage,
        )
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise PipelineError(
            f"cannot resize stage {stage!r} to workers={workers!r}; give at least 1",
            stage=stage,
        )
    if s.kind == "collect" and workers != 1:
        raise PipelineError(f"stage {stage!r} is a collect stage: it has one worker", stage=stage)


def describe(stages: Sequence[StageState]) -> str:
    """Each stage's queue, tasks in flight and overflow, for a bug report."""
    return "; ".join(
        f"{s.name}: queue={len(s.queue.items)} busy={s.busy} overflow={len(s.overflow)}"
        for s in stages
    )


def check_stall(
    stages: Sequence[StageState],
    inflight: Iterable[tuple[StageState, Task]],
    seen: set[str],
) -> set[str]:
    """Raise StallError for a stage with work in flight and no live worker, seen so at
    two wake-ups in a row (``seen``: the stages so at the last one; the new set is
    returned). An executor may be between two states when asked (its last worker gone,
    the outcome saying why not posted yet), hence the second look."""
    stalled = {
        s.name
        for s in stages
        if s.busy
        and not s.traits.runs_in_caller
        and s.executor is not None
        and s.executor.alive() == 0
    }
    for s in stages:
        if s.name in stalled & seen:
            keys = [k for st, task in inflight if st is s for k in task.keys]
            raise stall_error(s.name, s.busy, keys)
    return stalled


def _text(error: BaseException) -> str:
    """``str(error)``, or what went wrong making it: a broken ``__str__`` must not hide
    which item failed."""
    try:
        return str(error)
    except Exception as exc:
        return f"<str() of it raised {type(exc).__name__}>"
