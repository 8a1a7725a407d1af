"""The sync executor: runs each task in the caller's thread, at once.

Deterministic: with every stage on ``sync``, a run is a plain loop in one thread,
which makes it the reference for tests and the executor to use under a debugger.
"""

from __future__ import annotations

from conveyor.executors.base import Executor
from conveyor.executors.task import Task, close_thread_loop, run_task


class SyncExecutor(Executor):
    def submit(self, task: Task) -> None:
        s = self.stage
        self.post(
            run_task(
                s.fn,
                s.kind,
                task.units,
                worker=0,
                task_id=task.id,
                is_async=s.is_async,
                concurrency=s.concurrency,
                timeout=s.timeout,
                cache=self.cache,
            )
        )

    def shutdown(self, *, cancel: bool) -> None:
        if self.stage.is_async:
            close_thread_loop()
