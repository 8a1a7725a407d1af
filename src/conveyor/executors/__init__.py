"""Executors: where a stage's workers run (sync, threads, processes).

One scheduler drives them all through the small protocol in ``_base``.
"""

from __future__ import annotations

from conveyor.core.stage import Stage
from conveyor.executors.base import Executor, Post
from conveyor.executors.task import LostWorker, Outcome, Task, run_task


def make_executor(stage: Stage, post: Post, *, shm_registry_factory: object) -> Executor:
    """The executor for ``stage`` according to its ``executor`` option."""
    if stage.executor == "sync":
        from conveyor.executors.sync import SyncExecutor

        return SyncExecutor(stage, post)
    if stage.executor == "threads":
        from conveyor.executors.threads import ThreadExecutor

        return ThreadExecutor(stage, post)
    from conveyor.executors.processes.pool import ProcessExecutor

    assert callable(shm_registry_factory)
    return ProcessExecutor(stage, post, registry=shm_registry_factory())


__all__ = ["Executor", "LostWorker", "Outcome", "Post", "Task", "make_executor", "run_task"]
