"""What an object keeps alive: the length and size of every container reachable from it.

Tests of memory use it to compare an observer after 10^4 and 10^5 units: a container
whose length grows with the units is a leak, whatever the machine.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any


def walk(obj: Any, path: str, seen: set[int], out: dict[str, tuple[int, int]]) -> None:
    """For every container reachable from ``obj`` (lists, dicts, deques, tuples, sets,
    and the attributes of conveyor's own objects): its path, length and bytes."""
    if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type(None)):
        return
    seen.add(id(obj))
    children: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        children = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
        children += [(f"{path}.key", k) for k in obj]
    elif isinstance(obj, list | tuple | deque | set):
        children = [(f"{path}[]", v) for v in obj]
    elif type(obj).__module__.startswith("conveyor"):
        names = [*vars(obj)] if hasattr(obj, "__dict__") else []
        names += [n for n in getattr(type(obj), "__slots__", ()) if hasattr(obj, n)]
        children = [(f"{path}.{n}", getattr(obj, n)) for n in names]
    else:
        return
    if not type(obj).__module__.startswith("conveyor"):
        size = sys.getsizeof(obj) + sum(
            sys.getsizeof(c) for _, c in children if isinstance(c, int | float | str)
        )
        length, old = len(obj), out.get(path, (0, 0))
        out[path] = (max(length, old[0]), old[1] + size)  # lists in lists: the longest
    for p, child in children:
        walk(child, p, seen, out)
