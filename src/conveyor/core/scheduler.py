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
import random
import secrets
import signal
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.core.events import Instrument, Instruments, RunControl, RunInfo, StageInfo
from conveyor.core.flow import StageQueue, StageState
from conveyor.core.ledger import RootLedger
from conveyor.core.policy import Retry
from conveyor.core.stage import Stage
from conveyor.core.statistics import StageStatistics
from conveyor.errors import PipelineError, RunError, StageError, WorkerLostError
from conveyor.executors import Outcome, Task, make_executor
from conveyor.executors.task import CacheSpec

if TYPE_CHECKING:
    from conveyor.core.pipeline import Pipeline
    from conveyor.executors.processes.shm import SegmentRegistry

Key = tuple[Any, ...]
Item = tuple[Key, Any]

SOURCE_BURST_NS = 1_000_000  # read the source at most this long per pass
WAIT_SECONDS = 0.2  # wake up this often while waiting, to stay responsive to Ctrl-C
EWMA = 0.3


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
        self._has_ins = self._ins.active
        self._emit_hook = self._ins.wants("items_emitted")
        self._completions: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._local: deque[Outcome] = deque()
        self._inflight: dict[int, tuple[StageState, Task]] = {}
        self._task_ids = 0
        self._shm: SegmentRegistry | None = None
        self.stages: list[StageState] = [
            StageState(pipeline.stages[n], pipeline.capacity_of(n)) for n in pipeline.order
        ]
        by_name = {s.name: s for s in self.stages}
        self.output = StageQueue(pipeline.capacity)
        self.refill = max(1, pipeline.capacity // 4)
        for s in self.stages:
            s.successors = [by_name[n] for n in pipeline.successors[s.name]]
            s.predecessors = [by_name[n] for n in pipeline.predecessors[s.name]]
            s.targets = [t.queue for t in s.successors] or [self.output]
        self.entries = [s for s in self.stages if not s.predecessors]
        self.deterministic = all(s.stage.executor == "sync" for s in self.stages)
        self.ledger = RootLedger(ordered=ordered, tracking=self._has_ins)
        # Failure handling: attempts per (stage, unit key) that failed at least once.
        self._attempts: dict[tuple[str, Key], int] = {}
        self._retry_seq = 0
        self._rng = random.Random()
        self._cache_warned: set[str] = set()
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
            s.executor.cache = self._cache_spec(s.stage)
            s.executor.start()
        # The run's clock starts once its workers are started, so that start-up
        # (spawning processes) does not count as the pipeline's time.
        self.started_ns = monotonic_ns()
        if self._has_ins:
            self._ins.run_started(self._run_info())

    def _cache_spec(self, stage: Stage) -> CacheSpec | None:
        """Where and under which key a cached stage looks its results up."""
        if not stage.cache:
            return None
        from conveyor.cache import CacheWarning, FingerprintError, fingerprint_function

        try:
            code = fingerprint_function(stage.fn)
        except FingerprintError as exc:
            warnings.warn(
                f"stage {stage.name!r}: caching is off for this run: {exc}",
                CacheWarning,
                stacklevel=2,
            )
            return None
        if stage.cache is True:
            root = os.environ.get("CONVEYOR_CACHE") or os.path.join(".conveyor", "cache")
        else:
            root = os.fspath(stage.cache)
        return CacheSpec(os.path.abspath(root), f"{self.pipeline.name}/{stage.name}", code)

    def shutdown(self, *, cancel: bool) -> None:
        """Stop every executor's workers; with ``cancel``, abandon work in flight."""
        if self._has_ins:
            self._report_finished()  # roots finished in the pass a failure interrupted
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
        if self._has_ins:
            self._ins.stage_resized(stage, workers, monotonic_ns())

    def worker_pids(self) -> list[int]:
        return [pid for s in self.stages if s.executor for pid in s.executor.pids()]

    def _shm_registry(self) -> SegmentRegistry:
        if self._shm is None:
            from conveyor.executors.processes.shm import SegmentRegistry

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
        if self._emit_hook:
            self._ins.items_emitted([key], monotonic_ns())
        return value

    def _finished(self) -> bool:
        return (
            self._source_done
            and not self._inflight
            and not self.ledger.holding
            and all(not s.queue.items and not s.overflow and not s.retry for s in self.stages)
        )

    def _next_retry_ns(self) -> int | None:
        return min((s.retry[0][0] for s in self.stages if s.retry), default=None)

    def _wait(self) -> None:
        """Block until a worker finishes a task, a retry comes due, or a stalled batch
        can be flushed."""
        due = self._next_retry_ns()
        if not self._inflight:
            if due is not None:
                time.sleep(max(0.0, min(WAIT_SECONDS, (due - monotonic_ns()) / 1e9)))
                return
            if self._flush_stalled():
                return
            raise RunError(
                "the scheduler has nothing in flight and cannot make progress; this is a "
                f"bug in conveyor, please report it with this state: {self._describe()}",
                stage="<scheduler>",
            )
        while True:
            timeout = WAIT_SECONDS
            if due is not None:
                timeout = max(0.0, min(timeout, (due - monotonic_ns()) / 1e9))
            try:
                out = self._completions.get(timeout=timeout)
            except queue.Empty:
                if due is not None and monotonic_ns() >= due:
                    return  # a retry is due: let the next pass dispatch it
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
        if self.ordered:
            self._release()
        if self._has_ins:
            self._report_finished()
        return progressed

    def _read_source(self) -> bool:
        if self._source_done:
            return False
        n = min(q.queue.room() for q in self.entries)
        if self.ordered:
            n = min(n, self.ledger.frontier + self.window - self._next_index)
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
        self.ledger.read(items[0][0][0], len(items), len(self.entries))
        self.items_read += len(items)
        now = monotonic_ns()
        if self._has_ins:
            keys = list(map(_first, items))
            self._ins.items_read(keys, now)
        for s in self.entries:
            s.queue.put(items)
            if self._has_ins:
                self._ins.items_enqueued(s.name, keys, len(s.queue.items), now)
        return True

    # --- dispatch ---------------------------------------------------------------

    def _dispatch(self, s: StageState) -> bool:
        progressed = False
        while s.busy < s.slots * (1 + s.prefetch) and not s.overflow:
            retry_due = bool(s.retry) and s.retry[0][0] <= monotonic_ns()
            if not (retry_due or s.queue.items):
                break
            room = min(t.room() for t in s.targets)
            if room <= 0:
                break
            task = self._retry_task(s, room) if retry_due else self._make_task(s, room)
            if task is None:
                break
            self._submit(s, task)
            progressed = True
        return progressed

    def _retry_task(self, s: StageState, room: int) -> Task:
        """A task of units that are due to run again (retries go before new items)."""
        now = monotonic_ns()
        cap = min(s.unit_cap(), max(1, room))
        units: list[list[Item]] = []
        while s.retry and s.retry[0][0] <= now and len(units) < cap:
            units.append(heapq.heappop(s.retry)[2])
        if s.kind in ("map", "flat_map"):
            self._task_ids += 1
            items = [u[0] for u in units]
            keys = list(map(_first, items))
            return Task(
                self._task_ids, s.name, list(map(_second, items)), keys, reserved=len(items)
            )
        out = sum(len(u) for u in units) if s.stage.split else len(units)
        return self._batch_task(s, units, reserved=min(out, room))

    def _submit(self, s: StageState, task: Task) -> None:
        for t in s.targets:
            t.reserved += task.reserved
        s.busy += 1
        s.tasks += 1
        self._inflight[task.id] = (s, task)
        task.dispatched_ns = monotonic_ns()
        if self._has_ins:
            self._ins.task_started(
                s.name, task.id, task.keys, len(s.queue.items), task.dispatched_ns
            )
        assert s.executor is not None
        s.executor.submit(task)

    def _make_task(self, s: StageState, room: int) -> Task | None:
        q = s.queue
        n = len(q.items)
        free = s.slots * (1 + s.prefetch) - s.busy
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

    def _batch_task(self, s: StageState, units: list[list[Item]], *, reserved: int) -> Task:
        self._task_ids += 1
        return Task(
            self._task_ids,
            s.name,
            [[v for _, v in u] for u in units],
            [u[0][0] for u in units],
            batch_keys=[[k for k, _ in u] for u in units],
            reserved=reserved,
        )

    def _upstream_done(self, s: StageState) -> bool:
        """True once no item can reach ``s`` again (memoised once true)."""
        if not s.predecessors:
            return self._source_done
        return all(self._is_drained(p) for p in s.predecessors)

    def _is_drained(self, s: StageState) -> bool:
        if not s.drained:
            s.drained = (
                self._upstream_done(s)
                and not s.queue.items
                and not s.busy
                and not s.overflow
                and not s.retry
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
        ran = max(0, len(stamps) - 1)  # units that ran, the failing one included
        if ran:
            busy = stamps[-1] - stamps[0]
            s.busy_ns += busy
            unit = busy / ran
            s.unit_ns = unit if s.unit_ns <= 0 else (1 - EWMA) * s.unit_ns + EWMA * unit
            if task.batch_keys is None:
                s.items_in += ran
            else:
                s.items_in += sum(len(b) for b in task.batch_keys[:ran])
        lost = out.lost
        if lost is not None and not lost.started:
            # It waited behind a task whose worker died: run it again, no harm done.
            self._requeue(s, task, list(range(len(task.keys))), monotonic_ns())
            return
        error = out.error
        if lost is not None:
            error = self._lost_exception(s, task, out)
        if out.hits or out.uncached:
            self._cache_news(s, task, out)
        if self._has_ins:
            keys, starts, ends = task.keys[:ran], stamps[:-1], stamps[1:]
            if out.hits:  # cache hits are reported as such, not as calls
                ran_ = [i for i in range(ran) if i not in set(out.hits)]
                keys = [keys[i] for i in ran_]
                starts = [starts[i] for i in ran_]
                ends = [ends[i] for i in ran_]
            self._ins.task_finished(s.name, task.id, out.worker, keys, starts, ends, error)
        done = len(out.results)
        if done:
            if self._attempts:
                for key in task.keys[:done]:
                    self._attempts.pop((s.name, key), None)
            results = self._pair(s, task, out.results)
            s.items_out += len(results)
            self._route(s, results)
        if error is None:
            return
        s.errors += 1
        n = len(task.keys)
        failed = min(max(lost.unit_index, 0), n - 1) if lost is not None else done
        # Units after the failed one never ran; a lost worker's finished units lost
        # their results with it. Both run again, and it costs them no attempt.
        again = [i for i in range(done, n) if i != failed]
        if again:
            self._requeue(s, task, again, monotonic_ns())
        self._unit_failed(s, task, failed, error, out.error_traceback)

    def _cache_news(self, s: StageState, task: Task, out: Outcome) -> None:
        if out.hits:
            s.cache_hits += len(out.hits)
            if self._has_ins:
                self._ins.cache_hits(s.name, [task.keys[i] for i in out.hits], monotonic_ns())
        if out.uncached and s.name not in self._cache_warned:
            from conveyor.cache import CacheWarning

            self._cache_warned.add(s.name)
            warnings.warn(
                f"stage {s.name!r}: {out.uncached}, so such items are computed every time, "
                "never cached; pass plain values (numbers, strings, bytes, tuples, lists, "
                "dicts, dataclasses, NumPy arrays)",
                CacheWarning,
                stacklevel=4,
            )

    def _unit_items(self, task: Task, i: int) -> list[Item]:
        if task.batch_keys is None:
            return [(task.keys[i], task.units[i])]
        return list(zip(task.batch_keys[i], task.units[i], strict=True))

    def _requeue(self, s: StageState, task: Task, units: list[int], ready_ns: int) -> None:
        for i in units:
            self._retry_seq += 1
            heapq.heappush(s.retry, (ready_ns, self._retry_seq, self._unit_items(task, i)))

    def _unit_failed(
        self, s: StageState, task: Task, i: int, error: BaseException, tb: str | None
    ) -> None:
        """Unit ``i`` of ``task`` failed: retry it, dead-letter it, or fail the run."""
        key = task.keys[i]
        attempt = self._attempts.get((s.name, key), 1)
        policy = s.stage.retry
        assert isinstance(policy, Retry)
        retrying = policy.retries(error, attempt)
        now = monotonic_ns()
        if self._has_ins:
            self._ins.unit_failed(s.name, key, error, tb, attempt, retrying, now)
        if retrying:
            self._attempts[(s.name, key)] = attempt + 1
            s.retries += 1
            ready = now + int(policy.delay(attempt, self._rng) * 1e9)
            self._requeue(s, task, [i], ready)
            return
        self._attempts.pop((s.name, key), None)
        if s.stage.on_error == "skip":
            for item_key, value in self._unit_items(task, i):
                s.dead_lettered += 1
                if self._has_ins:
                    self._ins.dead_lettered(s.name, item_key, value, error, tb, now)
                self.ledger.dead_letter(item_key[0])
            return
        if isinstance(error, WorkerLostError):
            raise error
        what = f"item {_show(key)}"
        if task.batch_keys is not None:
            what = f"a batch of {len(task.batch_keys[i])} items starting at {_show(key)}"
        tries = f" (attempt {attempt} of {policy.attempts})" if policy.attempts > 1 else ""
        raise StageError(
            f"stage {s.name!r} failed on {what}{tries}: {type(error).__name__}: {error}",
            stage=s.name,
            key=key,
        ) from error

    def _pair(self, s: StageState, task: Task, results: list[Any]) -> list[Item]:
        """Give each result its key, and keep the root counts true."""
        if s.kind == "map":
            return list(zip(task.keys, results, strict=False))
        if s.kind == "flat_map":
            paired: list[Item] = []
            for key, children in zip(task.keys, results, strict=False):
                paired.extend(((*key, j), v) for j, v in enumerate(children))
                self.ledger.add(key[0], len(children) - 1)
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
        self.ledger.merge(task.batch_keys)
        return [(keys[0], v) for keys, v in zip(task.batch_keys, results, strict=False)]

    def _report_finished(self) -> None:
        """Tell instruments which source items reached a terminal state (batched)."""
        finished = self.ledger.take_finished()
        if finished is None:
            return
        now = monotonic_ns()
        for state, roots in finished.items():
            if roots:
                self._ins.roots_finished(roots, state, now)

    def _release(self) -> None:
        """Move ordered results whose turn has come to the output buffer."""
        released = self.ledger.take_released()
        if released:
            self.output.put(released)

    def _route(self, s: StageState, items: list[Item]) -> None:
        if not s.successors:
            self._to_output(s, items)
            return
        if len(s.successors) > 1:
            self.ledger.fan_out(items, len(s.successors) - 1)
        now = monotonic_ns()
        for t in s.successors:
            self._put(s, t.queue, items, t.name, now)

    def _put(self, s: StageState, q: StageQueue, items: list[Item], name: str, now: int) -> None:
        room = max(0, q.room())
        fits = items if len(items) <= room else items[:room]
        if fits:
            q.put(fits)
            if self._has_ins:
                self._ins.items_enqueued(name, list(map(_first, fits)), len(q.items), now)
        if len(fits) < len(items):
            s.overflow.append((q, items[len(fits) :]))

    def _to_output(self, s: StageState, items: list[Item]) -> None:
        """Results reaching the output are finished: the ledger counts their roots down
        (and, ordered, holds them until their turn)."""
        if not self.ordered:
            self._put(s, self.output, items, "<output>", monotonic_ns())
        self.ledger.arrive(items)

    def _drain_overflow(self, s: StageState) -> bool:
        progressed = False
        while s.overflow and s.overflow[0][0].room() > 0:
            q, items = s.overflow.popleft()
            name = next((t.name for t in s.successors if t.queue is q), "<output>")
            self._put(s, q, items, name, monotonic_ns())  # what does not fit goes back
            progressed = True
        return progressed

    def _lost_exception(self, s: StageState, task: Task, out: Outcome) -> BaseException:
        """The error a stopped worker stands for: TimeoutError or WorkerLostError."""
        lost = out.lost
        assert lost is not None
        index = lost.unit_index if 0 <= lost.unit_index < len(task.keys) else 0
        key = task.keys[index]
        if lost.timed_out:
            s.timeouts += 1
            how = (
                "was killed and replaced" if lost.pid is not None else "was abandoned and replaced"
            )
            return TimeoutError(
                f"item {_show(key)} ran longer than stage {s.name!r}'s timeout of "
                f"{s.stage.timeout} s; its worker {how}"
            )
        s.lost_workers += 1
        return WorkerLostError(
            f"stage {s.name!r} lost process worker {out.worker} (pid {lost.pid}, "
            f"{_describe_exit(lost.exitcode)}) while it ran item {_show(key)}; the item did not "
            "complete. If the process was killed for memory, lower this stage's workers or "
            "the pipeline's capacity",
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
