"""The threads executor: ``workers`` threads sharing one inbox.

Threads suit I/O-bound functions and functions that release the GIL (NumPy, most
C extensions). ``async def`` functions run on a per-thread event loop, up to
``concurrency`` calls at once within a task.
"""

from __future__ import annotations

import queue
import threading

from conveyor.executors._base import Executor
from conveyor.executors._task import Task, close_thread_loop, run_task


class _Cancelled(Exception):
    """Raised between units when the run is cancelled, to stop a thread early."""


class ThreadExecutor(Executor):
    def start(self) -> None:
        self._inbox: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._threads: list[threading.Thread] = []
        self.resize(self.stage.workers)

    def resize(self, workers: int) -> None:
        live = sum(1 for t in self._threads if t.is_alive())
        for _ in range(workers - live):
            i = len(self._threads)
            t = threading.Thread(
                target=self._work, args=(i,), name=f"conveyor-{self.stage.name}-{i}", daemon=True
            )
            self._threads.append(t)
            t.start()
        for _ in range(live - workers):
            self._inbox.put(None)  # the next idle thread exits

    def submit(self, task: Task) -> None:
        self._inbox.put(task)

    def _check_cancelled(self, _unit: int) -> None:
        if self._cancelled.is_set():
            raise _Cancelled

    def _work(self, worker: int) -> None:
        try:
            self._loop(worker)
        finally:
            close_thread_loop()

    def _loop(self, worker: int) -> None:
        s = self.stage
        while True:
            task = self._inbox.get()
            if task is None:
                return
            try:
                outcome = run_task(
                    s.fn,
                    s.kind,
                    task.units,
                    worker=worker,
                    task_id=task.id,
                    is_async=s.is_async,
                    concurrency=s.concurrency,
                    on_unit=self._check_cancelled,
                )
            except _Cancelled:
                return
            self.post(outcome)

    def shutdown(self, *, cancel: bool) -> None:
        if cancel:
            self._cancelled.set()
        for _ in self._threads:
            self._inbox.put(None)
        for t in self._threads:
            # A thread inside a long call cannot be interrupted; it is a daemon and
            # exits at its next item boundary, so do not wait forever for it.
            t.join(timeout=None if not cancel else 2.0)
