"""The threads executor: ``workers`` threads sharing one inbox.

Threads suit I/O-bound functions and functions that release the GIL (NumPy, most
C extensions). ``async def`` functions run on a per-thread event loop, up to
``concurrency`` calls at once across the tasks a thread holds
(:mod:`conveyor.executors.asyncthreads`).

Every task a thread takes gets exactly one outcome: whatever the function raises
(``SystemExit`` and ``asyncio.CancelledError`` included) is reported as that unit's
failure, and a thread never dies without posting. Resizing keeps a target count:
growing starts threads, and after each task a thread retires if more threads serve
than the target, so any sequence of resizes converges on the last one.

Python cannot interrupt a thread. With a stage ``timeout``, a watchdog thread looks
at when each worker's current unit started; a worker past the timeout is
*abandoned*: its task is reported lost (timed out), a new thread takes its place,
and whatever the old thread returns later is dropped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from time import monotonic, monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.executors import asyncthreads
from conveyor.executors.asyncthreads import Backlog
from conveyor.executors.base import (
    CacheSpec,
    Executor,
    LostWorker,
    Outcome,
    Post,
    RunContext,
    Task,
    Traits,
    not_run,
)
from conveyor.executors.calls import close_quietly, worker_function
from conveyor.executors.task import close_thread_loop, failure, run_task, thread_loop

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

JOIN_SECONDS = 2.0


class _Cancelled(Exception):
    """Raised between units when the run is cancelled, to stop a thread early."""


class ThreadExecutor(Executor):
    traits = Traits(target_task_ns=2_000_000, in_flight_per_worker=1, async_overlap=True)

    def __init__(
        self,
        stage: Stage,
        post: Post,
        *,
        cache: CacheSpec | None = None,
        context: RunContext | None = None,
    ) -> None:
        super().__init__(stage, post, cache=cache, context=context)
        self._inbox: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        # an async stage's tasks wait here instead, for a worker with room
        self._backlog = Backlog() if stage.is_async else None
        self._lock = threading.Lock()
        self._cancelled = threading.Event()  # stop before the next unit
        self._stop = threading.Event()  # the run is ending: the watchdog stops
        self._threads: list[threading.Thread] = []  # every thread started, for shutdown
        self._serving: set[int] = set()  # workers that take tasks (alive() counts them)
        self._abandoned: set[int] = set()  # timed out: their late outcome is dropped
        # worker -> (task, unit index, unit start ns) while it runs a task, for the
        # watchdog: kept only for a stage with a timeout
        self._running: dict[int, tuple[Task, int, int]] = {}
        self._watchdog: threading.Thread | None = None
        self._started = False
        self._shut = False

    def start(self) -> None:
        with self._lock:
            self._started = True
            self._grow()
        if self.stage.timeout is not None and not self.stage.is_async:
            self._watchdog = threading.Thread(
                target=self._watch, name=f"conveyor-{self.stage.name}-watchdog", daemon=True
            )
            self._watchdog.start()

    def submit(self, task: Task) -> None:
        if self._backlog is not None:
            self._backlog.put(task)
        else:
            self._inbox.put(task)

    def resize(self, workers: int) -> None:
        with self._lock:
            self.target = workers
            if self._started and not self._stop.is_set():
                self._grow()

    def alive(self) -> int:
        with self._lock:
            return len(self._serving)

    def _grow(self) -> None:
        """Start threads until ``target`` serve (lock held)."""
        while len(self._serving) < self.target:
            i = len(self._threads)
            t = threading.Thread(
                target=self._work, args=(i,), name=f"conveyor-{self.stage.name}-{i}", daemon=True
            )
            self._threads.append(t)
            self._serving.add(i)
            t.start()

    def _work(self, worker: int) -> None:
        fn, close = worker_function(
            self.stage.fn, self.stage.kind, self.stage.initial, self.stage.init
        )
        try:
            if self._backlog is not None:
                self._serve_async(worker, fn, self._backlog)
            else:
                self._serve(worker, fn)
        finally:
            close_quietly(close, self.stage.name)
            close_thread_loop()
            with self._lock:
                self._serving.discard(worker)

    def _serve(self, worker: int, fn: Callable[[Any], Any]) -> None:
        while True:
            task = self._inbox.get()
            if task is None:
                return
            outcome = self._run(worker, fn, task)
            with self._lock:
                self._running.pop(worker, None)
                if worker in self._abandoned:
                    return  # timed out: the watchdog reported it and replaced us
                retire = len(self._serving) > self.target
                if retire:
                    self._serving.discard(worker)
            self.post(outcome)
            if retire:
                return

    def _serve_async(self, worker: int, fn: Callable[[Any], Any], backlog: Backlog) -> None:
        s = self.stage
        serving = asyncthreads.serve(
            worker,
            fn,
            kind=s.kind,
            concurrency=s.concurrency,
            timeout=s.timeout,
            cache=self.cache,
            backlog=backlog,
            post=self.post,
            retire=self._retire,
            cancelled=self._cancelled,
        )
        thread_loop().run_until_complete(serving)

    def _retire(self, worker: int) -> bool:
        """Whether ``worker`` is one too many for the target: then it no longer serves."""
        with self._lock:
            if len(self._serving) > self.target:
                self._serving.discard(worker)
                return True
            return False

    def _run(self, worker: int, fn: Callable[[Any], Any], task: Task) -> Outcome:
        """Run ``task``; every path ends in its outcome."""
        s = self.stage
        running = self._running
        cancelled = self._cancelled.is_set

        def on_unit(unit: int) -> None:
            if cancelled():
                raise _Cancelled
            running[worker] = (task, unit, monotonic_ns())

        def unless_cancelled(unit: int) -> None:  # no timeout: no watchdog reads `running`
            if cancelled():
                raise _Cancelled

        try:
            return run_task(
                fn,
                s.kind,
                task.units,
                worker=worker,
                task_id=task.id,
                is_async=s.is_async,
                concurrency=s.concurrency,
                timeout=s.timeout,
                cache=self.cache,
                on_unit=on_unit if s.timeout is not None else unless_cancelled,
            )
        except _Cancelled:
            return not_run(task, worker)  # the run is ending; nobody reads this
        except BaseException as exc:  # a bug in conveyor itself: fail the unit, loudly
            unit = running[worker][1] if worker in running else 0
            return Outcome(task.id, worker, [], [], [failure(unit, exc)])

    def _watch(self) -> None:
        assert self.stage.timeout is not None
        limit = int(self.stage.timeout * 1e9)
        poll = min(0.05, self.stage.timeout / 4)
        while not self._stop.wait(poll):
            now = monotonic_ns()
            with self._lock:
                late = [
                    (worker, task, unit)
                    for worker, (task, unit, started) in self._running.items()
                    if now - started > limit
                ]
                for worker, _, _ in late:
                    self._abandoned.add(worker)
                    self._serving.discard(worker)
                    del self._running[worker]
                self._grow()
            for worker, task, unit in late:
                lost = LostWorker(pid=None, exitcode=None, unit_index=unit, timed_out=True)
                self.post(Outcome(task.id, worker, [], [], lost=lost))

    def shutdown(self, *, cancel: bool) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
            self._stop.set()
            threads = list(self._threads)
            abandoned = set(self._abandoned)
        if cancel:
            self._cancelled.set()
        if self._backlog is not None:
            self._backlog.close()
        for _ in threads:
            self._inbox.put(None)
        # A thread inside a long call cannot be interrupted; it is a daemon and exits at
        # its next unit, so a cancelled run waits for all of them at most JOIN_SECONDS.
        deadline = None if not cancel else monotonic() + JOIN_SECONDS
        for i, t in enumerate(threads):
            if i in abandoned:
                continue  # still inside a call that timed out; it exits when that returns
            t.join(timeout=None if deadline is None else max(0.0, deadline - monotonic()))
        if self._watchdog is not None:
            self._watchdog.join()
