"""Stage fusion: consecutive stages that would hand every item from one worker pool to
an identical one run as one task in one worker instead.

A chain ``a -> b -> c`` of map, filter and flat_map stages on the same executor,
with the same workers and resources, is fused when nothing but the hand-off tells
them apart (:func:`fusable`): the driver then dispatches only ``a``'s tasks, and each
worker calls ``a``, ``b`` and ``c`` on one item before the next (:class:`Chain`), so
an item crosses a thread or a pipe once instead of three times and the driver routes
it once. The recording does not change: the worker times every call of every
stage, and the driver settles the task stage by stage as if each had run its own
(``Completion`` replays ``b``'s and ``c``'s calls on the items ``a`` and ``b``
produced), so keys, the ledger, statistics, events, dead letters and the report
are those of the unfused pipeline. ``Pipeline(fuse=False)`` keeps every stage apart.

What breaks a chain, and why:

- a kind other than map, filter, flat_map (batches, folds and collects gather
  items from many tasks);
- a different executor, worker count, resources or concurrency (the stages would
  no longer share workers), ``async def`` functions, class stages and ``init``
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
import traceback
import typing
from collections.abc import Callable, Iterable, Sequence
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.executors.base import Failure, Outcome, Task, is_stateful

if TYPE_CHECKING:
    from conveyor.core.flow import StageState
    from conveyor.core.pipeline import Pipeline
    from conveyor.core.stage import Stage

FUSABLE_KINDS = ("map", "filter", "flat_map")


def fusable(a: Stage, b: Stage) -> bool:
    """Whether ``b`` may run in ``a``'s worker, right after it, on ``a``'s results
    (the edge ``a -> b`` being the only one out of ``a`` and into ``b``)."""
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
    if not pipeline.fuse:
        return ()
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
            if not fusable(a, b):
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
        head.run_stage = dataclasses.replace(head.stage, fn=fn, kind="map")


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

    Returns ``(head_result, head_end_ns, calls)``; ``calls`` lists, in call order,
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
        producers = [k != "filter" for k in kinds]
        self.keep = tuple(not any(producers[j + 1 :]) for j in range(len(kinds)))

    def __reduce__(self) -> tuple[Any, ...]:
        # Each function travels as a process worker's stage function does.
        from conveyor.executors.processes.functions import dump_function

        blobs = [dump_function(fn) for fn in self.fns]
        return (_load_chain, (blobs, self.kinds, self.portable, self.in_caller))

    def __call__(self, unit: Any) -> tuple[Any, int, list[tuple[int, int, int, Any]]]:
        t0 = monotonic_ns()
        r = self.fns[0](unit)
        if self.kinds[0] == "flat_map":
            r = materialise(r)
        head_end = monotonic_ns()
        calls: list[tuple[int, int, int, Any]] = []
        self._after(0, unit, r, calls, head_end)
        # Times from the unit's start: the executor places that on the driver's clock.
        calls = [(j, start - t0, end - t0, r) for j, start, end, r in calls]
        return self._shrink(0, r), head_end - t0, calls

    def _after(
        self, j: int, value: Any, r: Any, calls: list[tuple[int, int, int, Any]], t: int
    ) -> int:
        """Send stage ``j``'s result on to stage ``j + 1``; the time at the end."""
        if j + 1 == len(self.fns):
            return t
        kind = self.kinds[j]
        if kind == "map":
            return self._call(j + 1, r, calls, t)
        if kind == "filter":
            return self._call(j + 1, value, calls, t) if r else t
        for child in r:
            t = self._call(j + 1, child, calls, t)
        return t

    def _call(self, j: int, value: Any, calls: list[tuple[int, int, int, Any]], t: int) -> int:
        try:
            r = self.fns[j](value)
            if self.kinds[j] == "flat_map":
                r = materialise(r)
        except BaseException as exc:
            if self.in_caller and isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            end = monotonic_ns()
            calls.append((j, t, end, self._failed(exc, value)))
            return end
        end = monotonic_ns()
        index = len(calls)
        calls.append((j, t, end, None))
        end = self._after(j, value, r, calls, end)
        calls[index] = (j, t, calls[index][2], self._shrink(j, r))
        return end

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


def materialise(r: Any) -> list[Any]:
    if isinstance(r, (str, bytes)) or not isinstance(r, Iterable):
        raise TypeError(
            f"a flat_map stage must return an iterable of results (a list, a generator), "
            f"got {type(r).__name__}; return [value] for one result, [] for none"
        )
    return list(r)


# --- the driver's side --------------------------------------------------------------


def head_outcome(out: Outcome, n: int, kind: str) -> tuple[Outcome, list[list[Any]]]:
    """The head stage's own outcome (its results, its calls' times) and the later
    stages' calls per stage index, from a fused task's outcome of ``n`` units."""
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
    calls: list[list[Any]] = []
    for trace, start in zip(traces[:ran], starts, strict=False):
        if trace is None:
            continue
        for j, begin, end, r in trace[2]:
            while len(calls) <= j:
                calls.append([])
            calls[j].append((j, start + begin, start + end, r))
    results = [t[0] if t is not None else None for t in traces]
    if kind == "flat_map":  # values nobody reads came as their count
        results = [[None] * r if isinstance(r, int) else r for r in results]
    stamps = [*starts, max(ends, default=starts[0] if starts else 0)]
    head = dataclasses.replace(out, results=results, stamps=stamps, ends=ends)
    if not starts:
        head = dataclasses.replace(out, results=results)
    return head, calls


def sub_task(
    s: StageState, task: Task, worker: int, items: Sequence[tuple[Any, Any]], calls: Sequence[Any]
) -> tuple[Task, Outcome]:
    """Stage ``s``'s share of a fused task, as if it had run its own: its items, and
    its calls on them (the same number, in the same order)."""
    if len(calls) != len(items):
        raise AssertionError(
            f"fused stage {s.name!r}: {len(calls)} calls for {len(items)} items; "
            "please report this, and run with Pipeline(fuse=False) meanwhile"
        )
    units = [v for _, v in items]
    results: list[Any] = []
    failures: list[Failure] = []
    for i, (_, _, _, r) in enumerate(calls):
        if isinstance(r, SubFailure):
            units[i] = r.value
            failures.append(Failure(i, r.exception(), r.traceback, r.fatal))
            r = None
        elif s.kind == "flat_map" and isinstance(r, int):
            r = [None] * r
        results.append(r)
    starts = [c[1] for c in calls]
    ends = [c[2] for c in calls]
    vtask = Task(task.id, s.name, units, [k for k, _ in items])
    stamps = [*starts, max(ends, default=0)]
    return vtask, Outcome(task.id, worker, results, stamps, failures, ends=ends)
