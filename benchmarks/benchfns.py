"""Stage functions for the benchmarks, at module level so process workers import them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any


def produce(n: int) -> range:
    return range(n)


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def sleep4(x: int) -> int:
    time.sleep(0.004)
    return x


def sleep3(x: int) -> int:
    time.sleep(0.003)
    return x


def sleep5(x: int) -> int:
    time.sleep(0.005)
    return x


def spin(x: int) -> int:
    """About 1 ms of pure-Python arithmetic on this machine's cores."""
    total = 0
    for i in range(25_000):
        total += i * i % 7
    return x + total % 2


def touch(a: Any) -> Any:
    a[0] += 1
    return a


def plus_one(a: Any) -> Any:
    return a + 1


def queue_worker(fn_name: str, q_in: Any, q_out: Any) -> None:
    fn = globals()[fn_name]
    while True:
        a = q_in.get()
        if a is None:
            q_out.put(None)
            return
        q_out.put(fn(a))


def kilobytes(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield i.to_bytes(8, "little") * 128


def inc_bytes(b: bytes) -> bytes:
    return b[1:] + b[:1]


def slow_consumer(_item: Any) -> None:
    total = 0
    for i in range(60):
        total += i
