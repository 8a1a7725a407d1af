"""The scheduler: one algorithm that moves items through any mix of executors.

The scheduler runs in the thread that iterates the run; its state is plain data
that only this thread touches, mutated by small named methods. Workers (threads,
processes, or the caller itself for ``sync``) only ever see tasks and hand back
outcomes through one thread-safe completion queue. Each pass of :meth:`_advance`:

    1. handle finished tasks: pair results with keys, route them downstream, retry
       or dead-letter failed units (:mod:`.completion`)
    2. deliver results a stage could not fit downstream (its overflow)
    3. dispatch tasks, downstream stages first, to every stage with a free slot
    4. read the source into the entry stages' queues

Flow control and chunking live with each stage's state (:mod:`.flow`): a task is
cut only into room downstream, so a queue's depth never passes its bound. A
flat_map can produce more results than it reserved; the excess waits in its
stage's overflow, and the stage takes no new task until that has drained (as a
worker blocked on a full queue would).

Keys and ordering: source item i has key ``(i,)``; a flat_map's j-th result of key
k has key ``k + (j,)``; a batch or collect result takes its first item's key. The
ledger (:mod:`.ledger`) counts each source item's live descendants. Results in
ordered mode wait until every earlier root has finished; the source is read at
most ``window`` roots past the oldest unfinished one, which bounds the reorder
buffer.

Liveness: every task dispatched gets exactly one outcome (the executor contract,
:mod:`conveyor.executors.base`). While waiting for one, the scheduler asks each
stage with work in flight whether it still has a live worker; none means the
work can never come back, and the run fails with :class:`~conveyor.StallError`
naming the stage and its items instead of waiting forever.
"""

from __future__ import annotations

import operator
import queue
import time
from collections import deque
from collections.abc import AsyncIterable, Iterable, Sequence
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.core import failures
from conveyor.core.completion import Completion
from conveyor.core.events import Instrument, Instruments, RunControl, RunInfo
from conveyor.core.feed import Controls, Feed, Replies, SourceRaised
from conveyor.core.flow import StageQueue, StageState, upstream_done
from conveyor.core.fusion import fuse, fusion_groups, members
from conveyor.core.handoff import hand_off
from conveyor.core.ledger import RootLedger
from conveyor.core.merge import merge_points, parked_by_root
from conveyor.core.stage import cache_spec
from conveyor.core.statistics import StageStatistics
from conveyor.errors import RunError, StageError
from conveyor.executors.base import Outcome, RunContext, Task, executor_class

if TYPE_CHECKING:
    from conveyor.core.pipeline import Pipeline

Key = tuple[Any, ...]
Item = tuple[Key, Any]

WAIT_SECONDS = 0.2  # wake up this often while waiting: Ctrl-C, the stall check
WAKE: Any = None  # posted to the completion queue: news that is not an outcome


class Scheduler:
    """Moves a source's items through a pipeline's stages; see the module docstring."""

    def __init__(
        self,
        pipeline: Pipeline,
        source: Iterable[Any] | AsyncIterable[Any] | None,
        *,
        ordered: bool,
        instruments: Sequence[Instrument],
        run_id: str,
        control: RunControl | None = None,
        push: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.control = control
        self.push = push
        self.run_id = run_id
        self.ordered = ordered
        self._source_done = False
        self._next_index = 0
        self._ins = Instruments(instruments)
        # Frequent events are prepared only when someone listens to them.
        self._has_ins = self._ins.active
        self._emit_hook = self._ins.wants("items_emitted")
        self._read_hook = self._ins.wants("items_read")
        self._enqueue_hook = self._ins.wants("items_enqueued")
        self._start_hook = self._ins.wants("task_started")
        self._completions: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self.controls = Controls(self._wake)
        self._local: deque[Outcome] = deque()
        self._inflight: dict[int, tuple[StageState, Task]] = {}
        self._task_ids = 0
        self._completed = False  # an outcome was handled since the joins were looked at
        self._context = RunContext(run_id)
        self._stalled: set[str] = set()  # stages seen with work in flight and no worker
        self.stages: list[StageState] = [
            StageState(
                pipeline.stages[n],
                pipeline.capacity_of(n),
                executor_class(pipeline.stages[n].executor).traits,
                bytes_bound=pipeline.stages[n].capacity_bytes or pipeline.capacity_bytes,
                grow_to=pipeline.grow_of(n),
            )
            for n in pipeline.order
        ]
        by_name = {s.name: s for s in self.stages}
        self.output = StageQueue(pipeline.capacity, grow_to=pipeline.grow_of())
        for s in self.stages:
            s.successors = [by_name[n] for n in pipeline.successors[s.name]]
            s.predecessors = [by_name[n] for n in pipeline.predecessors[s.name]]
            s.targets = [t.queue for t in s.successors] or [self.output]
        self.entries = [s for s in self.stages if not s.predecessors]
        self.deterministic = all(s.traits.runs_in_caller for s in self.stages)
        # Pushed items are answered when their root finishes: the ledger must say when.
        tracking = self._ins.wants("roots_finished") or push
        self.ledger = RootLedger(ordered=ordered, tracking=tracking)
        self._completion = Completion(self.ledger, self._ins, self.output, ordered=ordered)
        self._completion.states = by_name
        self.feed = Feed(
            source,
            wake=self._wake,
            threaded=Feed.needs_thread(source, deterministic=self.deterministic, push=push),
            deterministic=self.deterministic,
            name=pipeline.name,
            pushing=push and source is None,
        )
        self.replies = Replies(self._completion.replies)
        self.joins, self.folds = merge_points(self.stages, self.ledger)
        fuse(self.stages, fusion_groups(pipeline))  # after the joins' ports: tails' targets
        self._timed = [s for s in self.stages if s.max_wait_ns is not None]  # max_wait
        # A collect or fold holds every root until the source ends, so it must not be
        # throttled by the window; its output is one item, with nothing to reorder.
        bounds = sum(q.max_bound or 0 for q in [s.queue for s in self.stages] + [self.output])
        holds_all = any(s.kind in ("collect", "fold") for s in self.stages)
        self.window = 1 << 62 if holds_all else 2 * bounds
        self.items_read = 0
        self.items_emitted = 0
        self.started_ns = 0
        self.driver_ns = 0  # time spent moving items, not waiting: the driver's own cost

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start every stage's workers. On failure, ``shutdown`` cleans up what started."""
        # Cache specs may warn or raise: before any worker starts.
        specs = [cache_spec(s.stage, self.pipeline.name) for s in self.stages]
        for s, spec in zip(self.stages, specs, strict=True):
            if s.head is not None:
                continue  # fused: it runs in its head's workers
            # Tasks run in the caller finish inside submit(): their outcomes wait locally.
            post = self._local.append if s.traits.runs_in_caller else self._completions.put
            cls = executor_class(s.stage.executor)
            s.executor = cls(s.run_stage, post, cache=spec, context=self._context)
        hand_off(self.stages)  # where each stage's results go: values, or handles
        for s in self.stages:
            if s.executor is not None:
                s.executor.start()
        self.feed.start()
        # The run's clock starts once its workers are started, so that start-up
        # (spawning processes) does not count as the pipeline's time.
        self.started_ns = monotonic_ns()
        if self._has_ins:
            self._ins.run_started(self._run_info())

    def shutdown(self, *, cancel: bool, error: BaseException | None = None) -> None:
        """Stop every executor's workers (with ``cancel``, abandon work in flight), then
        free the run's shared resources. Every step runs even if an earlier one raised;
        the first error is raised at the end. Pushed items not finished fail with
        ``error`` (the run's)."""
        errors: list[BaseException] = []
        self.feed.shutdown(error)
        if self.ledger.tracking:
            try:
                self._report_finished()  # roots finished in the pass a failure interrupted
            except Exception as exc:
                errors.append(exc)
        for s in self.stages:
            if s.executor is not None:
                try:
                    s.executor.shutdown(cancel=cancel)
                except Exception as exc:
                    errors.append(exc)
        try:
            self._context.close()
        except Exception as exc:
            errors.append(exc)
        self.replies.abandon(error)
        self.controls.cancel()
        if errors:
            raise errors[0]

    def resize(self, stage: str, workers: int) -> None:
        """Give ``stage`` (and the stages fused with it) ``workers`` workers from now on."""
        failures.check_resize(self.pipeline, stage, workers)
        head = next(s for s in self.stages if s.name == stage)
        head = head.head or head
        if head.executor is not None:
            head.executor.resize(workers)
        for s in members(head):
            s.slots = workers
            if self._has_ins and self.started_ns:  # before: run_started tells the size
                self._ins.stage_resized(s.name, workers, monotonic_ns())

    def worker_pids(self) -> list[int]:
        return [pid for s in self.stages if s.executor for pid in s.executor.pids()]

    def _run_info(self) -> RunInfo:
        p = self.pipeline
        return RunInfo(
            run_id=self.run_id,
            pipeline=p.name,
            stages=tuple(s.info(p.predecessors[s.name], p.successors[s.name]) for s in self.stages),
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
            and out.room() < max(1, out.bound // 4)  # type: ignore[operator]
            and self._completions.empty()
        ):
            while True:
                t = monotonic_ns()
                progressed = self._advance()
                self.driver_ns += monotonic_ns() - t
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
            and not any(s.fold.holding for s in self.folds)  # type: ignore[union-attr]
            and not any(j.parked for j in self.joins)
        )

    def _next_due_ns(self) -> int | None:
        """The soonest retry, or partial batch whose ``max_wait`` runs out, of a stage
        that could take it (a full one waits for an outcome instead: no spinning)."""
        idle = not self._inflight  # then no outcome will wake us: every due time counts
        due = [s.retry[0][0] for s in self.stages if s.retry and (idle or s.can_take())]
        due += [d for s in self._timed if (d := s.deadline_ns()) and (idle or s.can_take())]
        return min(due, default=None)

    # --- control from other threads -------------------------------------------------------

    def _wake(self) -> None:
        self._completions.put(WAKE)

    def watermark(self) -> int:
        """N such that every source item before item N has finished (call it in the
        scheduler's thread: see ``call_soon``)."""
        if self.ordered:
            return self.ledger.frontier
        return min(self.ledger.live, default=self._next_index)

    def _wait(self) -> None:
        """Block until a worker finishes a task, the source or a control has news, a
        retry or a partial batch comes due, or a stalled batch can be flushed; raise
        StallError if work in flight can never come back."""
        due = self._next_due_ns()
        if not self._inflight and not self.feed.waiting:
            if due is not None:
                time.sleep(max(0.0, min(WAIT_SECONDS, (due - monotonic_ns()) / 1e9)))
                return
            if self._flush_stalled():
                return
            raise RunError(
                "the scheduler has nothing in flight and cannot make progress; this is a "
                f"bug in conveyor, please report it with this state: {failures.describe(self.stages)}",
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
                    return  # a retry or a partial batch is due: the next pass sends it
                self._check_stall()
                continue
            if out is not None:  # None: a wake-up (WAKE)
                self._stalled = set()  # news came: whatever looked stalled was not
                t = monotonic_ns()
                self._complete(out)
                self.driver_ns += monotonic_ns() - t
            return

    def _check_stall(self) -> None:
        self._stalled = failures.check_stall(self.stages, self._inflight.values(), self._stalled)

    # --- one pass ---------------------------------------------------------------

    def _advance(self) -> bool:
        progressed = False
        if self.controls.pending:
            self.controls.run()
        while self._local:
            self._complete(self._local.popleft())
            progressed = True
        while True:
            try:
                out = self._completions.get_nowait()
            except queue.Empty:
                break
            if out is not None:  # None: a wake-up (WAKE)
                self._complete(out)
            progressed = True
        for s in self.stages:
            if s.overflow:
                progressed |= self._completion.drain_overflow(s)
        if self.joins and self._completed:
            self._completed = False  # a completion may have left a join's item orphaned
            parked = parked_by_root(self.joins)
            for j in self.joins:
                progressed |= bool(parked) and j.release_orphans(parked)
        for s in self.folds:
            progressed |= self._end_fold(s)
        for s in reversed(self.stages):
            progressed |= self._dispatch(s)
        if self._read_source():
            progressed = True
            for s in self.entries:
                self._dispatch(s)
        if self.ordered:
            self._release()
        if self.ledger.tracking:
            self._report_finished()
        return progressed

    def _read_source(self) -> bool:
        if self._source_done:
            return False
        feed = self.feed
        n = min(q.queue.room() for q in self.entries)
        if self.ordered:
            n = min(n, self.ledger.frontier + self.window - self._next_index)
        feed.set_limit(n)
        i = self._next_index
        try:
            values, futures = feed.take(n) if n > 0 else ([], None)
        except SourceRaised as exc:
            if not isinstance(exc.error, Exception):
                raise exc.error from None  # Ctrl-C, SystemExit: the user's, as from a loop
            raise StageError(
                f"the source raised {type(exc.error).__name__} while reading item {i}: {exc.error}",
                stage="<source>",
                key=(i,),
            ) from exc.error
        if not values:
            if feed.done:
                self._source_done = True
                return True
            return False
        items: list[Item] = list(zip(map(_one, range(i, i + len(values))), values, strict=True))
        self._next_index = i + len(items)
        if futures is not None:
            self.replies.add(i, futures)
        self.ledger.read(i, len(items), len(self.entries))
        self.items_read += len(items)
        now = monotonic_ns()
        if self._read_hook or self._enqueue_hook:
            keys = list(map(_key, items))
            if self._read_hook:
                self._ins.items_read(keys, now)
        for s in self.entries:
            s.queue.put(items)
            if self._enqueue_hook:
                self._ins.items_enqueued(s.name, keys, len(s.queue.items), now)
        return True

    # --- dispatch ---------------------------------------------------------------

    def _dispatch(self, s: StageState) -> bool:
        progressed = False
        limit = s.slots * (1 + s.prefetch)
        while s.busy < limit and not s.last.overflow:
            retry_due = bool(s.retry) and s.retry[0][0] <= monotonic_ns()
            if not (retry_due or s.queue.items):
                break
            room = min(t.room() for t in s.targets)
            if room <= 0:
                break
            self._task_ids += 1
            task: Task | None
            if retry_due:
                task = s.retry_task(self._task_ids, room, monotonic_ns())
            else:
                # Only a batch or collect waits for its upstream to be done.
                done = s.kind in ("batch", "collect") and upstream_done(s, self._source_done)
                task = s.next_task(self._task_ids, room, upstream_done=done)
            if task is None:
                break
            self._submit(s, task)
            progressed = True
        return progressed

    def _submit(self, s: StageState, task: Task) -> None:
        for t in s.targets:
            t.reserved += task.reserved
        s.busy += 1
        s.tasks += 1
        self._inflight[task.id] = (s, task)
        task.dispatched_ns = monotonic_ns()
        if self._start_hook:
            self._ins.task_started(
                s.name, task.id, task.keys, len(s.queue.items), task.dispatched_ns
            )
        assert s.executor is not None
        s.executor.submit(task)

    def _end_fold(self, s: StageState) -> bool:
        """Send a fold's state on once no item can reach it any more."""
        fold = s.fold
        assert fold is not None
        if not fold.holding or s.queue.items or s.busy or s.retry:
            return False
        if not upstream_done(s, self._source_done):  # items may still come
            return False
        self._completion.emit(s, fold.take())
        return True

    def _flush_stalled(self) -> bool:
        """Nothing is in flight yet a batch stage waits for items that cannot come
        (its upstream is held back by the ordered window): send its partial batch."""
        for s in self.stages:
            if s.kind == "batch" and s.queue.items and s.busy < s.slots:
                self._task_ids += 1
                self._submit(s, s.partial_batches(self._task_ids))
                return True
        return False

    # --- completion and routing ---------------------------------------------------

    def _complete(self, out: Outcome) -> None:
        self._completed = True
        s, task = self._inflight.pop(out.task_id)
        self._completion.complete(s, task, out)

    def _report_finished(self) -> None:
        """Tell instruments which source items reached a terminal state (batched)."""
        finished = self.ledger.take_finished()
        if finished is None:
            return
        now = monotonic_ns()
        for state, roots in finished.items():
            if roots:
                if self.replies.futures:
                    self.replies.finished(roots)
                if self._has_ins:
                    self._ins.roots_finished(roots, state, now)

    def _release(self) -> None:
        """Move ordered results whose turn has come to the output buffer."""
        released = self.ledger.take_released()
        if released:
            self.output.put(released)

    def stage_statistics(self) -> dict[str, StageStatistics]:
        return {s.name: s.statistics() for s in self.stages}


_key = operator.itemgetter(0)


def _one(i: int) -> Key:
    return (i,)
