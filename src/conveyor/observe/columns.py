"""The per-unit detail of a recording as compact columns, for its file (version 3).

A recording's detail window (:class:`~conveyor.observe.recording.UnitDetail`) is the
only part of it that grows with the units it covers, and it was written as one JSON
list per unit key and four absolute nanosecond stamps per unit. Version 3 writes it
column by column, each in the smallest form that gives the same values back::

    keys      a key (n,) of one int as n; any other key as a list (nested: lists)
    worker    the worker index of each unit
    started   each unit's start minus the previous unit's (the first's minus the
              recording's ``started_ns``): a few digits instead of nineteen
    duration  each unit's end minus its start
    failed    the indices of the units that raised

Encoding and decoding run at C speed (``map``, ``itertools.accumulate``), with no
Python code per unit but the keys' one comprehension. The columns decode to exactly
the lists version 2 held, so every figure read from a recording is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from operator import add, sub
from typing import Any

__all__ = ["decode_detail", "encode_detail"]

Columns = tuple[list[tuple[Any, ...]], list[int], list[int], list[int], list[int]]


def encode_detail(
    keys: Sequence[tuple[Any, ...]],
    worker: Sequence[int],
    started: Sequence[int],
    finished: Sequence[int],
    failed: Sequence[int],
    *,
    base: int,
) -> dict[str, Any]:
    """The detail's columns as a JSON-ready dict (module docstring); ``base`` is the
    recording's ``started_ns``."""
    starts = list(started)
    return {
        "keys": [k[0] if len(k) == 1 and type(k[0]) is int else list(k) for k in keys],
        "worker": list(worker),
        "started": list(map(sub, starts, [base, *starts[:-1]])),
        "duration": list(map(sub, finished, starts)),
        "failed": list(failed),
    }


def decode_detail(columns: dict[str, Any], *, base: int) -> Columns:
    """The lists :func:`encode_detail` was given: (keys, worker, started, finished,
    failed). Raises KeyError, TypeError or ValueError on damaged columns."""
    keys = [(k,) if type(k) is int else _key(k) for k in columns["keys"]]
    worker = [int(w) for w in columns["worker"]]
    started = list(accumulate(columns["started"], initial=base))[1:]
    durations = columns["duration"]
    if not len(keys) == len(worker) == len(started) == len(durations):
        raise ValueError(
            f"detail columns of different lengths: {len(keys)} keys, {len(worker)} workers, "
            f"{len(started)} starts, {len(durations)} durations"
        )
    finished = list(map(add, started, durations))
    failed = [int(i) for i in columns["failed"]]
    return keys, worker, started, finished, failed


def _key(k: Any) -> tuple[Any, ...]:
    if not isinstance(k, list):
        raise TypeError(f"a unit key is a list or an int, not {type(k).__name__}")
    return tuple(_key(x) if isinstance(x, list) else x for x in k)
