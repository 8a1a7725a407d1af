"""The sync executor: runs each task in the caller's thread, at once.

Deterministic: with every stage on ``sync``, a run is a plain loop in one thread,
which makes it the reference for tests and the executor to use under a debugger.
``KeyboardInterrupt`` and ``SystemExit`` raised by the function propagate to the
caller, as they would from a plain loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.executors.base import CacheSpec, Executor, Post, RunContext, Task, Traits
from conveyor.executors.calls import close_quietly, worker_function
from conveyor.executors.task import close_thread_loop, run_task

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

# A sync task runs in the caller: its size only sets latency, and it is never
# taken from the clock, so that sync runs stay deterministic.
SYNC_UNITS = 64


class SyncExecutor(Executor):
    traits = Traits(
        target_task_ns=1_000_000, in_flight_per_worker=0, runs_in_caller=True, max_units=SYNC_UNITS
    )

    def __init__(
        self,
        stage: Stage,
        post: Post,
        *,
        cache: CacheSpec | None = None,
        context: RunContext | None = None,
    ) -> None:
        super().__init__(stage, post, cache=cache, context=context)
        self._fn, self._close = worker_function(stage.fn, stage.kind, stage.initial, stage.init)
        self._shut = False

    def submit(self, task: Task) -> None:
        s = self.stage
        self.post(
            run_task(
                self._fn,
                s.kind,
                task.units,
                worker=0,
                task_id=task.id,
                is_async=s.is_async,
                concurrency=s.concurrency,
                timeout=s.timeout,
                cache=self.cache,
                in_caller=True,
            )
        )

    def shutdown(self, *, cancel: bool) -> None:
        if self._shut:
            return
        self._shut = True
        close_quietly(self._close, self.stage.name)
        close_thread_loop()
