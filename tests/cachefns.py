"""Stage functions of the cache tests, at module level so that process workers and
``conveyor cache verify`` can import them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


def read_file(path: str) -> str:
    """Depends on a file's content, which no fingerprint of the path can see."""
    return Path(path).read_text()


class Record:
    """An input that pickles but cannot be fingerprinted: it refers to itself (a
    reference cycle, like a node that holds its parent)."""

    def __init__(self, id: int, value: int) -> None:
        self.id = id
        self.value = value
        self.me = self


def record_id(r: Record) -> int:
    return r.id


def record_double(r: Record) -> int:
    return r.value * 2


LOCK = threading.Lock()


def guarded_double(x: int) -> int:
    """Reads a global that cannot be fingerprinted (a lock)."""
    with LOCK:
        return x * 2


def logged_triple(log: str, x: int) -> int:
    with open(log, "a") as f:
        f.write(f"{x}\n")
    return x * 3


def calls(log: str) -> list[int]:
    try:
        return [int(line) for line in Path(log).read_text().split()]
    except FileNotFoundError:
        return []


def identity(x: Any) -> Any:
    return x


async def async_logged_triple(log: str, x: int) -> int:
    """An ``async def`` stage that notes each call (the cache's tests count them)."""
    if x < 0:
        raise ValueError(f"negative: {x}")
    with open(log, "a") as f:
        f.write(f"{x}\n")
    return x * 3
