"""The threads executor: ``workers`` threads sharing one inbox.

Threads suit I/O-bound functions and functions that release the GIL (NumPy, most
C extensions). ``async def`` functions run on a per-thread event loop, up to
``concurrency`` calls at once within a task.

Python cannot interrupt a thread. With a stage ``timeout``, a watchdog thread looks
at when each worker's current unit started; a worker past the timeout is
*abandoned*: its task is reported lost (timed out), a new thread takes its place,
and whatever the old thread returns later is dropped.
"""

from __future__ import annotations

import queue
import threading
from time import monotonic_ns

from conveyor.executors.base import Executor
from conveyor.executors.task import LostWorker, Outcome, Task, close_thread_loop, run_task


class _Cancelled(Exception):
    """Raised between units when the run is cancelled, to stop a thread early."""


class ThreadExecutor(Executor):
    def start(self) -> None:
        self._inbox: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._cancelled = threading.Event()  # stop before the next unit
        self._stop = threading.Event()  # the run is ending: the watchdog stops
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # worker -> (task, unit index, unit start ns), while it runs a task
        self._running: dict[int, tuple[Task, int, int]] = {}
        self._abandoned: set[int] = set()
        self.resize(self.stage.workers)
        if self.stage.timeout is not None and not self.stage.is_async:
            watchdog = threading.Thread(
                target=self._watch, name=f"conveyor-{self.stage.name}-watchdog", daemon=True
            )
            watchdog.start()
            self._watchdog: threading.Thread | None = watchdog
        else:
            self._watchdog = None

    def resize(self, workers: int) -> None:
        with self._lock:
            live = sum(
                1 for i, t in enumerate(self._threads) if t.is_alive() and i not in self._abandoned
            )
            for _ in range(workers - live):
                self._start_thread()
        for _ in range(live - workers):
            self._inbox.put(None)  # the next idle thread exits

    def _start_thread(self) -> None:
        i = len(self._threads)
        t = threading.Thread(
            target=self._work, args=(i,), name=f"conveyor-{self.stage.name}-{i}", daemon=True
        )
        self._threads.append(t)
        t.start()

    def submit(self, task: Task) -> None:
        self._inbox.put(task)

    def _work(self, worker: int) -> None:
        try:
            self._serve(worker)
        finally:
            close_thread_loop()

    def _serve(self, worker: int) -> None:
        s = self.stage
        running = self._running
        while True:
            task = self._inbox.get()
            if task is None:
                return

            def on_unit(unit: int, task: Task = task) -> None:
                if self._cancelled.is_set():
                    raise _Cancelled
                running[worker] = (task, unit, monotonic_ns())

            try:
                outcome = run_task(
                    s.fn,
                    s.kind,
                    task.units,
                    worker=worker,
                    task_id=task.id,
                    is_async=s.is_async,
                    concurrency=s.concurrency,
                    timeout=s.timeout,
                    cache=self.cache,
                    on_unit=on_unit,
                )
            except _Cancelled:
                return
            with self._lock:
                running.pop(worker, None)
                if worker in self._abandoned:
                    return  # timed out: the watchdog reported it and replaced us
            self.post(outcome)

    def _watch(self) -> None:
        assert self.stage.timeout is not None
        limit = int(self.stage.timeout * 1e9)
        poll = min(0.05, self.stage.timeout / 4)
        while not self._stop.wait(poll):
            now = monotonic_ns()
            for worker, (task, unit, started) in list(self._running.items()):
                if now - started <= limit:
                    continue
                with self._lock:
                    if (
                        worker in self._abandoned
                        or self._running.get(worker, (None,))[0] is not task
                    ):
                        continue
                    self._abandoned.add(worker)
                    del self._running[worker]
                    self._start_thread()
                lost = LostWorker(pid=None, exitcode=None, unit_index=unit, timed_out=True)
                self.post(Outcome(task.id, worker, [], [], lost=lost))

    def shutdown(self, *, cancel: bool) -> None:
        self._stop.set()
        if cancel:
            self._cancelled.set()
        for _ in self._threads:
            self._inbox.put(None)
        for i, t in enumerate(self._threads):
            if i in self._abandoned:
                continue  # still inside a call that timed out; it exits when that returns
            # A thread inside a long call cannot be interrupted; it is a daemon and
            # exits at its next item boundary, so do not wait forever for it.
            t.join(timeout=None if not cancel else 2.0)
        if self._watchdog is not None:
            self._watchdog.join()
