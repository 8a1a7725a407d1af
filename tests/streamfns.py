"""Stage functions and classes for the streaming tests; module level, so that process
workers can import them."""

from __future__ import annotations

import os
from typing import Any


class Tagger:
    """A class stage: one instance per worker; tags each item with the instance's id
    and the worker's process and thread, and counts its calls."""

    instances = 0

    def __init__(self, prefix: str = "") -> None:
        Tagger.instances += 1
        self.prefix = prefix
        self.calls = 0
        self.log = os.environ.get("CONVEYOR_TEST_CLOSE_LOG")

    def __call__(self, x: int) -> tuple[int, int, int]:
        import threading

        self.calls += 1
        return (x, id(self), os.getpid() * 1_000_003 + threading.get_ident() % 1_000_003)

    def close(self) -> None:
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{id(self)} {self.calls}\n")


class NeedsArgs:
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, x: int) -> str:
        return f"{self.path}:{x}"


class BrokenInit:
    def __init__(self) -> None:
        raise RuntimeError("model file missing")

    def __call__(self, x: int) -> int:
        return x


class AsyncScaler:
    def __init__(self) -> None:
        self.factor = 3

    async def __call__(self, x: int) -> int:
        return x * self.factor


def add(acc: int, x: int) -> int:
    return acc + x


def add_pair(a: int, b: int) -> int:
    return a + b


def count_words(acc: dict[str, int], word: str) -> dict[str, int]:
    acc[word] = acc.get(word, 0) + 1
    return acc


def merge_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    for k, v in b.items():
        a[k] = a.get(k, 0) + v
    return a


def plus_100(x: int) -> int:
    return x + 100


def times_10(x: int) -> int:
    return x * 10


def drop_odd(x: int) -> list[int]:
    return [] if x % 2 else [x]


def fail_on_3(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def joined(parts: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(parts.items()))


def batch_sizes(xs: list[Any]) -> int:
    return len(xs)


def megabyte(x: int) -> bytes:
    return bytes(1 << 20)


def sleep_ms(x: int) -> int:
    """A millisecond's work: a slow stage for its size."""
    import time

    time.sleep(0.001)
    return x


def size_of(b: bytes) -> int:
    return len(b)


def is_even(x: int) -> bool:
    return x % 2 == 0


def jitter_id(x: int) -> int:
    """``x``, after a pause that varies with it: items finish out of order."""
    import time

    if x % 7 == 0:
        time.sleep(0.0005)
    return x


class SlowToLoad:
    """Takes a while to set up (a model being loaded), then is quick per item."""

    def __init__(self) -> None:
        import time

        time.sleep(0.2)

    def __call__(self, x: int) -> int:
        return x


def line_chunk(i: int) -> list[str]:
    """20,000 lines of 50 characters: about 1 MB of text as a list of strings."""
    return [f"{i:>10} " + "x" * 39 for _ in range(20_000)]


def chunk_lines(chunk: list[str]) -> int:
    """Counts a chunk's lines, slowly: chunks pile up in front of it."""
    import time

    time.sleep(0.01)
    return len(chunk)
