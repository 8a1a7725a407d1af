"""Log-bucketed histograms of durations: bounded, mergeable, within 0.4% of exact.

A :class:`Histogram` counts integer durations (nanoseconds) in buckets whose width
is at most 1/128 of their lower bound, so any quantile it reports is within
``RELATIVE_ERROR`` (2^-8 + 2^-23, about 0.39%: half a bucket, plus float32
rounding) of the exact quantile of the same values (linear interpolation between
order statistics, NumPy's default). Count, sum, minimum and maximum are exact. Two
histograms merge by adding their counts.

The bucket of a value is the upper 16 bits of its IEEE-754 single-precision
float: 1 sign bit, 8 exponent bits and the 7 leading mantissa bits. That makes
bucketing a C-speed pipeline, with no Python code per value::

    array("f", values)                 each value as a float32
    memoryview(...).cast("H")[1::2]    the upper half of each (little-endian)
    Counter.update(...)                counted in C

so a recorder can fold thousands of durations at a time for about 0.1 µs each.
The buckets cover 1 ns to hours with at most 128 per doubling: a histogram of
durations between 1 µs and 1 hour holds at most 4,100 buckets, whatever the count.

::

    h = Histogram()
    h.add_many([1_000, 2_000, 3_000])   # ns
    h.quantile(0.5)                     # 2000.0 (± 0.39%)
"""

from __future__ import annotations

import collections
import dataclasses
import math
import struct
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import mul
from typing import Any

__all__ = [
    "EXACT_KEPT",
    "RELATIVE_ERROR",
    "Histogram",
    "HistogramCounter",
    "add_exact",
    "bounds_of",
    "count_elements",
    "count_into",
    "key_of",
    "keys_of",
]

SUB_BITS = 7  # mantissa bits kept: 2^7 buckets per doubling
# Half a bucket's width over its lower bound, plus float32's rounding of the value.
RELATIVE_ERROR = 2.0 ** -(SUB_BITS + 1) + 2.0**-23
_HIGH = 1 if sys.byteorder == "little" else 0  # which 16-bit half holds sign and exponent
EXACT_KEPT = 2048  # distinct values a HistogramCounter counts exactly before bucketing
# collections' C helper behind Counter.update: counts an iterable into any dict.
count_elements: Callable[[dict[Any, int], Iterable[Any]], None] = getattr(
    collections,
    "_count_elements",
    Counter.update,  # type: ignore[arg-type]
)


def keys_of(values: Iterable[float]) -> memoryview:
    """The bucket key of each value, computed in C (a view of their float32 upper halves)."""
    return memoryview(array("f", values)).cast("B").cast("H")[_HIGH::2]


def count_into(counts: dict[int, int], values: Iterable[float]) -> None:
    """Add one to ``counts[key_of(v)]`` for each value, at C speed (no Python per value)."""
    count_elements(counts, keys_of(values))


def add_exact(counts: dict[int, int], exact: dict[int, int]) -> None:
    """Add ``exact`` (value -> count) into ``counts`` (bucket key -> count)."""
    for key, c in zip(keys_of(list(exact)), exact.values(), strict=True):
        counts[key] = counts.get(key, 0) + c


def key_of(value: float) -> int:
    """The bucket of ``value``: the upper 16 bits of its float32."""
    return struct.unpack("<HH", struct.pack("<f", value))[1]


def bounds_of(key: int) -> tuple[float, float]:
    """The values ``[low, high)`` of bucket ``key`` (for a negative value, high < low)."""
    low = struct.unpack("<f", struct.pack("<HH", 0, key))[0]
    high = struct.unpack("<f", struct.pack("<HH", 0, key + 1))[0] if key & 0x7FFF < 0x7F80 else low
    return low, high


def _middle(key: int) -> float:
    low, high = bounds_of(key)
    return (low + high) / 2


@dataclasses.dataclass
class Histogram:
    """Counts of durations (ns) in log buckets; exact count, sum, min and max.

    ``counts`` maps a bucket key (:func:`key_of`) to how many values fell in it.
    """

    counts: dict[int, int] = dataclasses.field(default_factory=dict)
    count: int = 0
    total: int = 0  # exact sum of the values
    low: int | None = None  # exact minimum
    high: int | None = None  # exact maximum

    def add_many(self, values: Sequence[int]) -> None:
        """Count every value of ``values`` (in bulk: C-speed passes, no Python per value)."""
        if not values:
            return
        count_into(self.counts, values)
        self.count += len(values)
        self.total += sum(values)
        lo, hi = min(values), max(values)
        self.low = lo if self.low is None or lo < self.low else self.low
        self.high = hi if self.high is None or hi > self.high else self.high

    def add(self, value: int, times: int = 1) -> None:
        """Count ``value`` ``times`` times."""
        if times <= 0:
            return
        key = key_of(value)
        self.counts[key] = self.counts.get(key, 0) + times
        self.count += times
        self.total += value * times
        self.low = value if self.low is None or value < self.low else self.low
        self.high = value if self.high is None or value > self.high else self.high

    def merge(self, other: Histogram) -> Histogram:
        """A new histogram counting the values of both."""
        counts = dict(self.counts)
        for k, c in other.counts.items():
            counts[k] = counts.get(k, 0) + c
        lows = [x for x in (self.low, other.low) if x is not None]
        highs = [x for x in (self.high, other.high) if x is not None]
        return Histogram(
            counts,
            self.count + other.count,
            self.total + other.total,
            min(lows) if lows else None,
            max(highs) if highs else None,
        )

    def copy(self) -> Histogram:
        return Histogram(dict(self.counts), self.count, self.total, self.low, self.high)

    @property
    def mean(self) -> float:
        """The exact mean (ns); NaN when empty."""
        return self.total / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """The q-quantile (ns), interpolating linearly between order statistics like
        :func:`conveyor.analysis.quantile`; within ``RELATIVE_ERROR`` of the exact one.
        NaN when empty."""
        if not self.count:
            return math.nan
        pos = q * (self.count - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, self.count - 1)
        ranked = self._ranked()
        a, b = self._at(ranked, lo), self._at(ranked, hi)
        return a + (b - a) * (pos - lo)

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """Several quantiles at once (one sort of the buckets)."""
        if not self.count:
            return [math.nan] * len(qs)
        ranked = self._ranked()
        out = []
        for q in qs:
            pos = q * (self.count - 1)
            lo = math.floor(pos)
            hi = min(lo + 1, self.count - 1)
            a, b = self._at(ranked, lo), self._at(ranked, hi)
            out.append(a + (b - a) * (pos - lo))
        return out

    def _ranked(self) -> list[tuple[float, int]]:
        """(bucket middle, cumulative count) in increasing order of value."""
        out = []
        total = 0
        for mid, c in sorted((_middle(k), c) for k, c in self.counts.items() if c > 0):
            total += c
            out.append((mid, total))
        return out

    def _at(self, ranked: list[tuple[float, int]], rank: int) -> float:
        """The value of order statistic ``rank`` (0-based), from its bucket."""
        assert self.low is not None and self.high is not None
        if rank <= 0:
            return float(self.low)
        if rank >= self.count - 1:
            return float(self.high)
        lo_i, hi_i = 0, len(ranked) - 1
        while lo_i < hi_i:  # the first bucket whose cumulative count passes rank
            mid = (lo_i + hi_i) // 2
            if ranked[mid][1] > rank:
                hi_i = mid
            else:
                lo_i = mid + 1
        return min(max(ranked[lo_i][0], float(self.low)), float(self.high))

    # --- persistence ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": sorted([k, c] for k, c in self.counts.items()),
            "count": self.count,
            "total": self.total,
            "min": self.low,
            "max": self.high,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        return cls(
            {int(k): int(c) for k, c in d["counts"]},
            int(d["count"]),
            int(d["total"]),
            d["min"],
            d["max"],
        )


class HistogramCounter:
    """A histogram being filled fast: values are first counted exactly in ``exact``
    (value -> count; callers add to it directly, e.g. ``count_elements(c.exact,
    map(sub, ends, starts))`` for a task's worth of values in C), and move into the
    log buckets (:meth:`settle`) once ``EXACT_KEPT`` distinct values have gathered,
    so it stays small whatever it counts. :meth:`value` gives the :class:`Histogram`."""

    __slots__ = ("count", "counts", "exact", "high", "low", "spread", "total")

    def __init__(self) -> None:
        self.exact: dict[int, int] = {}
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.low: int | None = None
        self.high: int | None = None
        self.spread = False  # EXACT_KEPT distinct values were seen: count into buckets

    def add_many(self, values: Sequence[int]) -> None:
        """Count ``values``: exactly while few distinct values have come, then straight
        into the log buckets (C-speed passes), where exact counts would only be moved
        again: most durations in ns are distinct."""
        if not values:
            return
        if not self.spread:
            count_elements(self.exact, values)
            if len(self.exact) > EXACT_KEPT:
                self.settle()
                self.spread = True
            return
        count_into(self.counts, values)
        self.count += len(values)
        self.total += sum(values)
        lo, hi = min(values), max(values)
        if self.low is None or lo < self.low:
            self.low = lo
        if self.high is None or hi > self.high:
            self.high = hi

    def settle(self) -> None:
        """Move the exactly counted values into the log buckets."""
        exact = self.exact
        if not exact:
            return
        self.count += sum(exact.values())
        self.total += sum(map(mul, exact, exact.values()))
        lo, hi = min(exact), max(exact)
        if self.low is None or lo < self.low:
            self.low = lo
        if self.high is None or hi > self.high:
            self.high = hi
        add_exact(self.counts, exact)
        exact.clear()

    def value(self) -> Histogram:
        self.settle()
        return Histogram(dict(self.counts), self.count, self.total, self.low, self.high)
