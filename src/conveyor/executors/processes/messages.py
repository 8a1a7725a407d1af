"""What crosses the pipes: tasks to a process worker, replies back, and blame.

A task travels as one pickle of ``(task_id, units)``; a reply as one pickle of::

    (task_id, stamps, results, failures, hits, uncached)
    results:  ("all", bytes)            every result in one pickle (the fast path)
              ("each", [bytes | None])  one pickle per unit (None: that unit failed)
    failures: [(unit, Packed, traceback, fatal)]    (Packed: see :mod:`.remote`)

The happy path costs one pickle and one unpickle per task each way, so a task's
results that share an object still share it when they arrive. A value that cannot
cross fails its own unit and no other:

- a unit the driver cannot pickle fails (the driver pickles the units one by one
  to find it; the units after it did not run, and run again);
- a unit the worker cannot unpickle fails: the worker salvages the task
  (:mod:`.salvage`), runs the units before it, and reports it failed;
- a result the worker cannot pickle: the worker pickles the results one by one
  and fails those that do not pickle;
- a result the driver cannot unpickle: the driver salvages the reply and fails
  the results that hold what could not be rebuilt.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

from conveyor.executors.base import Failure, Outcome, Task
from conveyor.executors.processes.remote import pack, rebuild
from conveyor.executors.processes.shm import SegmentRegistry, dumps, loads, salvage_loads

__all__ = ["decode_reply", "decode_task", "encode_reply", "unpicklable_task"]

_FIX = (
    "pass plain data (numbers, strings, lists, dicts, dataclasses, NumPy arrays) rather "
    "than open files, locks or connections, or run this stage on threads"
)
_RESULT_FIX = (
    "return plain data (numbers, strings, lists, dicts, NumPy arrays), or run this stage on threads"
)


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _failure(unit: int, message: str, cause: BaseException) -> Failure:
    error = TypeError(f"{message} ({type(cause).__name__}: {cause}); {_FIX}")
    error.__cause__ = cause
    return Failure(unit, error, _format(cause))


# --- the driver's side -----------------------------------------------------------------


def unpicklable_task(task: Task, exc: Exception, worker: int, registry: SegmentRegistry) -> Outcome:
    """The task's units cannot be pickled together: fail the first that cannot be
    pickled alone; the others did not run (they run again)."""
    bad = 0
    for i, unit in enumerate(task.units):
        try:
            dumps(unit, registry)
        except Exception:
            bad = i
            break
    message = "the item cannot be pickled to send it to a process worker"
    return Outcome(task.id, worker, [], [], [_failure(bad, message, exc)])


def decode_reply(reply: bytes, task_id: int, worker: int, registry: SegmentRegistry) -> Outcome:
    """A worker's reply to task ``task_id`` as an Outcome: each result that cannot be
    unpickled here fails its own unit."""
    # The worker answers its tasks in order: this is task_id (the id it sends is -1
    # when it could not read the task at all).
    _, stamps, (how, payload), raw, hits, uncached = pickle.loads(reply)
    failures = [Failure(unit, rebuild(packed, tb), tb, fatal) for unit, packed, tb, fatal in raw]
    if how == "all":
        try:
            results = loads(payload, registry)
        except Exception as exc:
            results = _salvage_results(payload, exc, failures, len(stamps) - 1, registry)
    else:
        results = _load_each(payload, failures, registry)
    if len(failures) > 1:
        failures.sort(key=lambda f: f.unit)
    return Outcome(task_id, worker, results, stamps, failures, hits=hits, uncached=uncached)


_CANNOT_UNPICKLE = "the stage's result cannot be unpickled in the driver"


def _salvage_results(
    payload: bytes, exc: Exception, failures: list[Failure], ran: int, registry: SegmentRegistry
) -> list[Any]:
    failed = {f.unit for f in failures}
    try:
        salvaged = salvage_loads(payload, registry)
        results = list(salvaged.value)
    except Exception:  # not even a list came back: every result is lost
        failures.extend(_result_failure(i, exc) for i in range(ran) if i not in failed)
        return [None] * ran
    blamed = False
    for i, r in enumerate(results):
        cause = salvaged.error_in(r)
        if cause is not None and i not in failed:
            results[i] = None
            failures.append(_result_failure(i, cause))
            blamed = True
    if salvaged.failures and not blamed:  # it failed, but no result shows where
        for i in range(len(results)):
            if i not in failed:
                results[i] = None
                failures.append(_result_failure(i, exc))
    return results


def _result_failure(unit: int, cause: BaseException) -> Failure:
    error = TypeError(f"{_CANNOT_UNPICKLE} ({type(cause).__name__}: {cause}); {_RESULT_FIX}")
    error.__cause__ = cause
    return Failure(unit, error, _format(cause))


def _load_each(
    payload: list[bytes | None], failures: list[Failure], registry: SegmentRegistry
) -> list[Any]:
    results: list[Any] = []
    for i, blob in enumerate(payload):
        if blob is None:
            results.append(None)  # a failed unit
            continue
        try:
            results.append(loads(blob, registry))
        except Exception as exc:
            results.append(None)
            failures.append(_result_failure(i, exc))
    return results


# --- the worker's side -----------------------------------------------------------------


def decode_task(
    data: bytes, registry: SegmentRegistry
) -> tuple[int | None, list[Any], Failure | None]:
    """``(task_id, units, bad)``: the units to run, and the failure of the first unit
    that cannot be unpickled here (None if all can; the units after it do not run).
    ``task_id`` is None only if the message is not a task at all."""
    try:
        task_id, units = loads(data, registry)
        return task_id, units, None
    except Exception as exc:
        first = exc
    message = "the item cannot be unpickled in the process worker"
    try:
        salvaged = salvage_loads(data, registry)
        task_id, units = salvaged.value
    except Exception:
        return None, [], _failure(0, message, first)
    for i, unit in enumerate(units):
        cause = salvaged.error_in(unit)
        if cause is not None:
            return task_id, units[:i], _failure(i, message, cause)
    if not salvaged.failures:
        return task_id, units, None  # it loaded whole the second time
    return task_id, [], _failure(0, message, first)


def encode_reply(out: Outcome, registry: SegmentRegistry) -> bytes:
    """The reply to send for ``out``: every result in one pickle if they pickle
    together, else each on its own (those that do not pickle fail their unit)."""
    failures = [(f.unit, pack(f.error), f.traceback or "", f.fatal) for f in out.failures]
    try:
        results: tuple[str, Any] = ("all", dumps(out.results, registry)[0])
    except Exception:
        results = ("each", _dump_each(out.results, failures, registry))
    reply = (out.task_id, out.stamps, results, failures, out.hits, out.uncached)
    return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)


def _dump_each(
    results: list[Any], failures: list[Any], registry: SegmentRegistry
) -> list[bytes | None]:
    failed = {f[0] for f in failures}
    blobs: list[bytes | None] = []
    for i, r in enumerate(results):
        if i in failed:
            blobs.append(None)
            continue
        try:
            blobs.append(dumps(r, registry)[0])
        except Exception as exc:
            blobs.append(None)
            bad = TypeError(
                f"the stage's result cannot be pickled to send it back from the process "
                f"worker ({type(exc).__name__}: {exc}); {_RESULT_FIX}"
            )
            failures.append((i, pack(bad), _format(exc), False))
    return blobs
