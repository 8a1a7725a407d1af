"""Stage fusion: consecutive stages that would hand every item from one worker pool to
an identical one run as one task in one worker instead.

A chain ``a -> b -> c`` of map, filter and flat_map stages on the same executor,
with the same workers and resources, is fused when nothing but the hand-off tells
them apart (:func:`fusable`): the driver then dispatches only ``a``'s tasks, and each
worker calls ``a``, ``b`` and ``c`` on one item before the next (:class:`Chain`), so
an item crosses a thread or a pipe once instead of three times and the driver routes
it once. The chain's pool has all its stages' workers (three stages of 2: 6 workers,
each running the whole chain), as many as apart, so fusing never costs parallelism. The recording does not change: the worker times every call of every
stage, and the driver settles the task stage by stage as if each had run its own
(``Completion`` replays ``b``'s and ``c``'s calls on the items ``a`` and ``b``
produced), so keys, the ledger, statistics, events, dead letters and the report
are those of the unfused pipeline.

Where: by default (``Pipeline(fuse="auto")``) only on executors whose workers do not
share the driver's memory (processes, Ray), where each hand-off pickles the item
both ways; there fusing cut the driver's CPU per item by a third to a half. Between
threads a hand-off is cheap and the chain's per-call bookkeeping cost about as much
as it saved (benchmarks/RESULTS-small-items.md), so threads and sync fuse only with
``fuse=True``; ``fuse=False`` keeps every stage apart.

What breaks a chain, and why:

- a kind other than map, filter, flat_map (batches, folds and collects gather
  items from many tasks);
- a different executor, worker count or resources (the stages would no longer share
  workers), ``async def`` functions (their calls overlap), class stages and ``init``
  (per-worker state), a cache or a timeout (both work per stage and per call);
- a retry on any stage but the first: a failed call of a later stage would rerun
  the calls before it that succeeded;
- a fan-out, a fan-in or a join between the two.

A later stage's failure is settled under its own ``on_error``: skipped, it is
dead-lettered with the value it was called on; otherwise the run fails naming it.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import traceback
import typing
from collections.abc import Callable, Iterable, Sequence
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.executors.base import (
    Failure,
    Outcome,
    Task,
    executor_traits,
    is_stateful,
    materialise,
)

if TYPE_CHECKING:
    from conveyor.core.flow import StageState
    from conveyor.core.pipeline import Pipeline
    from conveyor.core.stage import Stage

FUSABLE_KINDS = ("map", "filter", "flat_map")


def fusable(a: Stage, b: Stage, *, everywhere: bool = False) -> bool:
    """Whether ``b`` may run in ``a``'s worker, right after it, on ``a``'s results
    (the edge ``a -> b`` being the only one out of ``a`` and into ``b``). Unless
    ``everywhere``, only where items cross processes (see the module docstring)."""
    if not everywhere:
        traits = executor_traits(a.executor)
        if traits is None or traits.shares_memory:
            return False
    for s in (a, b):
        if s.kind not in FUSABLE_KINDS or s.is_async or is_stateful(s.fn) or s.init:
            return False
        if s.cache or s.timeout is not None or s.join:
            return False
    return (
        a.executor == b.executor
        and a.workers == b.workers
        and a.resources == b.resources
        and b.retry.attempts == 1  # type: ignore[union-attr]
    )


def fusion_groups(pipeline: Pipeline) -> tuple[tuple[str, ...], ...]:
    """The chains of two or more stages that run fused, in topological order."""
    if pipeline.fuse is False:
        return ()
    everywhere = pipeline.fuse is True
    groups: list[tuple[str, ...]] = []
    taken: set[str] = set()
    for name in pipeline.order:
        if name in taken:
            continue
        chain = [name]
        while True:
            out = pipeline.successors[chain[-1]]
            if len(out) != 1 or len(pipeline.predecessors[out[0]]) != 1:
                break
            a, b = pipeline.stages[chain[-1]], pipeline.stages[out[0]]
            if not fusable(a, b, everywhere=everywhere):
                break
            chain.append(out[0])
        if len(chain) > 1:
            groups.append(tuple(chain))
            taken.update(chain)
    return tuple(groups)


def fuse(stages: Sequence[StageState], groups: Iterable[tuple[str, ...]]) -> None:
    """Wire each group's states: the head runs a :class:`Chain` and sends its tasks'
    results where the tail's go; the others are settled from the head's outcomes."""
    by_name = {s.name: s for s in stages}
    for group in groups:
        chain = [by_name[n] for n in group]
        head, tail = chain[0], chain[-1]
        for j, (s, nxt) in enumerate(itertools.pairwise(chain), start=1):
            s.then = nxt
            nxt.head = head
            nxt.chain_index = j
        head.last = tail
        for s in chain:
            s.fused = group
        head.targets = tail.targets  # room and reservations: where the results land
        traits = head.traits
        fn = Chain(
            [s.stage.fn for s in chain],
            [s.kind for s in chain],
            portable=not traits.shares_memory,
            in_caller=traits.runs_in_caller,
        )
        # The chain's pool has every member's workers: as many processes as apart, each
        # running the whole chain, so fusing never takes parallelism away (k stages of
        # w workers each: k·w / Σs ≥ w / max s items per second).
        pool = sum(s.stage.workers for s in chain)
        for s in chain:
            s.slots = pool
        head.run_stage = dataclasses.replace(head.stage, fn=fn, kind="map", workers=pool)


def members(head: StageState) -> list[StageState]:
    """``head`` and the stages fused after it."""
    chain = [head]
    while chain[-1].then is not None:
        chain.append(chain[-1].then)
    return chain


# --- the worker's side --------------------------------------------------------------


@dataclasses.dataclass
class SubFailure:
    """A later stage's call failed: on ``value``, with ``error`` (from a process or an
    actor, packed as a process worker's exceptions are: :meth:`exception` rebuilds it)."""

    error: Any
    traceback: str
    fatal: bool
    value: Any
    packed: bool = False

    def exception(self) -> BaseException:
        if not self.packed:
            return typing.cast(BaseException, self.error)
        from conveyor.executors.processes.remote import rebuild

        return rebuild(self.error, self.traceback)


class Chain:
    """What a fused stage's worker calls per item: every stage of the chain, depth
    first, timing each call. The first stage's exception propagates (the task stops
    there, as an unfused stage's would); a later stage's is recorded and the item
    stops there.

    Returns ``(head_result, head_end_ns, calls, failed)``; ``calls`` lists, in call order,
    ``(stage index, start_ns, end_ns, result)`` for each later call; times count from
    the unit's start (a worker on another host has another clock); a result is a
    :class:`SubFailure` when the call raised. A result nobody downstream reads (a map's
    value followed by another map, a flat_map's values likewise) travels as ``None``
    or as a count, so that a fused process stage pickles only what leaves it.
    """

    def __init__(
        self,
        fns: Sequence[Callable[[Any], Any]],
        kinds: Sequence[str],
        *,
        portable: bool = False,
        in_caller: bool = False,
    ) -> None:
        self.fns = tuple(fns)
        self.kinds = tuple(kinds)
        self.portable = portable  # errors must pickle: they cross to the driver
        self.in_caller = in_caller  # Ctrl-C and SystemExit are the user's: let them through
        # Whose values the driver needs: those no later map or flat_map replaces.
        self.linear = "flat_map" not in self.kinds  # one item in, at most one out
        producers = [k != "filter" for k in kinds]
        self.keep = tuple(not any(producers[j + 1 :]) for j in range(len(kinds)))

    def __reduce__(self) -> tuple[Any, ...]:
        # Each function travels as a process worker's stage function does.
        from conveyor.executors.processes.functions import dump_function

        blobs = [dump_function(fn) for fn in self.fns]
        return (_load_chain, (blobs, self.kinds, self.portable, self.in_caller))

    def __call__(self, unit: Any) -> tuple[Any, int, list[tuple[int, int, int, Any]], bool]:
        if self.linear:
            return self._linear(unit)
        t0 = monotonic_ns()
        r = self.fns[0](unit)
        if self.kinds[0] == "flat_map":
            r = materialise(r)
        head_end = monotonic_ns()
        calls: list[tuple[int, int, int, Any]] = []
        failed = self._after(0, unit, r, calls, head_end, t0)[1]
        return self._shrink(0, r), head_end - t0, calls, failed

    def _linear(self, unit: Any) -> tuple[Any, int, list[tuple[int, int, int, Any]], bool]:
        """A chain of maps and filters: one item in, at most one out, no recursion."""
        clock, fns, kinds, keep = monotonic_ns, self.fns, self.kinds, self.keep
        t0 = clock()
        head = fns[0](unit)
        t = clock()
        calls: list[tuple[int, int, int, Any]] = []
        failed = False
        first = kinds[0]
        value = unit if first == "filter" else head
        if first != "filter" or head:
            for j in range(1, len(fns)):
                try:
                    r = fns[j](value)
                except BaseException as exc:
                    if self.in_caller and isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    end = clock()
                    calls.append((j, t - t0, end - t0, self._failed(exc, value)))
                    failed = True
                    break
                end = clock()
                if kinds[j] == "filter":
                    calls.append((j, t - t0, end - t0, r))
                    if not r:
                        break
                else:
                    calls.append((j, t - t0, end - t0, r if keep[j] else None))
                    value = r
                t = end
        return (head if keep[0] or first == "filter" else None), t - t0, calls, failed

    def _after(
        self, j: int, value: Any, r: Any, calls: list[tuple[int, int, int, Any]], t: int, t0: int
    ) -> tuple[int, bool]:
        """Send stage ``j``'s result on to stage ``j + 1``: the time at the end, and
        whether a call failed."""
        if j + 1 == len(self.fns):
            return t, False
        kind = self.kinds[j]
        if kind == "map":
            return self._call(j + 1, r, calls, t, t0)
        if kind == "filter":
            return self._call(j + 1, value, calls, t, t0) if r else (t, False)
        failed = False
        for child in r:
            t, bad = self._call(j + 1, child, calls, t, t0)
            failed |= bad
        return t, failed

    def _call(
        self, j: int, value: Any, calls: list[tuple[int, int, int, Any]], t: int, t0: int
    ) -> tuple[int, bool]:
        try:
            r = self.fns[j](value)
            if self.kinds[j] == "flat_map":
                r = materialise(r)
        except BaseException as exc:
            if self.in_caller and isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            end = monotonic_ns()
            calls.append((j, t - t0, end - t0, self._failed(exc, value)))
            return end, True
        end = monotonic_ns()
        index = len(calls)
        calls.append((j, t - t0, end - t0, None))
        after, failed = self._after(j, value, r, calls, end, t0)
        calls[index] = (j, t - t0, end - t0, self._shrink(j, r))
        return after, failed

    def _shrink(self, j: int, r: Any) -> Any:
        if self.keep[j] or self.kinds[j] == "filter":
            return r
        return len(r) if self.kinds[j] == "flat_map" else None

    def _failed(self, exc: BaseException, value: Any) -> SubFailure:
        tb = traceback.format_exc()
        fatal = not isinstance(exc, Exception)
        if not self.portable:
            return SubFailure(exc, tb, fatal, value)
        from conveyor.executors.processes.remote import pack  # what a process worker sends

        return SubFailure(pack(exc), tb, fatal, value, packed=True)


def _load_chain(blobs: list[bytes], kinds: Sequence[str], portable: bool, in_caller: bool) -> Chain:
    from conveyor.executors.processes.functions import load_function

    fns = [load_function(b) for b in blobs]
    return Chain(fns, kinds, portable=portable, in_caller=in_caller)


# --- the driver's side --------------------------------------------------------------


def head_outcome(
    out: Outcome, kind: str, stages: int
) -> tuple[Outcome, list[list[tuple[int, int, Any]]], set[int]]:
    """From a fused task's outcome: the head stage's own outcome (its results, its
    calls' times), each later stage's calls ``(start, end, result)`` by its index in
    the chain of ``stages``, and the indices where a call failed."""
    traces = out.results
    ran = min(len(traces), max(0, len(out.stamps) - 1))
    starts = out.stamps[:ran]
    ends = [
        s + t[1] if t is not None else e
        for t, s, e in zip(traces[:ran], starts, out.stamps[1:], strict=False)
    ]
    if ran < len(out.stamps) - 1:  # the unit that failed at the head: its whole time
        starts.append(out.stamps[ran])
        ends.append(out.stamps[ran + 1])
    calls: list[list[tuple[int, int, Any]]] = [[] for _ in range(stages)]
    failed: set[int] = set()
    for trace, start in zip(traces[:ran], starts, strict=False):
        if trace is None:
            continue
        for j, begin, end, r in trace[2]:
            calls[j].append((start + begin, start + end, r))
        if trace[3]:
            failed.update(j for j, *_, r in trace[2] if isinstance(r, SubFailure))
    results = [t[0] if t is not None else None for t in traces]
    if kind == "flat_map":  # values nobody reads came as their count
        results = [[None] * r if isinstance(r, int) else r for r in results]
    if not starts:
        return dataclasses.replace(out, results=results), calls, failed
    stamps = [*starts, max(ends)]
    return dataclasses.replace(out, results=results, stamps=stamps, ends=ends), calls, failed


def sub_task(
    s: StageState,
    task: Task,
    worker: int,
    items: Sequence[tuple[Any, Any]],
    calls: Sequence[tuple[int, int, Any]],
    failed: bool,
) -> tuple[Task, Outcome]:
    """Stage ``s``'s share of a fused task, as if it had run its own: its items, and
    its calls on them (the same number, in the same order)."""
    if len(calls) != len(items):
        raise AssertionError(
            f"fused stage {s.name!r}: {len(calls)} calls for {len(items)} items; "
            "please report this, and run with Pipeline(fuse=False) meanwhile"
        )
    units = list(map(_second, items))
    results = list(map(_third, calls))
    failures: list[Failure] = []
    if failed:
        for i, r in enumerate(results):
            if isinstance(r, SubFailure):
                units[i] = r.value
                failures.append(Failure(i, r.exception(), r.traceback, r.fatal))
                results[i] = None
    if s.kind == "flat_map":  # values nobody reads came as their count
        results = [[None] * r if isinstance(r, int) else r for r in results]
    ends = list(map(_second, calls))
    stamps = [*map(_first, calls), max(ends, default=0)]
    vtask = Task(task.id, s.name, units, list(map(_first, items)))
    return vtask, Outcome(task.id, worker, results, stamps, failures, ends=ends)


_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
_third = operator.itemgetter(2)
