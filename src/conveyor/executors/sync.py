"""The sync executor: runs each task in the caller's thread, at once.

Deterministic: with every stage on ``sync``, a run is a plain loop in one thread,
which makes it the reference for tests and the executor to use under a debugger.
``KeyboardInterrupt`` and ``SystemExit`` raised by the function propagate to the
caller, as they would from a plain loop.
"""

from __future__ import annotations

from conveyor.executors.base import Executor, Task, Traits
from conveyor.executors.task import close_thread_loop, run_task

# A sync task runs in the caller: its size only sets latency, and it is never
# taken from the clock, so that sync runs stay deterministic.
SYNC_UNITS = 64


class SyncExecutor(Executor):
    traits = Traits(
        target_task_ns=1_000_000, in_flight_per_worker=0, runs_in_caller=True, max_units=SYNC_UNITS
    )

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
                in_caller=True,
            )
        )

    def shutdown(self, *, cancel: bool) -> None:
        if self.stage.is_async:
            close_thread_loop()
