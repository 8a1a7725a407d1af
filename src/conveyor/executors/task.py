"""The one function that runs a task, in the caller, in a thread or in a process.

A task is a list of *units*, each one call of the stage's function (an item for
map and flat_map, a list of items for batch and collect). Every executor runs a
task with :func:`run_task`, so the semantics of a stage are written once:

- units run in order and the task stops at the first unit that raises; the
  units after it did not run (the scheduler sends them again, free);
- ``async def`` functions run every unit on the thread's event loop, up to
  ``concurrency`` at once (:func:`run_async_task`; a threads worker runs several
  tasks so at once); a failing unit does not discard the others' results, so a
  call that succeeded is never repeated;
- whatever a unit raises is reported as a :class:`~conveyor.executors.base.Failure`,
  any ``BaseException`` included (fatal when it is not an ``Exception``), except
  that a task running in the caller's own thread lets ``KeyboardInterrupt`` and
  ``SystemExit`` through: they are the user's, and end the run.

Workers see values only; keys stay with the scheduler, which pairs results with
keys when the outcome comes back. That keeps what crosses a process boundary small.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from collections.abc import Callable
from time import monotonic_ns
from typing import Any

from conveyor.executors.base import CacheSpec, Failure, Outcome, materialise


class _Loop(threading.local):
    loop: asyncio.AbstractEventLoop | None = None


_loops = _Loop()


def thread_loop() -> asyncio.AbstractEventLoop:
    # One persistent event loop per thread: creating one per task costs ~100 µs.
    if _loops.loop is None or _loops.loop.is_closed():
        _loops.loop = asyncio.new_event_loop()
    return _loops.loop


def close_thread_loop() -> None:
    """Close this thread's event loop, if async tasks ever made one."""
    loop, _loops.loop = _loops.loop, None
    if loop is not None and not loop.is_closed():
        loop.close()


def failure(unit: int, exc: BaseException) -> Failure:
    """``exc``, raised by unit ``unit``, as a Failure (call it inside the ``except``)."""
    return Failure(unit, exc, traceback.format_exc(), fatal=not isinstance(exc, Exception))


def run_task(
    fn: Callable[[Any], Any],
    kind: str,
    units: list[Any],
    *,
    worker: int,
    task_id: int,
    is_async: bool = False,
    concurrency: int = 1,
    timeout: float | None = None,
    on_unit: Callable[[int], None] | None = None,
    cache: CacheSpec | None = None,
    in_caller: bool = False,
) -> Outcome:
    """Call ``fn`` on each unit of a task and report what it returned or raised.

    ``on_unit(i)`` is called before unit i starts (workers use it to publish which
    item they hold, and threads to stop early when the run is cancelled; what it
    raises propagates). ``in_caller``: the task runs in the thread that iterates
    the run, so ``KeyboardInterrupt`` and ``SystemExit`` propagate.
    """
    if is_async:

        async def whole_task() -> Outcome:
            sem = asyncio.Semaphore(concurrency)
            return await run_async_task(
                fn, kind, units, worker, task_id, sem, timeout, cache, in_caller
            )

        return thread_loop().run_until_complete(whole_task())
    if cache is not None:  # the cache's own module: looked up, then computed and stored
        from conveyor.cache._engine import run_cached

        return run_cached(fn, kind, units, worker, task_id, on_unit, cache, in_caller)
    results: list[Any] = []
    append = results.append
    stamps = [monotonic_ns()]
    stamp = stamps.append
    flat = kind == "flat_map"
    for i, unit in enumerate(units):
        if on_unit is not None:
            on_unit(i)
        try:
            r = fn(unit)
            if flat:
                r = materialise(r)
        except BaseException as exc:  # the worker reports it; the scheduler decides
            if in_caller and isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            stamp(monotonic_ns())
            return Outcome(task_id, worker, results, stamps, [failure(i, exc)])
        stamp(monotonic_ns())
        append(r)
    return Outcome(task_id, worker, results, stamps)


async def run_async_task(
    fn: Callable[[Any], Any],
    kind: str,
    units: list[Any],
    worker: int,
    task_id: int,
    sem: asyncio.Semaphore,
    timeout: float | None = None,
    cache: CacheSpec | None = None,
    in_caller: bool = False,
) -> Outcome:
    """Run a task of an ``async def`` stage on the running event loop, each unit under
    ``sem`` (the worker's calls in flight) and every unit to its end: a failing unit
    never costs the others their results. Units overlap, so the outcome has each
    one's start and end. A cached stage looks every unit up first."""
    if cache is not None:
        from conveyor.cache._engine import run_cached_async

        async def misses(todo: list[Any]) -> Outcome:
            return await run_async_task(
                fn, kind, todo, worker, task_id, sem, timeout, None, in_caller
            )

        return await run_cached_async(units, worker, task_id, cache, in_caller, misses)
    n = len(units)
    results: list[Any] = [None] * n
    starts = [0] * n
    ends = [0] * n
    failures: list[Failure] = []

    async def one(i: int) -> None:
        async with sem:
            starts[i] = monotonic_ns()
            try:
                r = await asyncio.wait_for(fn(units[i]), timeout)
                results[i] = materialise(r) if kind == "flat_map" else r
            except BaseException as exc:  # CancelledError and SystemExit included
                if in_caller and isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                failures.append(failure(i, exc))
            ends[i] = monotonic_ns()

    if n == 1:
        await one(0)
    else:
        await asyncio.gather(*(one(i) for i in range(n)))
    failures.sort(key=lambda f: f.unit)
    return Outcome(task_id, worker, results, [*starts, max(ends)], failures, ends=ends)
