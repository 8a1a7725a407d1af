"""The batch-size sweet spot: throughput, latency and memory of a batch stage per size.

:func:`sweep_batch_sizes` calls a batch function on sample batches of several
sizes and measures, per size (median of ``repeats`` calls)::

    seconds      one call on a batch of that size
    throughput   size / seconds                     items per second
    latency      seconds + fill wait, the fill wait  (size - 1) / (2 · arrival_rate):
                 the mean time an item waits for its batch to fill, when items
                 arrive at ``arrival_rate`` per second (0 when not given)
    peak memory  tracemalloc's peak during the call  (Python allocations; NumPy's
                 buffers are traced too, a GPU's memory is not)

Recommendation: among the sizes within the latency and memory budgets, the
smallest whose throughput reaches ``good_enough`` (default 90%) of the best: past
it, a bigger batch buys little throughput and costs latency and memory.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["BatchPoint", "BatchSweep", "sweep_batch_sizes"]


@dataclasses.dataclass(frozen=True)
class BatchPoint:
    """One batch size's measurement."""

    size: int
    seconds: float  # per call
    throughput: float  # items per second
    latency_s: float  # per item: the call plus the mean fill wait
    peak_bytes: int


@dataclasses.dataclass(frozen=True)
class BatchSweep:
    """Every size measured, and the recommended one (``None`` if none fits the budgets)."""

    points: tuple[BatchPoint, ...]
    recommended: int | None
    reason: str

    def render(self) -> str:
        lines = [f"{'size':>6} {'items/s':>10} {'latency ms':>11} {'peak KiB':>9}"]
        for p in self.points:
            mark = "  <- recommended" if p.size == self.recommended else ""
            lines.append(
                f"{p.size:>6} {p.throughput:>10.1f} {p.latency_s * 1e3:>11.2f} "
                f"{p.peak_bytes / 1024:>9.1f}{mark}"
            )
        lines.append(self.reason)
        return "\n".join(lines)


def sweep_batch_sizes(
    fn: Callable[[list[Any]], Any],
    sample: Sequence[Any],
    sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    *,
    repeats: int = 3,
    arrival_rate: float | None = None,
    latency_budget_s: float | None = None,
    memory_budget_bytes: int | None = None,
    good_enough: float = 0.9,
) -> BatchSweep:
    """Measure ``fn`` on batches of each size drawn from ``sample`` (cycled when a
    size exceeds it) and recommend one (module docstring)."""
    if not sample:
        raise ValueError("sweep_batch_sizes needs a non-empty sample of items to batch")
    if any(not isinstance(n, int) or n < 1 for n in sizes) or not sizes:
        raise ValueError(f"sizes={list(sizes)!r}; give whole numbers of at least 1")
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r}; give at least 1")
    points = []
    for size in sorted(set(sizes)):
        batch = [sample[i % len(sample)] for i in range(size)]
        times, peaks = [], []
        for _ in range(repeats):
            tracing = tracemalloc.is_tracing()
            if not tracing:
                tracemalloc.start()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            t = time.perf_counter()
            fn(list(batch))
            times.append(time.perf_counter() - t)
            peaks.append(max(0, tracemalloc.get_traced_memory()[1] - base))
            if not tracing:
                tracemalloc.stop()
        sec = sorted(times)[len(times) // 2]
        fill = (size - 1) / (2 * arrival_rate) if arrival_rate else 0.0
        points.append(
            BatchPoint(
                size=size,
                seconds=sec,
                throughput=size / sec if sec > 0 else float("inf"),
                latency_s=sec + fill,
                peak_bytes=max(peaks),
            )
        )
    return recommend(points, latency_budget_s, memory_budget_bytes, good_enough)


def recommend(
    points: Sequence[BatchPoint],
    latency_budget_s: float | None = None,
    memory_budget_bytes: int | None = None,
    good_enough: float = 0.9,
) -> BatchSweep:
    """The recommendation rule of the module docstring, over measured points."""
    ok = [
        p
        for p in points
        if (latency_budget_s is None or p.latency_s <= latency_budget_s)
        and (memory_budget_bytes is None or p.peak_bytes <= memory_budget_bytes)
    ]
    if not ok:
        return BatchSweep(
            tuple(points),
            None,
            "no size fits the latency and memory budgets; relax them or try smaller sizes",
        )
    best = max(p.throughput for p in ok)
    pick = min((p for p in ok if p.throughput >= good_enough * best), key=lambda p: p.size)
    return BatchSweep(
        tuple(points),
        pick.size,
        f"recommended batch size {pick.size}: {pick.throughput:.1f} items/s, "
        f"{pick.throughput / best:.0%} of the best within budget, at "
        f"{pick.latency_s * 1e3:.2f} ms latency and {pick.peak_bytes / 1024:.1f} KiB",
    )
