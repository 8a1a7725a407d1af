"""Stage functions for the executor contract suite (module level: process workers import them).

Each records its calls in a log file named in the item, one line per call, so that a
test can count calls in any executor, processes included.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    """An item that knows where to log its calls."""

    n: int
    log: str
    payload: Any = None


def _log(job: Job) -> None:
    with open(job.log, "a", encoding="utf-8") as f:
        f.write(f"{job.n}\n")


def calls(log: str) -> list[int]:
    try:
        with open(log, encoding="utf-8") as f:
            return [int(line) for line in f]
    except FileNotFoundError:
        return []


def in_worker_process() -> bool:
    """A process worker, or a Ray actor (conveyor sets CONVEYOR_WORKER in those)."""
    return multiprocessing.parent_process() is not None or bool(os.environ.get("CONVEYOR_WORKER"))


def slow_echo(x: Any) -> Any:
    """Return the item a moment later, so that the next task waits in the worker's pipe."""
    time.sleep(0.01)
    return x


def size_and_sum(data: Any) -> tuple[int, int]:
    """How many bytes arrived, and a checksum of a few of them."""
    mv = memoryview(data).cast("B")
    return len(mv), sum(mv[:: max(1, len(mv) // 64)])


def first_field(row: dict[str, Any]) -> Any:
    return row["n"]


def lambda_for_odd(job: Job) -> Any:
    _log(job)
    return (lambda: job.n) if job.n % 2 else job.n


class Rejected(Exception):
    """An error returned as a value; it pickles but does not unpickle (keyword-only init)."""

    def __init__(self, item: int, *, reason: str) -> None:
        super().__init__(item)
        self.reason = reason


def rejected_for_odd(job: Job) -> Any:
    _log(job)
    return Rejected(job.n, reason="odd") if job.n % 2 else job.n


def exit_on_3(job: Job) -> int:
    _log(job)
    if job.n == 3:
        sys.exit("stop here")
    return job.n


def interrupt_on_3(job: Job) -> int:
    _log(job)
    if job.n == 3:
        raise KeyboardInterrupt
    return job.n


async def cancel_on_3(job: Job) -> int:
    _log(job)
    await asyncio.sleep(0)
    if job.n == 3:
        raise asyncio.CancelledError()
    return job.n


async def async_fail_on_17(job: Job) -> int:
    _log(job)
    await asyncio.sleep(0.001 * (job.n % 3))
    if job.n == 17:
        raise ValueError("17 is bad")
    return job.n


def die_once_on_5(job: Job) -> int:
    """A worker process dies mid-task the first time it meets item 5 (marker: the log)."""
    first = 5 not in calls(job.log)
    _log(job)
    if job.n == 5 and first and in_worker_process():
        os._exit(9)
    return job.n


def die_after_5(job: Job) -> int:
    """After answering item 5 (once), the worker process kills itself: between tasks."""
    first = 5 not in calls(job.log)
    _log(job)
    if job.n == 5 and first and in_worker_process():

        def later() -> None:
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=later, daemon=True).start()
    return job.n


def logged(job: Job) -> int:
    _log(job)
    return job.n


def slow_logged(job: Job) -> int:
    _log(job)
    time.sleep(0.005)
    return job.n


def ident(x: Any) -> Any:
    return x


# --- exceptions and values that do not cross a process boundary as they are ----------


class KeywordOnly:
    """A value that pickles but cannot be unpickled (its constructor's second
    argument is keyword-only, and pickle passes it by position)."""

    def __init__(self, n: int, *, reason: str) -> None:
        self.n = n
        self.reason = reason

    def __reduce__(self) -> Any:
        return (KeywordOnly, (self.n, self.reason))


class RefusesState:
    """Pickles, but unpickling it fails half-way: ``__setstate__`` raises."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __setstate__(self, state: Any) -> None:
        raise ValueError("this state is refused")


class ArgsError(Exception):
    """A constructor that takes other arguments than its message: it pickles, but
    unpickling calls ArgsError(message), which fails."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"error {code}: {detail}")
        self.code = code
        self.detail = detail


class LockedError(Exception):
    """An attribute that cannot be pickled (a lock) beside one that can."""

    def __init__(self, n: int) -> None:
        super().__init__(f"item {n} is locked")
        self.n = n
        self.lock = threading.Lock()


def _make_ghost_error() -> type[ValueError]:
    class GhostError(ValueError):
        """Made by a factory, as some libraries make their error classes: no import
        finds it by its name, so pickle cannot send it."""

    return GhostError


GhostError = _make_ghost_error()


class Unprintable(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


def raise_args(job: Job) -> int:
    _log(job)
    raise ArgsError(job.n, "no such thing")


def raise_locked(job: Job) -> int:
    _log(job)
    raise LockedError(job.n)


def raise_ghost(job: Job) -> int:
    _log(job)
    raise GhostError(f"item {job.n} is haunted")


def unprintable_on_7(job: Job) -> int:
    _log(job)
    if job.n == 7:
        raise Unprintable(job.n)
    return job.n


def record_of(job: Job) -> dict[str, Any]:
    """A result that is not a plain value (a dict). When ``job.payload`` is "lock" or
    "keyword-only" it holds a value that cannot be pickled, or that pickles but cannot
    be unpickled: one result that cannot travel among many that can."""
    _log(job)
    if job.payload == "lock":
        return {"n": job.n, "bad": threading.Lock()}
    if job.payload == "keyword-only":
        return {"n": job.n, "bad": KeywordOnly(job.n, reason="made in the worker")}
    return {"n": job.n}


def payload_n(job: Job) -> int:
    _log(job)
    return job.n


_SHARED = {"config": "one object for every result"}


def shared_pair(n: int) -> tuple[int, dict[str, str]]:
    """Results that all hold the same object."""
    return n, _SHARED


class DiskError(OSError):
    """An OSError whose constructor takes a keyword-only argument."""

    def __init__(self, path: str, *, why: str) -> None:
        super().__init__(28, f"{path}: {why}")
        self.path = path


class Sealed(Exception):
    """A class that refuses subclasses: no proxy of it can be made."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code} {detail}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("Sealed cannot be subclassed")


def array_or_stray(job: Job) -> Any:
    """A 2 MiB array (it travels through shared memory), or for item 1 an array beside
    a value that cannot be unpickled in the driver."""
    import numpy as np

    _log(job)
    array = np.full(2 * 1024 * 1024, job.n, dtype=np.uint8)
    return [array, KeywordOnly(job.n, reason="stray")] if job.n == 1 else array
