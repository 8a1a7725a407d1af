"""Frozen snapshots of a run's counters: what ``statistics()`` returns.

Snapshots are plain values, taken at one instant; they never change under you.
The full per-item record (timelines, latencies, the bottleneck) is the recorder's
job: see :mod:`conveyor.core.events`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class QueueStatistics:
    """A stage's input queue: its bound and how full it has been."""

    bound: int | None  # None: unbounded (a collect stage holds every item by design)
    depth: int
    peak_depth: int
    items_in: int
    items_out: int


@dataclasses.dataclass(frozen=True)
class StageStatistics:
    """One stage's counters.

    ``busy_seconds`` sums the time of every call, so ``busy_seconds / (workers *
    concurrency * elapsed)`` is the busy share of its workers (an ``async def``
    stage's worker has ``concurrency`` places for calls) and ``busy_seconds /
    items_in`` the mean service time per item.
    """

    name: str
    kind: str
    executor: str
    workers: int
    items_in: int  # items handed to the function
    items_out: int  # results it produced
    errors: int
    tasks: int  # chunks dispatched
    busy_workers: int  # workers running a task now
    busy_seconds: float
    queue: QueueStatistics
    retries: int = 0  # calls run again under the stage's retry policy
    dead_lettered: int = 0  # items skipped under on_error="skip"
    timeouts: int = 0  # calls that ran past the stage's timeout
    lost_workers: int = 0  # process workers that died mid-task (and were replaced)
    remade: int = 0  # results lost (or freed) and made again by re-running their task
    cache_hits: int = 0  # calls answered from the stage's cache
    calls: int = 0  # times the function was called, retries and repeats included
    live_workers: int = 0  # workers that can take a task now (converges on ``workers``)
    concurrency: int = 1  # calls in flight per worker (async def stages)

    @property
    def mean_service_seconds(self) -> float | None:
        return self.busy_seconds / self.items_in if self.items_in else None

    def busy_share(self, elapsed_seconds: float) -> float:
        """Share of the workers' time spent inside the function over ``elapsed_seconds``."""
        if elapsed_seconds <= 0:
            return 0.0
        return min(1.0, self.busy_seconds / (self.workers * self.concurrency * elapsed_seconds))


@dataclasses.dataclass(frozen=True)
class RunStatistics:
    """The whole run: its state, its clock, and each stage's counters (topological order)."""

    pipeline: str
    state: str  # pending | running | succeeded | failed | cancelled
    elapsed_seconds: float
    items_read: int  # taken from the source
    items_emitted: int  # results handed to the consumer
    stages: dict[str, StageStatistics]
    source_seconds: float = 0.0  # time spent inside the source, producing items
    # time conveyor's scheduler spent moving items (dispatch, routing, recording hooks)
    driver_seconds: float = 0.0

    @property
    def throughput(self) -> float:
        """Results per second over the run so far."""
        return self.items_emitted / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def __str__(self) -> str:
        """A few readable lines: the run, then one row per stage (``print(stats)``)."""
        head = (
            f"{self.pipeline}: {self.state}, {self.items_read} items read, "
            f"{self.items_emitted} results in {self.elapsed_seconds:.2f} s "
            f"({self.throughput:.1f} results/s)"
        )
        rows = [("stage", "executor", "in", "out", "errors", "busy s", "peak queue")]
        for s in self.stages.values():
            bound = "∞" if s.queue.bound is None else str(s.queue.bound)
            rows.append(
                (
                    s.name,
                    f"{s.executor}×{s.workers}",
                    str(s.items_in),
                    str(s.items_out),
                    str(s.errors),
                    f"{s.busy_seconds:.2f}",
                    f"{s.queue.peak_depth} / {bound}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head]
        for r in rows:
            cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)]
            lines.append("  " + "  ".join(cells).rstrip())
        return "\n".join(lines)

    def __repr__(self) -> str:
        """Short: the run's figures and its stages' names (``str()`` has the rest)."""
        return (
            f"RunStatistics(pipeline={self.pipeline!r}, state={self.state!r}, "
            f"elapsed_seconds={self.elapsed_seconds:.3f}, items_read={self.items_read}, "
            f"items_emitted={self.items_emitted}, stages={list(self.stages)})"
        )
