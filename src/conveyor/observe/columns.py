"""The per-unit detail of a recording as compact binary columns (file version 3).

A recording's detail window (:class:`~conveyor.observe.recording.UnitDetail`) is the
only part of it that grows with the units it covers (``conveyor run --detail all``
keeps every unit). Version 2 wrote it as one JSON list per unit key and absolute
nanosecond stamps, so that reading a recording made millions of Python objects even
for a report that never looks at them. Version 3 writes each column as one string::

    keys      when every key holds L ints (a source item's index, then a flat_map's
              index...): L columns, ``{"ints": [...]}``, each as ``started`` below;
              any other keys: a JSON list of lists, as in version 2
    worker    the worker index of each unit
    started   each unit's start minus the previous unit's (the first's minus the
              recording's ``started_ns``): small numbers, which compress well
    duration  each unit's end minus its start
    failed    the indices of the units that raised (a JSON list)

A column is ``CODE:base64(zlib(bytes))`` of its numbers (the keys' and ``started``
as differences from the previous value), little-endian signed integers of the
narrowest width that holds them all (``CODE``: ``b``, ``h``, ``i`` or ``q``, 1 to 8
bytes): encoded and decoded at C speed
(``array``, ``zlib``, ``itertools.accumulate``), with no Python code per unit.
:class:`LazyDetail` decodes a column only when something reads it (the trace, the
Gantt chart), so ``conveyor analyze`` of a recording that kept every unit never
makes an object per unit. The columns decode to exactly the lists version 2 held.
"""

from __future__ import annotations

import base64
import sys
import zlib
from array import array
from collections.abc import Sequence
from itertools import accumulate, chain
from operator import add, itemgetter, sub
from typing import Any

__all__ = ["decode_column", "encode_column", "encode_detail", "numbers", "unit_keys"]

_SWAP = sys.byteorder != "little"  # columns are little-endian on disk


# The narrowest little-endian signed integer that holds a column: its typecode and
# the bounds of its values. A column is written as "CODE:" + base64(zlib(bytes)).
_WIDTHS = (("b", 1 << 7), ("h", 1 << 15), ("i", 1 << 31), ("q", 1 << 63))


def encode_column(values: Sequence[int], *, delta_from: int | None = None) -> str:
    """``values`` (differences from the previous, the first from ``delta_from``, when
    given) as ``CODE:base64(zlib(little-endian ints))``, in the narrowest of 1, 2, 4
    or 8 bytes that holds them all; OverflowError past 64 bits."""
    if delta_from is None:
        packed = array("q", values)
    else:
        packed = array("q", map(sub, values, chain((delta_from,), values)))
    low, high = (min(packed), max(packed)) if packed else (0, 0)
    code = next(c for c, b in _WIDTHS if -b <= low and high < b)
    if _SWAP:  # a big-endian machine writes the full width, swapped
        packed.byteswap()
        code = "q"
    # The low bytes of each little-endian int64, picked at C speed (a strided view).
    step = 8 // array(code).itemsize
    view = memoryview(packed).cast("B").cast(code)  # type: ignore[call-overload]
    data = view[::step].tobytes()
    return code + ":" + base64.b64encode(zlib.compress(data, 1)).decode("ascii")


def decode_column(text: str, count: int, *, delta_from: int | None = None) -> list[int]:
    """The ``count`` numbers :func:`encode_column` was given; ValueError if ``text`` is
    damaged or holds another count (never inflated past ``count`` numbers: a column
    crafted to expand without end is refused, not decompressed)."""
    if not isinstance(text, str):
        raise TypeError(f"a detail column is a string, not {type(text).__name__}")
    code, _, encoded = text.partition(":")
    if code not in dict(_WIDTHS):
        raise ValueError(f"a detail column of unknown width {code[:8]!r}")
    size = array(code).itemsize * count
    try:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(base64.b64decode(encoded, validate=True), size + 1)
    except (zlib.error, ValueError) as exc:  # binascii.Error is a ValueError
        raise ValueError(f"a damaged detail column ({exc})") from None
    if len(raw) != size or not inflate.eof:
        raise ValueError(f"a detail column that does not hold {count} units")
    packed = array(code, raw)
    if _SWAP:
        packed.byteswap()
    if delta_from is None:
        return packed.tolist()
    return list(accumulate(packed, initial=delta_from))[1:]


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
    out: dict[str, Any] = {"units": len(starts)}
    out["keys"] = _encode_keys(keys)
    out["worker"] = encode_column(worker)
    out["started"] = encode_column(starts, delta_from=base)
    out["duration"] = encode_column(list(map(sub, finished, starts)))
    out["failed"] = list(failed)
    return out


def numbers(columns: dict[str, Any], name: str, base: int) -> list[int]:
    """Column ``name`` of encoded detail ``columns`` as a list: ``started`` and
    ``finished`` as absolute stamps (``base``: the recording's ``started_ns``)."""
    if name == "finished":
        return list(map(add, numbers(columns, "started", base), numbers(columns, "duration", base)))
    if name == "failed":
        return [int(i) for i in columns["failed"]]
    return decode_column(
        columns[name], columns["units"], delta_from=base if name == "started" else None
    )


def unit_keys(columns: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The keys of encoded detail ``columns``, as tuples."""
    keys = columns["keys"]
    if isinstance(keys, dict):
        n = columns["units"]
        out = list(zip(*(decode_column(c, n, delta_from=0) for c in keys["ints"]), strict=True))
        if not keys["ints"]:  # keys of no element
            out = [()] * columns["units"]
    else:
        out = [_key(k) for k in keys]
    if len(out) != columns["units"]:
        raise ValueError(f"detail column 'keys' holds {len(out)} units, not {columns['units']}")
    return out


def _encode_keys(keys: Sequence[tuple[Any, ...]]) -> dict[str, list[str]] | list[Any]:
    lengths = set(map(len, keys))
    if len(lengths) == 1 and set(map(type, chain.from_iterable(keys))) == {int}:
        try:  # keys of L ints each (a root, a flat_map's index...): L columns
            return {
                "ints": [
                    encode_column(list(map(itemgetter(j), keys)), delta_from=0)
                    for j in range(lengths.pop())
                ]
            }
        except OverflowError:  # an int past 64 bits: the general form
            pass
    return [list(k) for k in keys]


def _key(k: Any) -> tuple[Any, ...]:
    if not isinstance(k, list):
        raise TypeError(f"a unit key is a list, not {type(k).__name__}")
    return tuple(_key(x) if isinstance(x, list) else x for x in k)
