"""Completion: what happens when a task comes back, unit by unit, and where results go.

Each unit of an :class:`~conveyor.executors.base.Outcome` has one fate:

    succeeded    its result is paired with its key and routed to every successor's
                 queue (or to the output); what does not fit waits in the stage's
                 overflow, and the stage takes no new task until that has drained
    failed       retried under the stage's :class:`~conveyor.Retry` after its
                 backoff, else dead-lettered (``on_error="skip"``), else the run
                 fails; fatal failures (SystemExit, a broken stage) fail it at once
    not run      queued again at no cost of an attempt (it waited behind a task
                 whose worker died, or the task stopped at an earlier failure)

A call that succeeded is never run again: only failed and not-run units are.
"""

from __future__ import annotations

import operator
import random
import warnings
from collections.abc import Sequence
from itertools import compress
from time import monotonic_ns
from typing import Any

from conveyor.core import failures, fusion
from conveyor.core.events import Instruments
from conveyor.core.feed import DeadLettered
from conveyor.core.flow import StageQueue, StageState, unit_items
from conveyor.core.ledger import RootLedger
from conveyor.core.policy import Retry
from conveyor.errors import RunError, StageError
from conveyor.executors.base import Failure, Outcome, Task

Key = tuple[Any, ...]
Item = tuple[Key, Any]


class Completion:
    """Turns outcomes into results downstream, retries, dead letters or a failed run.

    Owned by the scheduler and called from its thread only; it shares the run's
    ledger, instruments and output buffer.
    """

    def __init__(
        self, ledger: RootLedger, instruments: Instruments, output: StageQueue, *, ordered: bool
    ) -> None:
        self.ledger = ledger
        self._ins = instruments
        self._has_ins = instruments.active
        self._finish_hook = instruments.wants("task_finished")
        self._place_hook = instruments.wants("worker_placed")
        self._placed: dict[tuple[str, int], str] = {}  # (stage, worker) -> its node
        self._enqueue_hook = instruments.wants("items_enqueued")
        self.output = output
        self.ordered = ordered
        # Source items pushed with a future (root -> their results so far, or the error
        # that dead-lettered them): their results go to the future, not the output.
        self.replies: dict[int, list[Any]] = {}
        # Attempts per (stage, unit key) that failed at least once.
        self._attempts: dict[tuple[str, Key], int] = {}
        self._rng = random.Random()
        self._cache_warned: set[tuple[str, str]] = set()
        self._calls: list[list[Any]] = []  # a fused task's later calls, by chain index
        self._failed: set[int] = set()  # and the indices of those that failed
        self._worker = -1
        self.states: dict[str, StageState] = {}  # by name: the stages results are made again by

    def complete(self, s: StageState, task: Task, out: Outcome) -> None:
        """``task`` of stage ``s`` came back: account for each of its units."""
        s.busy -= 1
        if out.remade is not None:
            self._remade(out.remade)
        for t in s.targets:
            t.reserved -= task.reserved
        if s.then is None:
            self._settle(s, task, out)
            return
        # A fused chain's task: the head's units first, then each later stage's calls
        # on what reached it (``_succeeded`` hands them on), as if each had run its own.
        ran = min(len(task.keys), max(0, len(out.stamps) - 1))
        unit_ns = s.unit_ns
        head, self._calls, self._failed = fusion.head_outcome(out, s.kind, len(s.fused))
        self._worker = out.worker
        self._settle(s, task, head)
        if ran:  # tasks are sized by the whole chain's time per unit
            s.unit_ns = unit_ns
            s.pace(ran, out.stamps[ran] - out.stamps[0])

    def _settle(self, s: StageState, task: Task, out: Outcome) -> None:
        n = len(task.keys)
        stamps = out.stamps
        ran = min(n, max(0, len(stamps) - 1))  # units that ran, failing ones included
        if ran:
            if out.ends is None:  # units ran one after the other
                busy = stamps[ran] - stamps[0]
            else:  # they overlapped: the busy time is each call's own
                busy = sum(map(operator.sub, out.ends[:ran], stamps[:ran]))
            if task.batch_keys is None:
                s.measured(ran, busy)
                s.items_in += ran
            else:
                items = sum(len(b) for b in task.batch_keys[:ran])
                # A fold's unit is a chunk of any size: its cost is per item.
                s.measured(items if s.fold is not None else ran, busy)
                s.items_in += items
        s.calls += out.calls
        if out.place is not None and self._place_hook:
            self._place(s.name, out.worker, out.place)
        if not (out.failures or out.lost or out.hits or out.uncached) and len(out.results) == n:
            # The common case: every unit succeeded (and ran whole: no slicing of keys).
            if self._finish_hook:
                if ran == n == len(stamps) - 1 and out.ends is None:
                    fin = self._ins.task_finished
                    fin(s.name, task.id, out.worker, task.keys, stamps[:-1], stamps[1:], None)
                else:
                    self._task_finished(s, task, out, ran, {})
            s.task_whole()
            self._succeeded(s, task, range(n), out.results)
            return
        failed = {f.unit: f for f in out.failures if 0 <= f.unit < n}
        if out.lost is not None:
            unit = min(max(out.lost.unit_index, 0), n - 1)
            if out.lost.timed_out:
                s.timeouts += 1
            else:
                s.lost_workers += 1
                s.worker_lost(n)
            error = failures.lost_error(s.name, s.stage.timeout, out.worker, task.keys, out.lost)
            failed[unit] = Failure(unit, error)
        if out.hits or out.uncached:
            self._cache_news(s, task, out)
        if self._finish_hook:
            self._task_finished(s, task, out, ran, failed)
        done = min(len(out.results), n)
        if done and not failed:
            results = out.results if len(out.results) == done else out.results[:done]
            self._succeeded(s, task, range(done), results)
        elif done:
            ok = [i for i in range(done) if i not in failed]
            if ok:
                self._succeeded(s, task, ok, [out.results[i] for i in ok])
        # Units that did not run, or whose results were lost with their worker, run
        # again at no cost of an attempt.
        again = [i for i in range(done, n) if i not in failed]
        if again:
            s.requeue(task, again, monotonic_ns())
        for unit in sorted(failed):
            f = failed[unit]
            self._unit_failed(s, task, unit, f.error, f.traceback, fatal=f.fatal)

    def _remade(self, remade: list[tuple[str, str, int]]) -> None:
        """Results of earlier stages were made again for this task (never routed again:
        the items they belong to are where they were)."""
        now = monotonic_ns()
        for stage, lost_on, count in remade:
            state = self.states.get(stage)
            if state is not None:
                state.remade += count
            if self._has_ins:
                self._ins.results_remade(stage, count, lost_on, now)

    def _place(self, stage: str, worker: int, place: str) -> None:
        if self._placed.get((stage, worker)) != place:
            self._placed[(stage, worker)] = place
            self._ins.worker_placed(stage, worker, place, monotonic_ns())

    def _task_finished(
        self, s: StageState, task: Task, out: Outcome, ran: int, failed: dict[int, Failure]
    ) -> None:
        stamps = out.stamps
        keys = task.keys if ran == len(task.keys) else task.keys[:ran]
        if out.ends is not None:
            starts, ends = stamps[:ran], out.ends[:ran]
        elif ran == len(stamps) - 1:
            starts, ends = stamps[:-1], stamps[1:]
        else:
            starts, ends = stamps[:ran], stamps[1 : ran + 1]
        if out.hits:  # cache hits are reported as such, not as calls
            hits = set(out.hits)
            calls = [i for i in range(ran) if i not in hits]
            keys = [keys[i] for i in calls]
            starts = [starts[i] for i in calls]
            ends = [ends[i] for i in calls]
        lost, timeout = out.lost, s.stage.timeout
        if lost and lost.timed_out and timeout and ran <= lost.unit_index < len(task.keys):
            # A call past its timeout held its worker at least that long: busy time.
            end = monotonic_ns()
            keys = [*keys, task.keys[lost.unit_index]]
            starts, ends = [*starts, end - int(timeout * 1e9)], [*ends, end]
        if out.ends is not None and len(ends) > 1:
            # Overlapping units, in the order they ended: the last one ends the task.
            order = sorted(range(len(ends)), key=ends.__getitem__)
            keys = [keys[i] for i in order]
            starts, ends = [starts[i] for i in order], [ends[i] for i in order]
        error = failed[min(failed)].error if failed else None
        self._ins.task_finished(s.name, task.id, out.worker, keys, starts, ends, error)

    def _succeeded(
        self, s: StageState, task: Task, units: Sequence[int], results: Sequence[Any]
    ) -> None:
        if self._attempts:
            for i in units:
                self._attempts.pop((s.name, task.keys[i]), None)
        paired = self._pair(s, task, units, results)
        if s.fold is not None:
            s.fold.add(paired)  # sent on once, when the fold is over
            return
        s.items_out += len(paired)
        if s.then is not None:  # fused: the next stage's calls on these items came along
            if not paired:
                return  # nothing reached it: unfused, it would have had no task either
            nxt = s.then
            nxt.queue.items_in += len(paired)  # they pass its queue at once, in the worker
            nxt.queue.items_out += len(paired)
            j = nxt.chain_index
            sub, out = fusion.sub_task(
                nxt, task, self._worker, paired, self._calls[j], j in self._failed
            )
            if self._has_ins and sub.keys:  # its queue is passed at once: no wait, depth 0
                t = out.stamps[0]
                self._ins.items_enqueued(nxt.name, sub.keys, 0, t)
                self._ins.task_started(nxt.name, task.id, sub.keys, 0, t)
            self._settle(nxt, sub, out)
            return
        # A map's results carry its units' keys: the task's own list when all succeeded.
        keys = task.keys if s.kind == "map" and len(units) == len(task.keys) else None
        self._route(s, paired, keys)

    def _cache_news(self, s: StageState, task: Task, out: Outcome) -> None:
        if out.hits:
            s.cache_hits += len(out.hits)
            if self._has_ins:
                self._ins.cache_hits(s.name, [task.keys[i] for i in out.hits], monotonic_ns())
        if out.uncached and (s.name, out.uncached) not in self._cache_warned:
            from conveyor.errors import CacheWarning  # the worker's sentence names the fix

            self._cache_warned.add((s.name, out.uncached))
            warnings.warn(f"stage {s.name!r}: {out.uncached}", CacheWarning, stacklevel=4)

    def _unit_failed(
        self,
        s: StageState,
        task: Task,
        i: int,
        error: BaseException,
        tb: str | None,
        *,
        fatal: bool = False,
    ) -> None:
        """Unit ``i`` of ``task`` failed: retry it, dead-letter it, or fail the run.

        Fatal failures (a BaseException that is not an Exception, a stage that cannot
        run at all) fail the run whatever the policy."""
        s.errors += 1
        key = task.keys[i]
        attempt = self._attempts.get((s.name, key), 1)
        policy = s.stage.retry
        assert isinstance(policy, Retry)
        retrying = not fatal and policy.retried(error, attempt)
        now = monotonic_ns()
        if self._has_ins:
            self._ins.unit_failed(s.name, key, error, tb, attempt, retrying, now)
        if retrying:
            self._attempts[(s.name, key)] = attempt + 1
            s.retries += 1
            s.requeue(task, [i], now + int(policy.delay(attempt, self._rng) * 1e9))
            return
        self._attempts.pop((s.name, key), None)
        if s.stage.on_error == "skip" and not fatal:
            items = unit_items(task, i)
            if s.executor is not None:  # a handle left in a store becomes its value
                values = s.executor.resolve(list(map(_value, items)))
                items = list(zip(map(_key, items), values, strict=True))
            for item_key, value in items:
                s.dead_lettered += 1
                if self._has_ins:
                    self._ins.dead_lettered(s.name, item_key, value, error, tb, now)
                if self.replies and item_key[0] in self.replies:
                    self.replies[item_key[0]].append(DeadLettered(s.name, error))
                self.ledger.dead_letter(item_key[0])
            return
        if isinstance(error, RunError):
            raise error  # already says what happened (a lost worker, a broken stage)
        batch = len(task.batch_keys[i]) if task.batch_keys is not None else None
        raise failures.stage_error(
            s.name, key, error, batch=batch, attempt=attempt, attempts=policy.attempts
        ) from error

    def _pair(
        self, s: StageState, task: Task, units: Sequence[int], results: Sequence[Any]
    ) -> list[Item]:
        """Give each result its key, and keep the root counts true."""
        keys = task.keys if len(units) == len(task.keys) else [task.keys[i] for i in units]
        if s.kind == "map":
            return list(zip(keys, results, strict=True))
        if s.kind == "filter":  # the items that passed go on as they came
            units_ = task.units if len(units) == len(task.units) else [task.units[i] for i in units]
            kept = list(compress(zip(keys, units_, strict=True), results))
            if len(kept) < len(keys):
                gone = compress(keys, map(operator.not_, results))
                self.ledger.drop(list(map(_key, gone)))  # key -> root
            return kept
        if s.kind == "flat_map":
            paired: list[Item] = []
            for key, children in zip(keys, results, strict=True):
                paired.extend(((*key, j), v) for j, v in enumerate(children))
                self.ledger.add(key[0], len(children) - 1)
            return paired
        assert task.batch_keys is not None
        batch_keys = [task.batch_keys[i] for i in units]
        if s.stage.split:
            paired = []
            for keys_, values in zip(batch_keys, results, strict=True):
                if not isinstance(values, Sequence) or len(values) != len(keys_):
                    got = len(values) if isinstance(values, Sequence) else type(values).__name__
                    raise StageError(
                        f"stage {s.name!r} has split=True, so its function must return one "
                        f"result per item of the batch: {len(keys_)} expected, got {got}; "
                        "return a list as long as the batch, or use split=False",
                        stage=s.name,
                        key=keys_[0],
                    )
                paired.extend(zip(keys_, values, strict=True))
            return paired
        # batch (unsplit) and collect: many items merge into one, keyed by the first.
        self.ledger.merge(batch_keys)
        return [(keys_[0], v) for keys_, v in zip(batch_keys, results, strict=True)]

    def _route(self, s: StageState, items: list[Item], keys: list[Key] | None = None) -> None:
        if not s.successors:
            self._to_output(s, items)
            return
        if len(s.successors) > 1:
            self.ledger.fan_out(items, len(s.successors) - 1)
        now = monotonic_ns()
        for t, q in zip(s.successors, s.targets, strict=True):  # a join's port, or its queue
            self._put(s, q, items, t.name, now, keys)

    def _put(
        self,
        s: StageState,
        q: StageQueue,
        items: list[Item],
        name: str,
        now: int,
        keys: list[Key] | None = None,
    ) -> None:
        """Put what fits of ``items`` into ``q`` (``keys``, when given, are their keys)."""
        room = max(0, q.room())
        fits = items if len(items) <= room else items[:room]
        if fits:
            q.put(fits)
            if self._enqueue_hook and q is not self.output:  # the output buffer is no stage
                if keys is None:
                    keys = list(map(_key, fits))
                elif len(fits) < len(keys):
                    keys = keys[: len(fits)]
                self._ins.items_enqueued(name, keys, len(q.items), now)
        if len(fits) < len(items):
            s.overflow.append((q, items[len(fits) :]))

    def emit(self, s: StageState, items: list[Item]) -> None:
        """``s`` sends ``items`` on (a fold's state, at its end)."""
        s.items_out += len(items)
        self._route(s, items)

    def _to_output(self, s: StageState, items: list[Item]) -> None:
        """Results reaching the output are finished: the ledger counts their roots down
        (and, ordered, holds them until their turn). Results of pushed items go to
        their callers instead."""
        if self.replies:
            replies = self.replies
            mine = [it for it in items if it[0][0] in replies]
            if mine:
                for key, value in mine:
                    replies[key[0]].append(value)
                self.ledger.arrive(mine, hold=False)
                items = [it for it in items if it[0][0] not in replies]
                if not items:
                    return
        if not self.ordered:
            self._put(s, self.output, items, "<output>", monotonic_ns())
        self.ledger.arrive(items)

    def drain_overflow(self, s: StageState) -> bool:
        progressed = False
        while s.overflow and s.overflow[0][0].room() > 0:
            q, items = s.overflow.popleft()
            # A sink's one target is the output buffer, and it has no successor.
            pairs = zip(s.successors, s.targets, strict=False)
            name = next((t.name for t, p in pairs if p is q), "<output>")
            self._put(s, q, items, name, monotonic_ns())  # what does not fit goes back
            progressed = True
        return progressed


_key = operator.itemgetter(0)
_value = operator.itemgetter(1)
