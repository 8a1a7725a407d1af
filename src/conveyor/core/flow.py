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
import sys
from collections import deque
from collections.abc import Sequence
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.core.events import StageInfo
from conveyor.core.statistics import QueueStatistics, StageStatistics
from conveyor.executors.base import Task, Traits

if TYPE_CHECKING:
    from conveyor.core.merge import Fold, Join
    from conveyor.core.stage import Stage
    from conveyor.executors.base import Executor

Key = tuple[Any, ...]
Item = tuple[Key, Any]

MAX_UNITS = 1024
# A default queue grows past its bound while its items are small: up to ``grow_to``
# items (MAX_UNITS) as long as they hold at most this many bytes in all. Larger tasks
# of small items amortise each hand-off (a process round trip carries ~8x the rows);
# items over GROWN_BYTES / bound (8 KiB at a bound of 128) keep the plain bound.
GROWN_BYTES = 1 << 20
# ... and only while its stage's units are quick: a unit this long or longer dwarfs a
# task's hand-off already, and a longer queue would only make items wait longer.
QUICK_NS = 100_000
EWMA = 0.3  # weight of the newest task in the moving average of unit times
_KEPT = (1.0, 0.8, 0.64, 0.512, 0.4096)  # an item size's average keeps 0.8 per new item


class StageQueue:
    """A bounded FIFO of items with its counters; ``bound`` None means unbounded.

    ``bytes_bound``, if set, bounds it in bytes too, from a moving average of the
    measured size of the items put (a sample of them); at least one item always fits.
    ``grow_to``, if set, lets the bound grow from ``bound`` up to ``grow_to`` items as
    long as they hold at most ``GROWN_BYTES`` and the consumer is ``quick`` (its units
    take under ``QUICK_NS``): the default queues of small items on fast stages.
    ``timed`` keeps when items arrived, for a batch's ``max_wait``.
    """

    __slots__ = (
        "arrivals",
        "bound",
        "bytes_bound",
        "floor",
        "grow_to",
        "item_bytes",
        "items",
        "items_in",
        "items_out",
        "peak",
        "quick",
        "reserved",
    )

    def __init__(
        self,
        bound: int | None,
        *,
        bytes_bound: int | None = None,
        timed: bool = False,
        grow_to: int | None = None,
        quick: bool = True,
    ) -> None:
        self.bound = bound
        self.bytes_bound = bytes_bound
        self.floor = bound
        self.grow_to = grow_to if bound is not None and grow_to and grow_to > bound else None
        self.quick = quick  # the consumer's units are quick: a grown bound pays (see pace)
        self.item_bytes = 0.0  # moving average of an item's size; 0: not measured yet
        self.items: deque[Item] = deque()
        self.reserved = 0  # places held by in-flight upstream tasks
        self.items_in = 0
        self.items_out = 0
        self.peak = 0
        # (arrival ns, items) per put, oldest first: only for a batch with max_wait
        self.arrivals: deque[list[int]] | None = deque() if timed else None

    @property
    def max_bound(self) -> int | None:
        """The most items this queue may ever hold (None: unbounded)."""
        return self.grow_to or self.bound

    def room(self) -> int:
        if self.bound is None:
            return MAX_UNITS * 64
        room = self.bound - len(self.items) - self.reserved
        if self.bytes_bound is not None and self.item_bytes > 0:
            held = len(self.items) + self.reserved
            fits = int(self.bytes_bound / self.item_bytes) - held
            room = min(room, fits if held else max(1, fits))
        return room

    def put(self, items: Sequence[Item]) -> None:
        self.items.extend(items)
        self.items_in += len(items)
        if len(self.items) > self.peak:
            self.peak = len(self.items)
        if self.bytes_bound is not None or self.grow_to is not None:
            self._measure(items)
            if self.grow_to is not None and self.item_bytes > 0:
                fits = int(GROWN_BYTES / self.item_bytes) if self.quick else 0
                self.bound = max(self.floor, min(self.grow_to, fits))  # type: ignore[type-var]
        if self.arrivals is not None and items:
            self.arrivals.append([monotonic_ns(), len(items)])

    def _measure(self, items: Sequence[Item]) -> None:
        if not items:
            return
        # One item per put (its middle one), weighted as up to four of them: sizing a
        # sample of each put cost more than handing its items on.
        size = sizeof(items[len(items) // 2][1])
        keep = _KEPT[min(len(items), 4)]  # 0.8 per item stood for
        self.item_bytes = (
            size if self.item_bytes <= 0 else keep * self.item_bytes + (1 - keep) * size
        )

    def take(self, n: int) -> list[Item]:
        q = self.items
        if n == len(q):
            taken = list(q)
            q.clear()
        else:
            taken = [q.popleft() for _ in range(n)]
        self.items_out += n
        if self.arrivals is not None:
            left = n
            while left and self.arrivals:
                first = self.arrivals[0]
                if first[1] > left:
                    first[1] -= left
                    break
                left -= first[1]
                self.arrivals.popleft()
        return taken

    def oldest_ns(self) -> int | None:
        """When the oldest queued item arrived (a timed queue)."""
        return self.arrivals[0][0] if self.arrivals else None

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            self.bound, len(self.items), self.peak, self.items_in, self.items_out
        )


class StageState:
    """A stage while it runs: its queue, its workers' slots, its counters."""

    def __init__(
        self,
        stage: Stage,
        bound: int | None,
        traits: Traits,
        *,
        bytes_bound: int | None = None,
        grow_to: int | None = None,
    ) -> None:
        self.stage = stage
        self.name = stage.name
        self.kind = stage.kind
        self.traits = traits
        self.max_wait_ns = None if stage.max_wait is None else int(stage.max_wait * 1e9)
        self.queue = StageQueue(
            bound,
            bytes_bound=bytes_bound,
            timed=self.max_wait_ns is not None,
            grow_to=grow_to,
            quick=False,  # until a unit is timed
        )
        self.join: Join | None = None  # join=True: where predecessors' results meet
        self.fold: Fold | None = None  # kind="fold": the merged state
        self.targets: list[StageQueue] = []  # successors' queues, or the output buffer
        self.successors: list[StageState] = []
        self.predecessors: list[StageState] = []
        self.overflow: deque[tuple[StageQueue, list[Item]]] = deque()
        self.executor: Executor | None = None
        # Fusion (:mod:`.fusion`): the stage this one's results go to in the same worker,
        # the head that runs this one, and the stage whose successors get the results.
        self.then: StageState | None = None
        self.head: StageState | None = None
        self.last: StageState = self
        self.chain_index = 0
        self.fused: tuple[str, ...] = ()  # the names of its fused chain
        self.run_stage = stage  # what the executor runs: a fused head's is its chain
        self.slots = stage.workers
        # Tasks dispatched beyond the running ones wait at the executor, so that a
        # worker starts its next task at once instead of waiting for our round trip.
        self.prefetch = traits.in_flight_per_worker
        # An async worker that overlaps tasks keeps `concurrency` of them in flight.
        self.overlap = stage.is_async and traits.async_overlap
        if self.overlap:
            self.prefetch = max(self.prefetch, stage.concurrency)
        self.busy = 0  # tasks in flight
        self.unit_ns = 0.0  # moving average of one unit's service time; 0: unknown
        # After a worker died mid-task, tasks are cut smaller (halved per loss, doubled
        # back per whole task): a death costs every unreported unit of its task a rerun.
        self.loss_cap = MAX_UNITS
        self.drained = False  # no item will ever reach this stage again, and it is idle
        self.items_in = 0
        self.items_out = 0
        self.calls = 0
        self.errors = 0
        self.retries = 0
        self.dead_lettered = 0
        self.timeouts = 0
        self.lost_workers = 0
        self.remade = 0
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

    def can_take(self) -> bool:
        """Whether a task could be sent now: a free slot, no overflow, room downstream.
        A retry or a partial batch falling due matters only then (otherwise the
        outcome that frees a slot or room wakes the scheduler)."""
        return self.free > 0 and not self.last.overflow and min(t.room() for t in self.targets) > 0

    def unit_cap(self) -> int:
        """Units per task so that a task lasts about the executor's target time."""
        if self.traits.max_units is not None:
            return self.traits.max_units  # never from the clock: such runs stay deterministic
        if self.unit_ns <= 0:
            return 1  # measure one unit before sending more
        cap = int(self.traits.target_task_ns / self.unit_ns) or 1
        if self.stage.is_async and not self.overlap:
            cap *= self.stage.concurrency  # the task's units run together
        return min(cap, MAX_UNITS, self.loss_cap)

    def worker_lost(self, units: int) -> None:
        """A worker died running a task of ``units`` units: cut the next ones to half."""
        self.loss_cap = max(1, min(self.loss_cap, units) // 2)

    def task_whole(self) -> None:
        """A task came back whole: let tasks grow again after a loss."""
        if self.loss_cap < MAX_UNITS:
            self.loss_cap = min(MAX_UNITS, self.loss_cap * 2)

    def measured(self, units: int, busy_ns: int) -> None:
        """``units`` units ran for ``busy_ns`` in all: update the moving average."""
        self.busy_ns += busy_ns
        self.pace(units, busy_ns)

    def pace(self, units: int, busy_ns: int) -> None:
        """Update the moving average of a unit's time (a fused head's: its whole chain's)."""
        unit = busy_ns / units
        self.unit_ns = unit if self.unit_ns <= 0 else (1 - EWMA) * self.unit_ns + EWMA * unit
        self.queue.quick = self.unit_ns < QUICK_NS

    # --- cutting tasks ------------------------------------------------------------------

    def next_task(self, task_id: int, room: int, *, upstream_done: bool) -> Task | None:
        """The next task from the queue, within ``room``; None when none can be cut yet
        (a batch waits for a full batch until its upstream is done)."""
        q = self.queue
        n = len(q.items)
        if self.kind in ("map", "flat_map", "filter"):
            k = min(n, -(-n // self.free), self.unit_cap(), room)
            items = q.take(k)
            return Task(
                task_id, self.name, list(map(_value, items)), list(map(_key, items)), reserved=k
            )
        if self.kind == "fold":  # one unit: a chunk folded in one call
            k = min(n, -(-n // self.free), self.unit_cap())
            return self._batch_task(task_id, [q.take(k)], reserved=0)
        if self.kind == "collect":
            if not upstream_done:
                return None
            items = sorted(q.take(n), key=lambda it: it[0])
            return self._batch_task(task_id, [items], reserved=1)
        size = self.stage.size
        assert size is not None
        batches = n // size + (1 if n % size and (upstream_done or self.expired()) else 0)
        if batches == 0:
            return None
        per_batch = size if self.stage.split else 1
        k = min(batches, -(-batches // self.free), self.unit_cap(), max(1, room // per_batch))
        units = [q.take(min(size, len(q.items))) for _ in range(k)]
        out = sum(len(u) for u in units) if self.stage.split else k
        return self._batch_task(task_id, units, reserved=min(out, room))

    def expired(self) -> bool:
        """A batch's oldest item has waited ``max_wait``: its partial batch goes."""
        due = self.deadline_ns()
        return due is not None and due <= monotonic_ns()

    def deadline_ns(self) -> int | None:
        """When the oldest queued item's ``max_wait`` runs out (None: no such limit)."""
        oldest = self.queue.oldest_ns() if self.max_wait_ns is not None else None
        return None if oldest is None else oldest + self.max_wait_ns  # type: ignore[operator]

    def retry_task(self, task_id: int, room: int, now_ns: int) -> Task:
        """A task of units due to run again (retries go before new items)."""
        cap = min(self.unit_cap(), max(1, room))
        units: list[list[Item]] = []
        while self.retry and self.retry[0][0] <= now_ns and len(units) < cap:
            units.append(heapq.heappop(self.retry)[2])
        if self.kind in ("map", "flat_map", "filter"):
            items = [u[0] for u in units]
            return Task(
                task_id,
                self.name,
                list(map(_value, items)),
                list(map(_key, items)),
                reserved=len(items),
            )
        out = sum(len(u) for u in units) if self.stage.split else len(units)
        if self.kind == "fold":
            out = 0  # a fold sends nothing on until its end
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
            self.name,
            self.kind,
            s.executor,
            self.slots,
            self.queue.max_bound,  # a default bound may grow this far (the recorder
            predecessors,  # keeps the bound it ended with)
            successors,
            s.concurrency if s.is_async else 1,
            self.fused,
            s.needs.gpus,
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
            remade=self.remade,
            cache_hits=self.cache_hits,
            calls=self.calls,
            live_workers=_alive(self.head or self),
            concurrency=s.concurrency if s.is_async else 1,
        )


_key = operator.itemgetter(0)
_value = operator.itemgetter(1)


def _alive(s: StageState) -> int:
    return s.executor.alive() if s.executor is not None else 0


def sizeof(value: Any) -> int:
    """About how many bytes ``value`` holds: exact for bytes, str and arrays, one level
    deep for lists, tuples and dicts (a sample of their elements), else its own size."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (list, tuple, dict)):
        elements = list(value.values()) if isinstance(value, dict) else value
        n = len(elements)
        if not n:
            return sys.getsizeof(value)
        step = max(1, n // 16)
        sample = elements[::step]
        inner = sum(_shallow(v) for v in sample) * n / len(sample)
        return sys.getsizeof(value) + int(inner)
    return sys.getsizeof(value)


def _shallow(value: Any) -> int:
    if isinstance(value, (bytes, bytearray, str)):
        return len(value) + 49
    nbytes = getattr(value, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else sys.getsizeof(value)


def unit_items(task: Task, i: int) -> list[Item]:
    """The items unit ``i`` of ``task`` was made of (one, or a batch's)."""
    if task.batch_keys is None:
        return [(task.keys[i], task.units[i])]
    return list(zip(task.batch_keys[i], task.units[i], strict=True))


def upstream_done(s: StageState, source_done: bool) -> bool:
    """True once no item can reach ``s`` again: its predecessors are drained (memoised
    once true), or for an entry stage the source is done."""
    if not s.predecessors:
        return source_done
    return all(_drained(p, source_done) for p in s.predecessors)


def _drained(s: StageState, source_done: bool) -> bool:
    if not s.drained:
        s.drained = (
            upstream_done(s, source_done)
            and not s.queue.items
            and not s.busy
            and not s.overflow
            and not s.retry
            and not (s.fold is not None and s.fold.holding)
            and not (s.join is not None and s.join.parked)
        )
    return s.drained
