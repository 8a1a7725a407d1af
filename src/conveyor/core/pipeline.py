"""Pipelines: a validated DAG of stages, and the entry points that run it.

A chain is a list; a DAG adds ``edges`` (pairs of stages or stage names)::

    Pipeline("etl", [extract, parse, load])
    Pipeline("fan", [split, left, right, merge],
             edges=[(split, left), (split, right), (left, merge), (right, merge)])

Stages with no predecessor read the source; stages with no successor are sinks,
whose results the run yields. Fan-out sends every item to each successor; fan-in
merges the items of several predecessors into one queue.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.core.events import Instrument
from conveyor.core.stage import Stage
from conveyor.errors import PipelineError
from conveyor.executors.base import executor_class

if TYPE_CHECKING:
    from conveyor.core.run import Run
    from conveyor.core.service import Service

DEFAULT_CAPACITY = 128
GROWN_ITEMS = 1024  # how far a default bound grows while its items are small

Edge = tuple["Stage | str", "Stage | str"]


class Pipeline:
    """A named DAG of stages, validated when built.

    Args:
        name: the pipeline's name, shown in reports and run history.
        stages: the stages; without ``edges`` they form a chain in this order.
        edges: ``(upstream, downstream)`` pairs, by stage or by name, for a DAG.
        ordered: yield results in source order (a bounded reorder buffer holds
            early results); default unordered, which never waits for stragglers.
        capacity: default bound of each stage's input queue, in items. None (the
            default) bounds each at 128 items, grown up to 1,024 for a stage whose
            units take under 0.1 ms while the items are small (the queue holds at most
            about 1 MiB of them): small items then travel in larger tasks. A number
            fixes every default bound at that.
        capacity_bytes: default bound of each stage's input queue in bytes, from the
            measured size of the items that pass (None: items only).
        source: the default source for :meth:`run` and ``conveyor run``: an
            iterable, or a function of no arguments returning one.
        fuse: run consecutive map, filter and flat_map stages that share an
            executor and workers as one task per item in one worker (:attr:`fused`,
            :meth:`plan`); each stage is still timed and reported on its own.
            ``"auto"`` (the default) fuses where items would cross processes
            (processes, Ray), ``True`` on every executor, ``False`` never.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[Stage | Callable[..., Any]],
        *,
        edges: Iterable[Edge] | None = None,
        ordered: bool = False,
        capacity: int | None = None,
        capacity_bytes: int | None = None,
        source: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
        fuse: bool | str = "auto",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise PipelineError(f"pipeline name must be a non-empty string, got {name!r}")
        if capacity is not None and (
            isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
        ):
            raise PipelineError(
                f"pipeline {name!r}: capacity={capacity!r}; give a whole number of at least 1, "
                "or None (128 items, grown for small items)"
            )
        if capacity_bytes is not None and (
            isinstance(capacity_bytes, bool)
            or not isinstance(capacity_bytes, int)
            or capacity_bytes < 1
        ):
            raise PipelineError(
                f"pipeline {name!r}: capacity_bytes={capacity_bytes!r}; give a whole number "
                "of bytes, e.g. 64 << 20, or None"
            )
        self.name = name
        self.ordered = ordered
        self.capacity_given = capacity  # None: the default, which grows for small items
        self.capacity = DEFAULT_CAPACITY if capacity is None else capacity
        self.capacity_bytes = capacity_bytes
        self.source = source
        if fuse not in (True, False, "auto"):
            raise PipelineError(
                f"pipeline {name!r}: fuse={fuse!r}; give 'auto' (processes and Ray), "
                "True (every executor) or False (never)"
            )
        self.fuse = fuse
        self.stages: dict[str, Stage] = {}
        for s in stages:
            if not isinstance(s, Stage):
                s = Stage(s)  # a plain function becomes a map stage on threads
            if s.name in self.stages:
                raise PipelineError(
                    f"pipeline {name!r}: two stages are named {s.name!r}; stage names must "
                    f"be unique: rename one, e.g. stage(fn, name='{s.name}_2')",
                    stage=s.name,
                )
            executor_class(s.executor).check(s, pipeline_built=True)
            self.stages[s.name] = s
        if not self.stages:
            raise PipelineError(f"pipeline {name!r} has no stages; give at least one")
        names = list(self.stages)
        if edges is None:
            pairs = list(itertools.pairwise(names))
        else:
            pairs = [(self._resolve(a), self._resolve(b)) for a, b in edges]
        self.successors: dict[str, tuple[str, ...]] = {n: () for n in names}
        self.predecessors: dict[str, tuple[str, ...]] = {n: () for n in names}
        for a, b in pairs:
            if a == b:
                raise PipelineError(
                    f"pipeline {name!r}: edge {a!r} -> {b!r} connects a stage to itself; "
                    "pipelines are acyclic",
                    stage=a,
                )
            if b in self.successors[a]:
                continue
            self.successors[a] += (b,)
            self.predecessors[b] += (a,)
        self.order: tuple[str, ...] = self._topological_order()
        for n, s in self.stages.items():
            if s.join and len(self.predecessors[n]) < 2:
                raise PipelineError(
                    f"pipeline {name!r}: stage {n!r} has join=True but "
                    f"{len(self.predecessors[n])} predecessor(s); a join meets the results "
                    "of two or more stages: add edges into it, or drop join=True",
                    stage=n,
                )
        self.entries = tuple(n for n in self.order if not self.predecessors[n])
        self.sinks = tuple(n for n in self.order if not self.successors[n])

    def _resolve(self, ref: Stage | str) -> str:
        n = ref.name if isinstance(ref, Stage) else ref
        if n not in self.stages:
            known = ", ".join(self.stages)
            raise PipelineError(
                f"pipeline {self.name!r}: an edge names stage {n!r}, which is not among "
                f"its stages ({known}); add it to the stage list",
                stage=n,
            )
        return n

    def _topological_order(self) -> tuple[str, ...]:
        # Kahn's algorithm, stable in declaration order; leftovers form a cycle.
        indegree = {n: len(p) for n, p in self.predecessors.items()}
        ready = [n for n in self.stages if indegree[n] == 0]
        order: list[str] = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for m in self.successors[n]:
                indegree[m] -= 1
                if indegree[m] == 0:
                    ready.append(m)
        if len(order) < len(self.stages):
            cycle = self._find_cycle({n for n in self.stages if n not in order})
            raise PipelineError(
                f"pipeline {self.name!r} has a cycle: {' -> '.join(cycle)}; pipelines are "
                "acyclic: remove one of these edges",
                stage=cycle[0],
            )
        return tuple(order)

    def _find_cycle(self, nodes: set[str]) -> list[str]:
        start = min(nodes, key=list(self.stages).index)
        path, seen = [start], {start}
        while True:
            nxt = next(m for m in self.successors[path[-1]] if m in nodes)
            if nxt in seen:
                return [*path[path.index(nxt) :], nxt]
            path.append(nxt)
            seen.add(nxt)

    def capacity_of(self, stage: str) -> int | None:
        """The bound of ``stage``'s input queue; ``None`` for a collect stage."""
        s = self.stages[stage]
        if s.kind == "collect":
            return None
        bound = s.capacity if s.capacity is not None else self.capacity
        if s.kind == "batch":
            assert s.size is not None
            bound = max(bound, s.size)  # a full batch must fit in the queue
        return bound

    def grow_of(self, stage: str | None = None) -> int | None:
        """How far ``stage``'s input queue (None: the output buffer) may grow for small
        items: only a default bound grows (no ``capacity`` or ``capacity_bytes`` given
        on the stage or the pipeline); None when it does not."""
        if self.capacity_given is not None or self.capacity_bytes is not None:
            return None
        if stage is not None:
            s = self.stages[stage]
            if s.kind == "collect" or s.capacity is not None or s.capacity_bytes is not None:
                return None
        return GROWN_ITEMS

    def stream(
        self,
        source: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
        *,
        ordered: bool | None = None,
        instruments: Sequence[Instrument] = (),
        record: bool = True,
        progress: bool = False,
    ) -> Run:
        """Start a run over ``source`` and return it as an iterator of results.

        Results stream: the first ones arrive before the source is exhausted.
        The pipeline advances while you iterate; close the run (or leave its
        ``with`` block) to stop early, which stops every worker. ``record`` keeps
        every unit's times for ``run.recording`` and ``run.report()``; turn it off
        to save its small per-item cost. ``progress`` shows each stage's progress on
        stderr until the run ends: a live table on a terminal or in Jupyter, plain
        lines every 10 s elsewhere (``conveyor.observe.ProgressDisplay`` to choose).
        """
        from conveyor.core.run import Run

        return Run(
            self,
            self._resolve_source(source),
            ordered=self.ordered if ordered is None else ordered,
            instruments=_with_progress(instruments) if progress else instruments,
            record=record,
        )

    def run(
        self,
        source: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
        *,
        ordered: bool | None = None,
        instruments: Sequence[Instrument] = (),
        record: bool = True,
        progress: bool = False,
    ) -> Run:
        """Run to the end; the returned run holds ``results`` (a list), statistics, and
        (with ``record``) its recording: ``run.report()`` explains it. ``progress``
        shows the run's progress as it goes (see :meth:`stream`)."""
        run = self.stream(
            source, ordered=ordered, instruments=instruments, record=record, progress=progress
        )
        run.wait()
        return run

    def start(
        self,
        source: Iterable[Any] | AsyncIterable[Any] | Callable[[], Iterable[Any]] | None = None,
        *,
        on_result: Callable[[Any], None] | None = None,
        ordered: bool | None = None,
        instruments: Sequence[Instrument] = (),
        record: bool = True,
        buffer: int = 1024,
        progress: bool = False,
    ) -> Service:
        """Run in the background, as a service: return at once with a
        :class:`~conveyor.Service` handle.

        Items come from ``source`` (the run ends when it does) and from
        ``service.submit(item)``, whose future resolves with that item's result; with no
        source (and none given to the pipeline), the service runs until
        ``service.stop()``. Results of source items go to ``on_result`` (called in the
        service's thread) or wait, up to ``buffer`` of them, for whoever iterates the
        service. ``stop(drain=True)`` stops reading, finishes what was read, and ends.
        ``progress`` shows each stage's progress on stderr while it runs (see
        :meth:`stream`).
        """
        from conveyor.core.run import Run
        from conveyor.core.service import Service

        if source is not None or self.source is not None:
            source = self._resolve_source(source)
        run = Run(
            self,
            source,
            ordered=self.ordered if ordered is None else ordered,
            instruments=_with_progress(instruments) if progress else instruments,
            record=record,
            push=True,
        )
        return Service(run, on_result=on_result, buffer=buffer)

    def _resolve_source(
        self, source: Iterable[Any] | AsyncIterable[Any] | Callable[[], Iterable[Any]] | None
    ) -> Iterable[Any] | AsyncIterable[Any]:
        if source is None:
            source = self.source
        if source is None:
            raise PipelineError(
                f"pipeline {self.name!r} was given no source; pass an iterable to "
                "run()/stream(), or build the pipeline with source=..."
            )
        if callable(source) and not hasattr(source, "__iter__"):
            source = source()
        if not isinstance(source, (Iterable, AsyncIterable)):
            raise PipelineError(
                f"pipeline {self.name!r}: the source {source!r} is not iterable; "
                "give a list, a generator, a file, an async iterator, or any iterable"
            )
        return source

    def with_config(self, config: Any) -> Pipeline:
        """A new pipeline with a config's policies applied by stage name: ``config`` is
        a TOML file's path or the dict it reads as (``conveyor.config``); this one is
        left as it was. A wrong key or value is a :class:`~conveyor.ConfigError`."""
        from conveyor.config import apply_config

        return apply_config(self, config)

    @property
    def fused(self) -> tuple[tuple[str, ...], ...]:
        """The chains of stages that run fused, one task per item in one worker
        (:mod:`conveyor.core.fusion`); ``Pipeline(..., fuse=False)`` fuses none."""
        from conveyor.core.fusion import fusion_groups

        return fusion_groups(self)

    def plan(self) -> str:
        """One line per stage as it will run: its kind, executor and workers, and the
        stages fused into one task (``parse -> clean`` runs ``clean`` in the chain's
        pool, on each item as it leaves ``parse``; the pool has both stages' workers)."""
        fused = {n: g for g in self.fused for n in g}
        lines = [f"pipeline {self.name!r}:"]
        for n in self.order:
            s, group = self.stages[n], fused.get(n)
            if group and group[0] != n:
                continue
            names = " -> ".join(group) if group else n
            workers = sum(self.stages[m].workers for m in group) if group else s.workers
            where = f"{s.executor}, {workers} worker{'s' if workers != 1 else ''}"
            kinds = "/".join(dict.fromkeys(self.stages[m].kind for m in group or (n,)))
            note = "  (fused: one task per item)" if group else ""
            lines.append(f"  {names}  [{kinds}; {where}]{note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        fused = f", fused={list(self.fused)}" if self.fused else ""
        return f"Pipeline({self.name!r}, stages={list(self.order)}{fused})"


def _with_progress(instruments: Sequence[Instrument]) -> list[Instrument]:
    """``instruments`` and a progress display (rich, the CLI's dependency, loaded now)."""
    from conveyor.observe.display import ProgressDisplay

    return [*instruments, ProgressDisplay()]
