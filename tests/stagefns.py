"""Stage functions for the tests, at module level so process workers can import them."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import conveyor as cv


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def square(x: int) -> int:
    return x * x


def negate(x: int) -> int:
    return -x


def jitter(x: int) -> int:
    """Sleep a pseudo-random 0-2 ms, so that workers finish out of order."""
    time.sleep(((x * 7919) % 5) / 2000)
    return x


def slow(x: Any) -> Any:
    time.sleep(0.002)
    return x


def very_slow(x: Any) -> Any:
    time.sleep(0.5)
    return x


def explode(x: int) -> list[int]:
    """flat_map: x copies of x (zero drops the item)."""
    return [x] * (x % 4)


def evens_only(x: int) -> list[int]:
    return [x] if x % 2 == 0 else []


def words(line: str) -> list[str]:
    return line.split()


def total(xs: list[int]) -> int:
    return sum(xs)


def batch_square(xs: list[int]) -> list[int]:
    return [x * x for x in xs]


def batch_len(xs: list[Any]) -> int:
    return len(xs)


def batch_wrong_length(xs: list[int]) -> list[int]:
    return xs[:-1]


def fail_on_13(x: int) -> int:
    if x == 13:
        raise ValueError(f"thirteen is unlucky: {x}")
    return x


def kill_on_7(x: int) -> int:
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def exit_on_7(x: int) -> int:
    if x == 7:
        os._exit(3)
    return x


def segfault_on_7(x: int) -> int:
    if x == 7:
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return x


def pid_of(_x: Any) -> int:
    return os.getpid()


def not_iterable(x: int) -> int:
    return x


def array_plus_one(a: Any) -> Any:
    return a + 1


def array_touch(a: Any) -> Any:
    a[0] += 1
    return a


class Unpicklable(Exception):
    def __init__(self, x: int) -> None:
        super().__init__(x)
        self.lock = threading.Lock()

    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this exception")


def raise_unpicklable(x: int) -> int:
    raise Unpicklable(x)


async def async_double(x: int) -> int:
    await asyncio.sleep(0.005)
    return x * 2


class ConcurrencyProbe:
    """An async callable that records the most calls it saw in flight at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    async def __call__(self, x: int) -> int:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.01)
        with self.lock:
            self.now -= 1
        return x


@cv.stage(executor="processes", workers=2)
def decorated_triple(x: int) -> int:
    """A module-level function decorated in place for process workers."""
    return 3 * x


def flaky(x: int) -> int:
    """Fails one call in five, whatever the item: only retries get every item through."""
    import random

    if random.random() < 0.2:
        raise ConnectionError(f"flaky on {x}")
    return x


def suicidal(x: int) -> int:
    """A process worker that kills itself now and then, at random."""
    import random

    if random.random() < 0.03:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def kill_once(marker: str, x: int) -> int:
    """SIGKILL the worker the first time item 7 is seen (the marker file remembers)."""
    if x == 7 and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return x


RELEASE = threading.Event()  # set by a test to end the hang of an abandoned thread


def hang_on_5(x: int) -> int:
    """Item 5 hangs for a minute (a thread: until the test sets RELEASE)."""
    if x == 5:
        RELEASE.wait(60.0)
    return x


async def async_hang_on_5(x: int) -> int:
    await asyncio.sleep(60.0 if x == 5 else 0.001)
    return x


def bad_on_multiples_of_10(x: int) -> int:
    if x % 10 == 0:
        raise ValueError(f"bad record {x}")
    return x


def logged_square(log: str, x: int) -> int:
    """Square x, appending x to the log file: a side effect that counts real calls."""
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    return x * x


def calls(log: str) -> list[int]:
    try:
        with open(log) as fh:
            return [int(line) for line in fh]
    except FileNotFoundError:
        return []


def row_total(row: dict[str, Any]) -> int:
    """A table row (a dict) to the sum of its ``id`` and ``count``."""
    return int(row["id"]) + int(row["count"])


def batch_ids(batch: Any) -> list[int]:
    """A ``pyarrow.RecordBatch`` to its ``id`` column, as a list."""
    return [int(i) for i in batch.column("id").to_pylist()]


def visible_devices(_x: Any) -> tuple[int, str | None]:
    """(the worker's pid, the GPUs it sees): what Stage(gpus=...) gave it."""
    time.sleep(0.005)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


class Counted:
    """A class stage: one instance per worker, which says who it is."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, _x: Any) -> tuple[int, int, int]:
        self.calls += 1
        return os.getpid(), id(self), self.calls


def on_node(x: int) -> tuple[int, str]:
    """(x * 10, the Ray node it ran on), a moment later: the pinned middle stage."""
    import ray

    time.sleep(0.02)
    return x * 10, ray.get_runtime_context().get_node_id()


def negate_pair(pair: tuple[int, str]) -> tuple[int, str]:
    return -pair[0], pair[1]


def payload(i: int) -> Any:
    """256 KiB filled with ``i``: kept in the object store, not inlined."""
    import numpy as np

    return np.full(1 << 15, float(i))


def payload_on_node(a: Any) -> tuple[Any, str]:
    """(``a`` times 10, the Ray node it ran on), a moment later: the pinned middle
    stage of large payloads."""
    import ray

    time.sleep(0.02)
    return a * 10, ray.get_runtime_context().get_node_id()


def payload_value(pair: tuple[Any, str]) -> tuple[float, str]:
    """A slower consumer: results of the middle stage wait for it in the object store."""
    time.sleep(0.05)
    return -float(pair[0][0]), pair[1]


def big_array(i: int) -> Any:
    """A 4 MiB array filled with ``i``: a large payload."""
    import numpy as np

    return np.full(1 << 19, float(i))


def array_first(a: Any) -> float:
    return float(a[0])


def slow_array_first(a: Any) -> float:
    """A slow consumer of large payloads."""
    time.sleep(0.05)
    return float(a[0])


def array_first_fail_on_3(a: Any) -> float:
    if a[0] == 3:
        raise ValueError("3 is bad")
    return float(a[0])


def type_name(x: Any) -> str:
    return type(x).__name__


def lock_on_5(x: int) -> Any:
    """x, but an unpicklable lock for 5."""
    import threading

    return threading.Lock() if x == 5 else x


class RefOwner:
    """A Ray actor's body that owns objects it puts: they are lost when it dies."""

    def put(self, value: Any) -> list[Any]:
        import ray

        return [ray.put(value)]


def lock_or_array(x: int) -> Any:
    """A 4 MiB array, but an unpicklable lock for 5."""
    import threading

    return threading.Lock() if x == 5 else big_array(x)


def logged_array_first(log: str, a: Any) -> float:
    """a[0], logging each call (a cached stage's calls)."""
    with open(log, "a") as fh:
        fh.write(f"{int(a[0])}\n")
    return float(a[0])


def array_negate(a: Any) -> Any:
    return -a


def joined_first(parts: dict[str, Any]) -> tuple[float, ...]:
    """Each branch's a[0], by branch name (a join stage's input)."""
    return tuple(float(parts[k][0]) for k in sorted(parts))


def lock_on_3(x: int) -> Any:
    """A result that cannot be pickled, for item value 3 only."""
    return threading.Lock() if x == 3 else x


def devices_or_die(marker: str, at: int, x: int) -> tuple[int, str | None]:
    """:func:`visible_devices`, but the worker SIGKILLs itself the first time item
    ``at`` is seen (the marker file remembers)."""
    if x == at and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return visible_devices(x)
