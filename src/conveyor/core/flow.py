"""A stage while it runs: its bounded queue, its slots, its counters.

Plain state the scheduler owns and mutates; ``statistics()`` turns it into the
frozen snapshots of :mod:`conveyor.core.statistics`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.core.stage import Stage
from conveyor.core.statistics import QueueStatistics, StageStatistics

if TYPE_CHECKING:
    from conveyor.executors import Executor

Key = tuple[Any, ...]
Item = tuple[Key, Any]

# How long one task should last, per executor: long enough to amortise the
# hand-off (tens of µs for threads, a few hundred µs for processes), short
# enough to keep latency low and work spread over the workers.
TARGET_TASK_NS = {"sync": 1_000_000, "threads": 2_000_000, "processes": 10_000_000}
MAX_UNITS = 1024
SYNC_UNITS = 64  # a sync task runs in the caller: its size only sets latency


class StageQueue:
    """A bounded FIFO of items with its counters; ``bound`` None means unbounded."""

    __slots__ = ("bound", "items", "items_in", "items_out", "peak", "reserved")

    def __init__(self, bound: int | None) -> None:
        self.bound = bound
        self.items: deque[Item] = deque()
        self.reserved = 0  # places held by in-flight upstream tasks
        self.items_in = 0
        self.items_out = 0
        self.peak = 0

    def room(self) -> int:
        if self.bound is None:
            return MAX_UNITS * 64
        return self.bound - len(self.items) - self.reserved

    def put(self, items: Sequence[Item]) -> None:
        self.items.extend(items)
        self.items_in += len(items)
        if len(self.items) > self.peak:
            self.peak = len(self.items)

    def take(self, n: int) -> list[Item]:
        q = self.items
        if n == len(q):
            taken = list(q)
            q.clear()
        else:
            taken = [q.popleft() for _ in range(n)]
        self.items_out += n
        return taken

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            self.bound, len(self.items), self.peak, self.items_in, self.items_out
        )


class StageState:
    """A stage while it runs: its queue, its workers' slots, its counters."""

    def __init__(self, stage: Stage, bound: int | None) -> None:
        self.stage = stage
        self.name = stage.name
        self.kind = stage.kind
        self.queue = StageQueue(bound)
        self.targets: list[StageQueue] = []  # successors' queues, or the output buffer
        self.successors: list[StageState] = []
        self.predecessors: list[StageState] = []
        self.overflow: deque[tuple[StageQueue, list[Item]]] = deque()
        self.executor: Executor | None = None
        self.slots = stage.workers
        # Tasks dispatched beyond the running ones, one per worker, wait in the
        # executor's inbox so that a worker starts its next task at once instead of
        # waiting for the scheduler's round trip. Sync tasks finish inside submit().
        self.prefetch = 0 if stage.executor == "sync" else 1
        self.busy = 0
        self.unit_ns = 0.0  # moving average of one unit's service time; 0: unknown
        self.target_ns = TARGET_TASK_NS[stage.executor]
        self.drained = False  # no item will ever reach this stage again, and it is idle
        self.items_in = 0
        self.items_out = 0
        self.errors = 0
        self.retries = 0
        self.dead_lettered = 0
        self.timeouts = 0
        self.lost_workers = 0
        self.cache_hits = 0
        self.tasks = 0
        self.busy_ns = 0
        # Units to run again: (ready time, sequence, the unit's items), soonest first.
        self.retry: list[tuple[int, int, list[Item]]] = []

    def unit_cap(self) -> int:
        """Units per task so that a task lasts about ``target_ns``."""
        if self.stage.executor == "sync":
            return SYNC_UNITS  # never from the clock: sync runs must be deterministic
        if self.unit_ns <= 0:
            return 1  # measure one unit before sending more
        cap = int(self.target_ns / self.unit_ns) or 1
        if self.stage.is_async:
            cap *= self.stage.concurrency
        return min(cap, MAX_UNITS)

    def statistics(self) -> StageStatistics:
        s = self.stage
        return StageStatistics(
            name=self.name,
            kind=self.kind,
            executor=s.executor,
            workers=self.slots,
            items_in=self.items_in,
            items_out=self.items_out,
            errors=self.errors,
            tasks=self.tasks,
            busy_workers=min(self.busy, self.slots),
            busy_seconds=self.busy_ns / 1e9,
            queue=self.queue.statistics(),
            retries=self.retries,
            dead_lettered=self.dead_lettered,
            timeouts=self.timeouts,
            lost_workers=self.lost_workers,
            cache_hits=self.cache_hits,
        )
