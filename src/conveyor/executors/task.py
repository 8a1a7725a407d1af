"""Tasks and their outcomes, and the one function that runs a task.

A *task* is a chunk of work for one stage: a list of *units*, each one call of the
stage's function (an item for map and flat_map, a list of items for batch and
collect). Every executor runs a task with :func:`run_task`, in the caller, in a
thread or in a process, so the semantics of a stage are written once.

Workers see values only; keys stay with the scheduler, which pairs results with
keys when the outcome comes back. That keeps what crosses a process boundary small.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import traceback
from collections.abc import Callable, Iterable
from time import monotonic_ns
from typing import Any


@dataclasses.dataclass
class Task:
    """A chunk of units for one stage, as the scheduler dispatched it."""

    id: int
    stage: str
    units: list[Any]  # what the function is called on, one call per unit
    keys: list[tuple[Any, ...]]  # one per unit (a batch's first key)
    batch_keys: list[list[tuple[Any, ...]]] | None = None  # batch/collect: each unit's item keys
    reserved: int = 0  # downstream queue places held for this task's results
    dispatched_ns: int = 0


@dataclasses.dataclass
class Outcome:
    """What came back from a task.

    ``results[i]`` is unit i's return value (a flat_map's iterable already made a
    list). ``stamps`` holds n + 1 monotonic times for the n units that ran: unit i
    ran from ``stamps[i]`` to ``stamps[i + 1]`` (one clock read per unit). If a unit
    raised, ``error`` holds the exception and ``results`` stop before it, while
    ``stamps`` include it. ``lost`` is set instead when the worker process died.
    """

    task_id: int
    worker: int
    results: list[Any]
    stamps: list[int]
    error: BaseException | None = None
    error_traceback: str | None = None
    lost: LostWorker | None = None
    hits: list[int] = dataclasses.field(default_factory=list)  # units answered by the cache
    uncached: str | None = None  # type of an input that could not be fingerprinted


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """What a worker needs to consult a stage's cache: picklable, made by the driver."""

    root: str
    stage: str  # the key's qualified stage name: "<pipeline>/<stage>"
    code: str  # fingerprint of the stage's function


_caches: dict[str, Any] = {}
_caches_lock = threading.Lock()


def _cache_at(root: str) -> Any:
    with _caches_lock:
        if root not in _caches:
            from conveyor.cache import StageCache

            _caches[root] = StageCache(root)
        return _caches[root]


@dataclasses.dataclass(frozen=True)
class LostWorker:
    """A worker stopped mid-task: its process died, or it ran past the stage's timeout
    and was killed (a process) or abandoned (a thread). Results of the task are lost."""

    pid: int | None
    exitcode: int | None
    unit_index: int  # which unit of the task it was running (-1: unknown)
    timed_out: bool = False
    started: bool = True  # False: the task was still waiting at the worker: nothing ran


class _Loop(threading.local):
    loop: asyncio.AbstractEventLoop | None = None


_loops = _Loop()


def _thread_loop() -> asyncio.AbstractEventLoop:
    # One persistent event loop per thread: creating one per task costs ~100 µs.
    if _loops.loop is None or _loops.loop.is_closed():
        _loops.loop = asyncio.new_event_loop()
    return _loops.loop


def close_thread_loop() -> None:
    """Close this thread's event loop, if async tasks ever made one."""
    loop, _loops.loop = _loops.loop, None
    if loop is not None and not loop.is_closed():
        loop.close()


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
) -> Outcome:
    """Call ``fn`` on each unit of a task and collect what it returned or raised.

    Stops at the first unit that raises. ``on_unit(i)`` is called before unit i
    starts (process workers use it to publish which item they hold).
    """
    if is_async:
        return _run_async(fn, kind, units, worker, task_id, concurrency, timeout)
    if cache is not None:
        return _run_cached(fn, kind, units, worker, task_id, on_unit, cache)
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
                r = _materialise(r)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the worker reports it; the scheduler decides
            stamp(monotonic_ns())
            return Outcome(task_id, worker, results, stamps, exc, traceback.format_exc())
        stamp(monotonic_ns())
        append(r)
    return Outcome(task_id, worker, results, stamps)


def _run_cached(
    fn: Callable[[Any], Any],
    kind: str,
    units: list[Any],
    worker: int,
    task_id: int,
    on_unit: Callable[[int], None] | None,
    spec: CacheSpec,
) -> Outcome:
    """``run_task`` for a cached stage: look each unit up by content first."""
    cache = _cache_at(spec.root)
    results: list[Any] = []
    stamps = [monotonic_ns()]
    hits: list[int] = []
    uncached: str | None = None
    for i, unit in enumerate(units):
        if on_unit is not None:
            on_unit(i)
        key = cache.key(spec.stage, spec.code, unit, warn=False)
        if key is None:
            uncached = (
                uncached or f"an input of type {type(unit).__qualname__} cannot be fingerprinted"
            )
        else:
            hit, value = cache.get(key)
            if hit:
                results.append(value)
                hits.append(i)
                stamps.append(monotonic_ns())
                continue
        try:
            r = fn(unit)
            if kind == "flat_map":
                r = _materialise(r)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            stamps.append(monotonic_ns())
            out = Outcome(task_id, worker, results, stamps, exc, traceback.format_exc())
            out.hits, out.uncached = hits, uncached
            return out
        if key is not None:
            try:
                stored = cache.put(key, r, stage=spec.stage, warn=False)
            except OSError as exc:  # a full or read-only disk must not fail the item
                uncached = uncached or f"writing the cache failed ({exc})"
            else:
                if not stored:
                    uncached = (
                        uncached or f"a result of type {type(r).__qualname__} cannot be pickled"
                    )
        stamps.append(monotonic_ns())
        results.append(r)
    return Outcome(task_id, worker, results, stamps, hits=hits, uncached=uncached)


def _materialise(r: Any) -> list[Any]:
    if isinstance(r, (str, bytes)) or not isinstance(r, Iterable):
        raise TypeError(
            f"a flat_map stage must return an iterable of results (a list, a generator), "
            f"got {type(r).__name__}; return [value] for one result, [] for none"
        )
    return list(r)


def _run_async(
    fn: Callable[[Any], Any],
    kind: str,
    units: list[Any],
    worker: int,
    task_id: int,
    concurrency: int,
    timeout: float | None,
) -> Outcome:
    # Units overlap here, so each has its own start and end; stamps are the
    # starts in unit order plus the last end, which keeps the Outcome contract
    # (busy time is then the task's wall time, not the sum over overlapping units).
    n = len(units)
    results: list[Any] = [None] * n
    starts = [0] * n
    errors: list[tuple[int, BaseException, str]] = []

    async def one(i: int, sem: asyncio.Semaphore) -> None:
        async with sem:
            starts[i] = monotonic_ns()
            try:
                r = await asyncio.wait_for(fn(units[i]), timeout)
                results[i] = _materialise(r) if kind == "flat_map" else r
            except Exception as exc:
                errors.append((i, exc, traceback.format_exc()))

    async def all_units() -> None:
        sem = asyncio.Semaphore(concurrency)
        await asyncio.gather(*(one(i, sem) for i in range(n)))

    _thread_loop().run_until_complete(all_units())
    end = monotonic_ns()
    if not errors:
        return Outcome(task_id, worker, results, [*starts, end])
    i, exc, tb = min(errors, key=lambda e: e[0])
    return Outcome(task_id, worker, results[:i], [*starts[: i + 1], end], exc, tb)
