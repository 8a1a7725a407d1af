"""How a threads worker serves an ``async def`` stage: many tasks at once on its loop.

A worker of an async stage keeps up to the stage's ``concurrency`` calls in flight
at all times, across tasks: it takes a new task from the :class:`Backlog` as soon as
a call ends, instead of waiting for the task's slowest call (a task of retries, or
one whose last call is slow, would otherwise leave the worker's other places empty).
Each task still gets exactly one outcome, posted when its last unit ends; a unit's
failure fails that unit alone, so a call that succeeded is never made again.

The backlog is shared by the stage's workers and guarded by a lock; a worker with
room and nothing to take waits on an :class:`asyncio.Event` that :meth:`Backlog.put`
sets from the scheduler's thread (``call_soon_threadsafe``), so an idle worker costs
nothing and a task starts as soon as it is sent.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from conveyor.executors.base import CacheSpec, Outcome, Post, Task
from conveyor.executors.task import failure, run_async_task


class Backlog:
    """Tasks sent to an async stage and not yet taken, and the workers waiting for one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: deque[Task] = deque()
        # worker -> how to wake it (its loop, its event), for every serving worker
        self._workers: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._waiting: set[int] = set()  # workers with room that found nothing to take
        self.closed = False

    def join(self, worker: int, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._lock:
            self._workers[worker] = (loop, event)

    def leave(self, worker: int) -> None:
        with self._lock:
            self._workers.pop(worker, None)
            self._waiting.discard(worker)

    def put(self, task: Task) -> None:
        with self._lock:
            self._tasks.append(task)
            if self._waiting:
                loop, event = self._workers[self._waiting.pop()]
                loop.call_soon_threadsafe(event.set)

    def take(self, worker: int) -> Task | None:
        """The next task, or None: then the worker's event is set when one comes."""
        with self._lock:
            if self._tasks:
                self._waiting.discard(worker)
                return self._tasks.popleft()
            if not self.closed:
                self._waiting.add(worker)
            return None

    def close(self) -> None:
        """No task will come any more (or the run is cancelled): wake every worker."""
        with self._lock:
            self.closed = True
            for loop, event in self._workers.values():
                loop.call_soon_threadsafe(event.set)
            self._waiting.clear()


async def serve(
    worker: int,
    fn: Callable[[Any], Any],
    *,
    kind: str,
    concurrency: int,
    timeout: float | None,
    cache: CacheSpec | None,
    backlog: Backlog,
    post: Post,
    retire: Callable[[int], bool],
    cancelled: threading.Event,
) -> None:
    """Run tasks from ``backlog`` with up to ``concurrency`` calls in flight until the
    backlog closes (or ``retire(worker)`` says this worker is one too many), posting
    each task's outcome; on ``cancelled``, stop at once (nobody reads outcomes then)."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    sem = asyncio.Semaphore(concurrency)
    accepted = 0  # units of the tasks taken and not yet ended
    running: set[asyncio.Task[None]] = set()
    retiring = False

    async def run(task: Task) -> None:
        nonlocal accepted, retiring
        try:
            outcome = await run_async_task(
                fn, kind, task.units, worker, task.id, sem, timeout, cache
            )
        except BaseException as exc:  # a bug in conveyor itself: fail the unit, loudly
            if cancelled.is_set():
                return
            outcome = Outcome(task.id, worker, [], [], [failure(0, exc)])
        finally:
            accepted -= len(task.units)
            wake.set()
        if cancelled.is_set():
            return
        if not retiring and retire(worker):
            retiring = True
        post(outcome)

    backlog.join(worker, loop, wake)
    try:
        while True:
            while accepted < concurrency and not retiring and not cancelled.is_set():
                task = backlog.take(worker)
                if task is None:
                    break
                accepted += len(task.units)
                t = loop.create_task(run(task))
                running.add(t)
                t.add_done_callback(running.discard)
            if cancelled.is_set():
                for t in running:
                    t.cancel()
                await asyncio.gather(*running, return_exceptions=True)
                return
            if not running and (retiring or backlog.closed):
                return
            await wake.wait()
            wake.clear()
    finally:
        backlog.leave(worker)
