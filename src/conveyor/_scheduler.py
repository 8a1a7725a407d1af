"""The scheduler: one algorithm that moves items through any mix of executors.

The scheduler runs in the thread that iterates the run; its state is plain data
that only this thread touches, mutated by small named methods. Workers (threads,
processes, or the caller itself for ``sync``) only ever see tasks and hand back
outcomes through one thread-safe completion queue. Each pass of :meth:`_advance`:

    1. handle finished tasks: pair results with keys, route them downstream
    2. deliver results a stage could not fit downstream (its overflow)
    3. dispatch tasks, downstream stages first, to every stage with a free slot
    4. read the source into the entry stages' queues

Flow control, exact and never exceeded:

    room(T) = bound(T) - len(queue(T)) - reserved(T)

A task of k units is dispatched only into room: it reserves its expected results
in every successor's queue, so a queue's depth never passes its bound and a slow
consumer stops the source from being read. A flat_map can produce more results
than it reserved; the excess waits in its stage's overflow, and the stage takes no
new task until that has drained (as a worker blocked on a full queue would).

Chunking adapts: a task takes ceil(queued / free slots) units, capped so it lasts
about ``TARGET_TASK_NS`` for its executor (from a moving average of unit times)
and by room. A fast stream forms large tasks that amortise the hand-off cost; a
slow stream, whose queue holds one item at a time, sends single items at once.

Keys and ordering: source item i has key ``(i,)``; a flat_map's j-th result of key
k has key ``k + (j,)``; a batch or collect result takes its first item's key. The
scheduler counts each source item's live descendants (its *root* count). Results
in ordered mode wait in a heap until every earlier root has finished; the source
is read at most ``window`` roots past the oldest unfinished one, which bounds the
reorder buffer.
"""

from __future__ import annotations

import heapq
import operator
import os
import queue
import secrets
import signal
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor._errors import PipelineError, RunError, StageError, WorkerLostError
from conveyor._instrument import Instrument, Instruments, RunControl, RunInfo, StageInfo
from conveyor._stage import Stage
from conveyor._statistics import QueueStatistics, StageStatistics
from conveyor.executors import Executor, Outcome, Task, make_executor

if TYPE_CHECKING:
    from conveyor._pipeline import Pipeline
    from conveyor.executors._shm import SegmentRegistry

Key = tuple[Any, ...]
Item = tuple[Key, Any]

# How long one task should last, per executor: long enough to amortise the
# hand-off (tens of µs for threads, a few hundred µs for processes), short
# enough to keep latency low and work spread over the workers.
TARGET_TASK_NS = {"sync": 1_000_000, "threads": 2_000_000, "processes": 10_000_000}
MAX_UNITS = 1024
SYNC_UNITS = 64  # a sync task runs in the caller: its size only sets latency
SOURCE_BURST_NS = 1_000_000  # read the source at most this long per pass
WAIT_SECONDS = 0.2  # wake up this often while waiting, to stay responsive to Ctrl-C
EWMA = 0.3


class _Queue:
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


class _StageState:
    """A stage while it runs: its queue, its workers' slots, its counters."""

    def __init__(self, stage: Stage, bound: int | None) -> None:
        self.stage = stage
        self.name = stage.name
        self.kind = stage.kind
        self.queue = _Queue(bound)
        self.targets: list[_Queue] = []  # successors' queues, or the output buffer
        self.successors: list[_StageState] = []
        self.predecessors: list[_StageState] = []
        self.overflow: deque[tuple[_Queue, list[Item]]] = deque()
        self.executor: Executor | None = None
        self.slots = stage.workers
        self.busy = 0
        self.unit_ns = 0.0  # moving average of one unit's service time; 0: unknown
        self.target_ns = TARGET_TASK_NS[stage.executor]
        self.drained = False  # no item will ever reach this stage again, and it is idle
        self.items_in = 0
        self.items_out = 0
        self.errors = 0
        self.tasks = 0
        self.busy_ns = 0

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
            busy_workers=self.busy,
            busy_seconds=self.busy_ns / 1e9,
            queue=self.queue.statistics(),
        )


class Scheduler:
    """Moves a source's items through a pipeline's stages; see the module docstring."""

    def __init__(
        self,
        pipeline: Pipeline,
        source: Iterable[Any],
        *,
        ordered: bool,
        instruments: Sequence[Instrument],
        run_id: str,
        control: RunControl | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.control = control
        self.run_id = run_id
        self.ordered = ordered
        self._source: Iterator[Any] = iter(source)
        self._source_done = False
        self._next_index = 0
        self._ins = Instruments(instruments)
        self._completions: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._local: deque[Outcome] = deque()
        self._inflight: dict[int, tuple[_StageState, Task]] = {}
        self._task_ids = 0
        self._shm: SegmentRegistry | None = None
        self.stages: list[_StageState] = [
            _StageState(pipeline.stages[n], pipeline.capacity_of(n)) for n in pipeline.order
        ]
        by_name = {s.name: s for s in self.stages}
        self.output = _Queue(pipeline.capacity)
        self.refill = max(1, pipeline.capacity // 4)
        for s in self.stages:
            s.successors = [by_name[n] for n in pipeline.successors[s.name]]
            s.predecessors = [by_name[n] for n in pipeline.predecessors[s.name]]
            s.targets = [t.queue for t in s.successors] or [self.output]
        self.entries = [s for s in self.stages if not s.predecessors]
        self.deterministic = all(s.stage.executor == "sync" for s in self.stages)
        # Root counts: live descendants of each source item still in the system.
        self._live: dict[int, int] = {}
        # Ordered mode: results wait in a heap until all earlier roots are done.
        self._heap: list[tuple[Key, int, Any]] = []
        self._heap_seq = 0
        self._frontier = 0  # every root below it is finished
        self._finished_roots: set[int] = set()
        # For instruments: terminal states of source items, reported in batches.
        self._reached: set[int] = set()  # roots with a result at the output, still live
        self._absorbed: dict[int, list[int]] = {}  # root -> roots merged into its batch
        self._finished_by_state: dict[str, list[int]] = {"done": [], "filtered": []}
        # A collect stage holds every root until the source ends, so it must not be
        # throttled by the window; its output is one item, with nothing to reorder.
        bounds = sum(s.queue.bound or 0 for s in self.stages) + pipeline.capacity
        has_collect = any(s.kind == "collect" for s in self.stages)
        self.window = 1 << 62 if has_collect else 2 * bounds
        self.items_read = 0
        self.items_emitted = 0
        self.started_ns = 0

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        for s in self.stages:
            # Sync tasks finish inside submit(); their outcomes wait in a local deque.
            post = self._local.append if s.stage.executor == "sync" else self._completions.put
            s.executor = make_executor(s.stage, post, shm_registry_factory=self._shm_registry)
        for s in self.stages:
            assert s.executor is not None
            s.executor.start()
        # The run's clock starts once its workers are started, so that start-up
        # (spawning processes) does not count as the pipeline's time.
        self.started_ns = monotonic_ns()
        if self._ins:
            self._ins.run_started(self._run_info())

    def shutdown(self, *, cancel: bool) -> None:
        """Stop every executor's workers; with ``cancel``, abandon work in flight."""
        for s in self.stages:
            if s.executor is not None:
                s.executor.shutdown(cancel=cancel)
        if self._shm is not None:
            self._shm.cleanup()

    def resize(self, stage: str, workers: int) -> None:
        """Give ``stage`` ``workers`` workers from now on (its tasks in flight finish)."""
        s = next((s for s in self.stages if s.name == stage), None)
        if s is None:
            raise PipelineError(
                f"cannot resize stage {stage!r}: pipeline {self.pipeline.name!r} has no such "
                f"stage (its stages: {', '.join(x.name for x in self.stages)})",
                stage=stage,
            )
        if not isinstance(workers, int) or workers < 1:
            raise PipelineError(
                f"cannot resize stage {stage!r} to workers={workers!r}; give at least 1",
                stage=stage,
            )
        if s.kind == "collect" and workers != 1:
            raise PipelineError(
                f"stage {stage!r} is a collect stage: it has one worker", stage=stage
            )
        s.slots = workers
        if s.executor is not None:
            s.executor.resize(workers)
        if self._ins:
            self._ins.stage_resized(stage, workers, monotonic_ns())

    def worker_pids(self) -> list[int]:
        return [pid for s in self.stages if s.executor for pid in s.executor.pids()]

    def _shm_registry(self) -> SegmentRegistry:
        if self._shm is None:
            from conveyor.executors._shm import SegmentRegistry

            self._shm = SegmentRegistry(f"cv{os.getpid()}x{secrets.token_hex(3)}", owner=True)
        return self._shm

    def _run_info(self) -> RunInfo:
        p = self.pipeline
        return RunInfo(
            run_id=self.run_id,
            pipeline=p.name,
            stages=tuple(
                StageInfo(
                    name=s.name,
                    kind=s.kind,
                    executor=s.stage.executor,
                    workers=s.stage.workers,
                    capacity=s.queue.bound,
                    predecessors=p.predecessors[s.name],
                    successors=p.successors[s.name],
                )
                for s in self.stages
            ),
            ordered=self.ordered,
            started_ns=self.started_ns,
            control=self.control,
        )

    # --- the consumer's side ----------------------------------------------------

    def next_output(self) -> Any:
        """The next result, advancing the pipeline as needed; StopIteration at the end."""
        out = self.output
        # Fast path: results are waiting and no worker has news. Refilling a nearly
        # full buffer would dispatch tiny tasks, so hand results out until a quarter
        # of it is free, then refill in bulk.
        if not (
            out.items
            and out.bound - len(out.items) - out.reserved < self.refill  # type: ignore[operator]
            and self._completions.empty()
        ):
            while True:
                progressed = self._advance()
                if out.items:
                    break
                if self._finished():
                    raise StopIteration
                if not progressed:
                    self._wait()
        key, value = out.items.popleft()
        out.items_out += 1
        self.items_emitted += 1
        if self._ins:
            self._ins.items_emitted([key], monotonic_ns())
        return value

    def _finished(self) -> bool:
        return (
            self._source_done
            and not self._inflight
            and not self._heap
            and all(not s.queue.items and not s.overflow for s in self.stages)
        )

    def _wait(self) -> None:
        """Block until a worker finishes a task (or a stalled batch can be flushed)."""
        if not self._inflight:
            if self._flush_stalled():
                return
            raise RunError(
                "the scheduler has nothing in flight and cannot make progress; this is a "
                f"bug in conveyor, please report it with this state: {self._describe()}",
                stage="<scheduler>",
            )
        while True:
            try:
                out = self._completions.get(timeout=WAIT_SECONDS)
            except queue.Empty:
                continue
            self._complete(out)
            return

    def _describe(self) -> str:
        return "; ".join(
            f"{s.name}: queue={len(s.queue.items)} busy={s.busy} overflow={len(s.overflow)}"
            for s in self.stages
        )

    # --- one pass ---------------------------------------------------------------

    def _advance(self) -> bool:
        progressed = False
        while self._local:
            self._complete(self._local.popleft())
            progressed = True
        while True:
            try:
                out = self._completions.get_nowait()
            except queue.Empty:
                break
            self._complete(out)
            progressed = True
        for s in self.stages:
            if s.overflow:
                progressed |= self._drain_overflow(s)
        for s in reversed(self.stages):
            progressed |= self._dispatch(s)
        if self._read_source():
            progressed = True
            for s in self.entries:
                self._dispatch(s)
        if self._ins:
            self._report_finished()
        return progressed

    def _read_source(self) -> bool:
        if self._source_done:
            return False
        n = min(q.queue.room() for q in self.entries)
        if self.ordered:
            n = min(n, self._frontier + self.window - self._next_index)
        if n <= 0:
            return False
        items: list[Item] = []
        # A slow source must not starve the workers, so a pass reads for at most
        # SOURCE_BURST_NS; with every stage on sync, no clock decides anything.
        deadline = (1 << 63) if self.deterministic else monotonic_ns() + SOURCE_BURST_NS
        source = self._source
        i = self._next_index
        try:
            for _ in range(n):
                items.append(((i,), next(source)))
                i += 1
                if not i & 15 and monotonic_ns() > deadline:
                    break
        except StopIteration:
            self._source_done = True
        except Exception as exc:
            raise StageError(
                f"the source raised {type(exc).__name__} while reading item {i}: {exc}",
                stage="<source>",
                key=(i,),
            ) from exc
        finally:
            self._next_index = i
        if not items:
            return self._source_done
        fan = len(self.entries)
        live = self._live
        for key, _ in items:
            live[key[0]] = fan
        self.items_read += len(items)
        now = monotonic_ns()
        if self._ins:
            self._ins.items_read([k for k, _ in items], now)
        for s in self.entries:
            s.queue.put(items)
            if self._ins:
                self._ins.items_enqueued(s.name, [k for k, _ in items], len(s.queue.items), now)
        return True

    # --- dispatch ---------------------------------------------------------------

    def _dispatch(self, s: _StageState) -> bool:
        progressed = False
        while s.busy < s.slots and s.queue.items and not s.overflow:
            room = min(t.room() for t in s.targets)
            if room <= 0:
                break
            task = self._make_task(s, room)
            if task is None:
                break
            self._submit(s, task)
            progressed = True
        return progressed

    def _submit(self, s: _StageState, task: Task) -> None:
        for t in s.targets:
            t.reserved += task.reserved
        s.busy += 1
        s.tasks += 1
        self._inflight[task.id] = (s, task)
        task.dispatched_ns = monotonic_ns()
        if self._ins:
            self._ins.task_started(
                s.name, task.id, task.keys, len(s.queue.items), task.dispatched_ns
            )
        assert s.executor is not None
        s.executor.submit(task)

    def _make_task(self, s: _StageState, room: int) -> Task | None:
        q = s.queue
        n = len(q.items)
        free = s.slots - s.busy
        if s.kind in ("map", "flat_map"):
            k = min(n, -(-n // free), s.unit_cap(), room)
            items = q.take(k)
            self._task_ids += 1
            keys = list(map(_first, items))
            return Task(self._task_ids, s.name, list(map(_second, items)), keys, reserved=k)
        if s.kind == "collect":
            if not self._upstream_done(s):
                return None
            items = sorted(q.take(n), key=lambda it: it[0])
            return self._batch_task(s, [items], reserved=1)
        size = s.stage.size
        assert size is not None
        batches = n // size + (1 if n % size and self._upstream_done(s) else 0)
        if batches == 0:
            return None
        per_batch = size if s.stage.split else 1
        k = min(batches, -(-batches // free), s.unit_cap(), max(1, room // per_batch))
        units = [q.take(min(size, len(q.items))) for _ in range(k)]
        out = sum(len(u) for u in units) if s.stage.split else k
        return self._batch_task(s, units, reserved=min(out, room))

    def _batch_task(self, s: _StageState, units: list[list[Item]], *, reserved: int) -> Task:
        self._task_ids += 1
        return Task(
            self._task_ids,
            s.name,
            [[v for _, v in u] for u in units],
            [u[0][0] for u in units],
            batch_keys=[[k for k, _ in u] for u in units],
            reserved=reserved,
        )

    def _upstream_done(self, s: _StageState) -> bool:
        """True once no item can reach ``s`` again (memoised once true)."""
        if not s.predecessors:
            return self._source_done
        return all(self._is_drained(p) for p in s.predecessors)

    def _is_drained(self, s: _StageState) -> bool:
        if not s.drained:
            s.drained = (
                self._upstream_done(s) and not s.queue.items and not s.busy and not s.overflow
            )
        return s.drained

    def _flush_stalled(self) -> bool:
        """Nothing is in flight yet a batch stage waits for items that cannot come
        (its upstream is held back by the ordered window): send its partial batch."""
        for s in self.stages:
            size = s.stage.size
            if s.kind == "batch" and s.queue.items and s.busy < s.slots and size:
                items = s.queue.take(len(s.queue.items))
                units = [items[i : i + size] for i in range(0, len(items), size)]
                task = self._batch_task(s, units, reserved=0)
                self._submit(s, task)
                return True
        return False

    # --- completion and routing ---------------------------------------------------

    def _complete(self, out: Outcome) -> None:
        s, task = self._inflight.pop(out.task_id)
        s.busy -= 1
        for t in s.targets:
            t.reserved -= task.reserved
        stamps = out.stamps
        ran = len(stamps) - 1  # units that ran, the failing one included
        if ran > 0:
            busy = stamps[-1] - stamps[0]
            s.busy_ns += busy
            unit = busy / ran
            s.unit_ns = unit if s.unit_ns <= 0 else (1 - EWMA) * s.unit_ns + EWMA * unit
            if task.batch_keys is None:
                s.items_in += ran
            else:
                s.items_in += sum(len(b) for b in task.batch_keys[:ran])
        if self._ins:
            error = out.error
            if out.lost is not None:
                error = WorkerLostError("worker lost", stage=s.name)
            self._ins.task_finished(
                s.name, task.id, out.worker, task.keys[:ran], stamps[:-1], stamps[1:], error
            )
        if out.lost is not None:
            s.errors += 1
            raise self._lost_error(s, task, out)
        if out.error is not None:
            s.errors += 1
            done = len(out.results)
            key = task.keys[done]
            what = f"item {_show(key)}"
            if task.batch_keys is not None:
                what = f"a batch of {len(task.batch_keys[done])} items starting at {_show(key)}"
            raise StageError(
                f"stage {s.name!r} failed on {what}: {type(out.error).__name__}: {out.error}",
                stage=s.name,
                key=key,
            ) from out.error
        results = self._pair(s, task, out.results)
        s.items_out += len(results)
        self._route(s, results)

    def _pair(self, s: _StageState, task: Task, results: list[Any]) -> list[Item]:
        """Give each result its key, and keep the root counts true."""
        live = self._live
        if s.kind == "map":
            return list(zip(task.keys, results, strict=False))
        if s.kind == "flat_map":
            paired: list[Item] = []
            for key, children in zip(task.keys, results, strict=False):
                paired.extend(((*key, j), v) for j, v in enumerate(children))
                self._add_live(key[0], len(children) - 1)
            return paired
        assert task.batch_keys is not None
        if s.stage.split:
            paired = []
            for keys, values in zip(task.batch_keys, results, strict=False):
                if not isinstance(values, Sequence) or len(values) != len(keys):
                    got = len(values) if isinstance(values, Sequence) else type(values).__name__
                    raise StageError(
                        f"stage {s.name!r} has split=True, so its function must return one "
                        f"result per item of the batch: {len(keys)} expected, got {got}; "
                        "return a list as long as the batch, or use split=False",
                        stage=s.name,
                        key=keys[0],
                    )
                paired.extend(zip(keys, values, strict=False))
            return paired
        # batch (unsplit) and collect: many items merge into one, keyed by the first.
        for keys in task.batch_keys:
            first = keys[0][0]
            live[first] = live.get(first, 0) + 1
            for k in keys:
                self._add_live(k[0], -1, into=first)
        return [(keys[0], v) for keys, v in zip(task.batch_keys, results, strict=False)]

    def _add_live(self, root: int, delta: int, *, into: int | None = None) -> None:
        """Change ``root``'s live count; at zero it is finished (or, when its last item
        merged into a batch keyed by root ``into``, it shares that root's fate)."""
        n = self._live[root] + delta
        if n:
            self._live[root] = n
            return
        del self._live[root]
        if into is not None and into != root:
            self._absorbed.setdefault(into, []).append(root)
            self._root_finished(root, None)
        else:
            self._root_finished(root, "done" if root in self._reached else "filtered")

    def _root_finished(self, root: int, state: str | None) -> None:
        """Every item descended from source item ``root`` is gone from the pipeline."""
        if self._ins and state is not None:
            self._reached.discard(root)
            roots = [root]
            for r in roots:  # the roots merged into it, and theirs, share its state
                roots.extend(self._absorbed.pop(r, ()))
            self._finished_by_state[state].extend(roots)
        if not self.ordered:
            return
        if root != self._frontier:
            self._finished_roots.add(root)
            return
        f = root + 1
        while f in self._finished_roots:
            self._finished_roots.remove(f)
            f += 1
        self._frontier = f
        heap = self._heap
        released = []
        while heap and heap[0][0][0] < f:
            key, _, value = heapq.heappop(heap)
            released.append((key, value))
        if released:
            self.output.put(released)

    def _report_finished(self) -> None:
        """Tell instruments which source items reached a terminal state (batched)."""
        now = monotonic_ns()
        for state, roots in self._finished_by_state.items():
            if roots:
                self._ins.roots_finished(roots, state, now)
                self._finished_by_state[state] = []

    def _route(self, s: _StageState, items: list[Item]) -> None:
        if not s.successors:
            self._to_output(s, items)
            return
        if len(s.successors) > 1:
            extra = len(s.successors) - 1
            for key, _ in items:
                self._live[key[0]] += extra
        now = monotonic_ns()
        for t in s.successors:
            self._put(s, t.queue, items, t.name, now)

    def _put(self, s: _StageState, q: _Queue, items: list[Item], name: str, now: int) -> None:
        room = max(0, q.room())
        fits = items if len(items) <= room else items[:room]
        if fits:
            q.put(fits)
            if self._ins:
                self._ins.items_enqueued(name, [k for k, _ in fits], len(q.items), now)
        if len(fits) < len(items):
            s.overflow.append((q, items[len(fits) :]))

    def _to_output(self, s: _StageState, items: list[Item]) -> None:
        """Results reaching the output are finished: count their roots down."""
        if self.ordered:
            for key, value in items:
                heapq.heappush(self._heap, (key, self._heap_seq, value))
                self._heap_seq += 1
        else:
            self._put(s, self.output, items, "<output>", monotonic_ns())
        live = self._live
        track = bool(self._ins)
        for key, _ in items:
            root = key[0]
            n = live[root] - 1
            if n:
                live[root] = n
                if track:
                    self._reached.add(root)
            else:
                del live[root]
                if self.ordered or track:
                    self._root_finished(root, "done")

    def _drain_overflow(self, s: _StageState) -> bool:
        progressed = False
        while s.overflow and s.overflow[0][0].room() > 0:
            q, items = s.overflow.popleft()
            name = next((t.name for t in s.successors if t.queue is q), "<output>")
            self._put(s, q, items, name, monotonic_ns())  # what does not fit goes back
            progressed = True
        return progressed

    def _lost_error(self, s: _StageState, task: Task, out: Outcome) -> WorkerLostError:
        lost = out.lost
        assert lost is not None
        index = lost.unit_index if 0 <= lost.unit_index < len(task.keys) else 0
        key = task.keys[index]
        how = _describe_exit(lost.exitcode)
        return WorkerLostError(
            f"stage {s.name!r} lost process worker {out.worker} (pid {lost.pid}, {how}) while "
            f"it ran item {_show(key)}; the item did not complete. If the process was killed "
            "for memory, lower this stage's workers or the pipeline's capacity",
            stage=s.name,
            key=key,
            keys=tuple(task.keys),
            pid=lost.pid,
            exitcode=lost.exitcode,
        )

    def stage_statistics(self) -> dict[str, StageStatistics]:
        return {s.name: s.statistics() for s in self.stages}


_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


def _show(key: Key) -> str:
    return str(key[0]) if len(key) == 1 else str(key)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
