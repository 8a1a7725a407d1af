"""A stage while it runs: its bounded queue, its slots, its counters, and how its next
task is cut.

Plain state the scheduler owns and mutates from its one thread; ``statistics()``
turns it into the frozen snapshots of :mod:`conveyor.core.statistics`.

Flow control, exact and never exceeded::

    room(T) = bound(T) - len(queue(T)) - reserved(T)

A task of k units is cut only into room: it reserves its expected results in every
successor's queue, so a queue's depth never passes its bound and a slow consumer
stops the source from being read.

Chunking adapts: a task takes ceil(queued / free slots) units, capped so that it
lasts about the executor's ``target_task_ns`` (from a moving average of unit times)
and by room. A fast stream forms large tasks that amortise the hand-off cost; a
slow stream, whose queue holds one item at a time, sends single items at once.
"""

from __future__ import annotations

import heapq
import operator
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.core.events import StageInfo
from conveyor.core.statistics import QueueStatistics, StageStatistics
from conveyor.executors.base import Task, Traits

if TYPE_CHECKING:
    from conveyor.core.stage import Stage
    from conveyor.executors.base import Executor

Key = tuple[Any, ...]
Item = tuple[Key, Any]

MAX_UNITS = 1024
EWMA = 0.3  # weight of the newest task in the moving average of unit times


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

    def __init__(self, stage: Stage, bound: int | None, traits: Traits) -> None:
        self.stage = stage
        self.name = stage.name
        self.kind = stage.kind
        self.traits = traits
        self.queue = StageQueue(bound)
        self.targets: list[StageQueue] = []  # successors' queues, or the output buffer
        self.successors: list[StageState] = []
        self.predecessors: list[StageState] = []
        self.overflow: deque[tuple[StageQueue, list[Item]]] = deque()
        self.executor: Executor | None = None
        self.slots = stage.workers
        # Tasks dispatched beyond the running ones wait at the executor, so that a
        # worker starts its next task at once instead of waiting for our round trip.
        self.prefetch = traits.in_flight_per_worker
        self.busy = 0  # tasks in flight
        self.unit_ns = 0.0  # moving average of one unit's service time; 0: unknown
        self.drained = False  # no item will ever reach this stage again, and it is idle
        self.items_in = 0
        self.items_out = 0
        self.calls = 0
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
        self._retry_seq = 0

    @property
    def free(self) -> int:
        """Tasks the executor may still be sent."""
        return self.slots * (1 + self.prefetch) - self.busy

    def unit_cap(self) -> int:
        """Units per task so that a task lasts about the executor's target time."""
        if self.traits.max_units is not None:
            return self.traits.max_units  # never from the clock: such runs stay deterministic
        if self.unit_ns <= 0:
            return 1  # measure one unit before sending more
        cap = int(self.traits.target_task_ns / self.unit_ns) or 1
        if self.stage.is_async:
            cap *= self.stage.concurrency
        return min(cap, MAX_UNITS)

    def measured(self, units: int, busy_ns: int) -> None:
        """``units`` units ran for ``busy_ns`` in all: update the moving average."""
        self.busy_ns += busy_ns
        unit = busy_ns / units
        self.unit_ns = unit if self.unit_ns <= 0 else (1 - EWMA) * self.unit_ns + EWMA * unit

    # --- cutting tasks ------------------------------------------------------------------

    def next_task(self, task_id: int, room: int, *, upstream_done: bool) -> Task | None:
        """The next task from the queue, within ``room``; None when none can be cut yet
        (a batch waits for a full batch until its upstream is done)."""
        q = self.queue
        n = len(q.items)
        if self.kind in ("map", "flat_map"):
            k = min(n, -(-n // self.free), self.unit_cap(), room)
            items = q.take(k)
            return Task(
                task_id, self.name, list(map(_value, items)), list(map(_key, items)), reserved=k
            )
        if self.kind == "collect":
            if not upstream_done:
                return None
            items = sorted(q.take(n), key=lambda it: it[0])
            return self._batch_task(task_id, [items], reserved=1)
        size = self.stage.size
        assert size is not None
        batches = n // size + (1 if n % size and upstream_done else 0)
        if batches == 0:
            return None
        per_batch = size if self.stage.split else 1
        k = min(batches, -(-batches // self.free), self.unit_cap(), max(1, room // per_batch))
        units = [q.take(min(size, len(q.items))) for _ in range(k)]
        out = sum(len(u) for u in units) if self.stage.split else k
        return self._batch_task(task_id, units, reserved=min(out, room))

    def retry_task(self, task_id: int, room: int, now_ns: int) -> Task:
        """A task of units due to run again (retries go before new items)."""
        cap = min(self.unit_cap(), max(1, room))
        units: list[list[Item]] = []
        while self.retry and self.retry[0][0] <= now_ns and len(units) < cap:
            units.append(heapq.heappop(self.retry)[2])
        if self.kind in ("map", "flat_map"):
            items = [u[0] for u in units]
            return Task(
                task_id,
                self.name,
                list(map(_value, items)),
                list(map(_key, items)),
                reserved=len(items),
            )
        out = sum(len(u) for u in units) if self.stage.split else len(units)
        return self._batch_task(task_id, units, reserved=min(out, room))

    def partial_batches(self, task_id: int) -> Task:
        """Every queued item, cut into batches however full: nothing else can come."""
        size = self.stage.size
        assert size is not None
        items = self.queue.take(len(self.queue.items))
        units = [items[i : i + size] for i in range(0, len(items), size)]
        return self._batch_task(task_id, units, reserved=0)

    def _batch_task(self, task_id: int, units: list[list[Item]], *, reserved: int) -> Task:
        return Task(
            task_id,
            self.name,
            [[v for _, v in u] for u in units],
            [u[0][0] for u in units],
            batch_keys=[[k for k, _ in u] for u in units],
            reserved=reserved,
        )

    def requeue(self, task: Task, units: Sequence[int], ready_ns: int) -> None:
        """Run these units of ``task`` again from ``ready_ns`` on."""
        for i in units:
            self._retry_seq += 1
            heapq.heappush(self.retry, (ready_ns, self._retry_seq, unit_items(task, i)))

    def info(self, predecessors: tuple[str, ...], successors: tuple[str, ...]) -> StageInfo:
        """The stage as instruments see it when the run starts."""
        s = self.stage
        return StageInfo(
            self.name, self.kind, s.executor, s.workers, self.queue.bound, predecessors, successors
        )

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
            calls=self.calls,
            live_workers=self.executor.alive() if self.executor is not None else 0,
        )


_key = operator.itemgetter(0)
_value = operator.itemgetter(1)


def unit_items(task: Task, i: int) -> list[Item]:
    """The items unit ``i`` of ``task`` was made of (one, or a batch's)."""
    if task.batch_keys is None:
        return [(task.keys[i], task.units[i])]
    return list(zip(task.batch_keys[i], task.units[i], strict=True))
