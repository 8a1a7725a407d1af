"""Measurements: what a recording says happened, per stage and per run.

Pure functions of a :class:`~conveyor.observe.recorder.Recording`. Definitions (all times
in seconds; the run's window ``[t0, t1]`` runs from its first unit's start to its
last unit's end or last item's finish, so neither the workers' start-up nor the
shutdown counts; start-up, from the run's start to t0, is reported on its own)::

    service            a unit's finished - started (a unit: an item, or a batch)
    service per item   busy / items_in, busy = Σ service of the stage's units
    demand             busy / c / N: the stage's work per source item (N items read;
                       c the calls a worker has in flight: an ``async def`` stage's
                       concurrency, else 1)
    queue wait         a unit's started - enqueued (its first item's enqueue)
    worker-seconds     ∫ workers(t) dt over [t0, t1] (resizes applied)
    utilisation        busy / c / worker-seconds
    capacity           mean workers × c / service per item (items per second)
    starved share      share of [t0, t1] with the input queue empty and a worker idle
    full share         share with the input queue full: depth >= bound - max(1, ⌈bound/10⌉)
    blocked share      share with some successor's input queue full
    makespan           t1 - t0
    throughput         items finished / makespan
    latency            an item's finish (its last result reached the output) - its read
    first latency      the first item to finish: its finish - max(its read, t0)
    bubble             1 - Σ busy / c / Σ worker-seconds
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from conveyor.executors.base import executor_traits
from conveyor.observe.histogram import Histogram
from conveyor.observe.places import NodeGroup, node_groups
from conveyor.observe.recording import Recording, StageRecording, full_depth

__all__ = ["Distribution", "RunMeasure", "StageMeasure", "is_full", "measure", "quantile"]


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of already sorted values, interpolating linearly (NumPy's default)."""
    if not ordered:
        return math.nan
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Count, mean, median, 95th and 99th percentiles and maximum of some durations (s)."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        """The distribution of ``values``; NaNs throughout when there are none."""
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        v = sorted(values)
        return cls(
            len(v), sum(v) / len(v), quantile(v, 0.5), quantile(v, 0.95), quantile(v, 0.99), v[-1]
        )

    @classmethod
    def of_histogram(cls, h: Histogram) -> Distribution:
        """The distribution of the durations (ns) counted in ``h``, in seconds: count,
        mean and maximum exact, percentiles within the histogram's relative error
        (:data:`conveyor.observe.histogram.RELATIVE_ERROR`, 0.39%)."""
        if not h.count:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        p50, p95, p99 = h.quantiles((0.5, 0.95, 0.99))
        assert h.high is not None
        return cls(h.count, h.mean / 1e9, p50 / 1e9, p95 / 1e9, p99 / 1e9, h.high / 1e9)


@dataclasses.dataclass(frozen=True)
class StageMeasure:
    """One stage's measured figures (definitions in the module docstring)."""

    name: str
    kind: str
    executor: str
    workers: int  # at the start of the run
    final_workers: int  # after the last resize
    mean_workers: float  # time-weighted over the run's window
    items_in: int
    items_out: int | None  # None when the run did not report its counters
    units: int
    errors: int
    busy_s: float
    service: Distribution  # per unit
    first_service_s: float | None  # the stage's first unit (by start): shows a warm-up
    service_per_item_s: float | None
    demand_s: float | None  # busy per source item
    queue_wait: Distribution  # per unit
    utilisation: float
    capacity: float | None  # items per second
    starved_share: float
    full_share: float
    blocked_share: float
    mean_queue_depth: float
    peak_queue_depth: int
    bound: int | None
    resizable: bool  # collect stages keep one worker; sync stages run in the caller
    predecessors: tuple[str, ...] = ()
    fused: tuple[str, ...] = ()  # the fused chain it ran in, sharing its workers
    nodes: tuple[NodeGroup, ...] = ()  # a cluster's workers by node (none: this machine)
    remade: tuple[tuple[str, int], ...] = ()  # results made again: (node lost with or "", n)


@dataclasses.dataclass(frozen=True)
class RunMeasure:
    """The run's measured figures, and its stages' in topological order."""

    pipeline: str
    run_id: str
    state: str
    items: int  # read from the source
    done: int  # finished with a result
    makespan_s: float
    throughput: float  # items finished per second of makespan
    latency: Distribution  # per finished item
    first_latency_s: float | None  # the first item to finish, from t0 at the earliest
    startup_s: float  # from the run's start to its first unit's start
    bubble: float
    cpus: int | None  # CPU cores of the machine that ran it, if recorded
    stages: dict[str, StageMeasure]
    t0_ns: int
    t1_ns: int


def is_full(depth: int, bound: int | None) -> bool:
    """Whether a queue of ``bound`` holding ``depth`` items counts as full (see module doc)."""
    level = full_depth(bound)
    return level is not None and depth >= level


def run_window(rec: Recording) -> tuple[int, int]:
    """The run's window: its first unit's start (the run's start if none ran), and its
    last unit's end or last item's finish."""
    t0 = rec.started_ns if rec.t0_ns is None else rec.t0_ns
    t1 = rec.end_ns if rec.t1_ns is None else rec.t1_ns
    return t0, max(t1, t0)


def _share(ns: int, t0: int, t1: int) -> float:
    return min(1.0, ns / (t1 - t0)) if t1 > t0 else 0.0


def measure(rec: Recording) -> RunMeasure:
    """Every measured figure of ``rec`` (definitions in the module docstring)."""
    t0, t1 = run_window(rec)
    wall = (t1 - t0) / 1e9
    n_items = rec.items_read
    stages: dict[str, StageMeasure] = {}
    total_busy = total_ws = 0.0
    for s in rec.stages.values():
        busy = s.busy_ns / 1e9
        # An async stage's worker has `concurrency` places for calls: its busy time
        # per place is what a worker of a plain stage would have.
        places = s.shape.concurrency
        ws = s.window_worker_ns / 1e9
        total_busy += busy / places
        total_ws += ws
        items_in = s.items_in if s.items_in is not None else _items_in(s)
        per_item = busy / items_in if items_in else None
        mean_w = ws / wall if wall > 0 else float(s.shape.workers)
        succ = [rec.stages[n] for n in s.shape.successors if n in rec.stages]
        blocked = max((_share(q.window_full_ns, t0, t1) for q in succ), default=0.0)
        first = s.first_service_ns
        stages[s.name] = StageMeasure(
            name=s.name,
            kind=s.shape.kind,
            executor=s.shape.executor,
            workers=s.shape.workers,
            final_workers=s.workers,
            mean_workers=mean_w,
            items_in=items_in,
            items_out=s.items_out,
            units=s.units,
            errors=s.errors,
            busy_s=busy,
            service=Distribution.of_histogram(s.service),
            first_service_s=None if first is None else first / 1e9,
            service_per_item_s=per_item,
            demand_s=busy / places / n_items if n_items else None,
            queue_wait=Distribution.of_histogram(s.wait),
            utilisation=busy / places / ws if ws > 0 else 0.0,
            capacity=mean_w * places / per_item if per_item else None,
            starved_share=_share(s.window_starved_ns, t0, t1),
            full_share=_share(s.window_full_ns, t0, t1),
            blocked_share=blocked,
            mean_queue_depth=s.window_depth_ns / (t1 - t0) if t1 > t0 else 0.0,
            peak_queue_depth=s.peak_depth,
            bound=s.shape.capacity,
            resizable=s.shape.kind != "collect" and not _runs_in_caller(s.shape.executor),
            predecessors=s.shape.predecessors,
            fused=s.shape.fused,
            nodes=node_groups(s, rec.places.get(s.name, {})),
            remade=tuple(sorted(rec.remade.get(s.name, {}).items())),
        )
    first_latency = None
    if rec.first_done_ns is not None and rec.first_read_ns is not None:
        first_latency = (rec.first_done_ns - max(rec.first_read_ns, t0)) / 1e9
    return RunMeasure(
        pipeline=rec.pipeline,
        run_id=rec.run_id,
        state=rec.state,
        items=n_items,
        done=rec.items_done,
        makespan_s=wall,
        throughput=rec.items_done / wall if wall > 0 else 0.0,
        latency=Distribution.of_histogram(rec.latency),
        first_latency_s=first_latency,
        startup_s=max(0, t0 - rec.started_ns) / 1e9,
        bubble=1 - total_busy / total_ws if total_ws > 0 else 0.0,
        cpus=rec.cpus,
        stages=stages,
        t0_ns=t0,
        t1_ns=t1,
    )


def _items_in(s: StageRecording) -> int:
    # Without the engine's counters: map-like stages take one item per unit; batch
    # and collect stages take every item that entered their queue.
    if s.shape.kind in ("batch", "collect"):
        return s.items_enqueued
    return s.units


def _runs_in_caller(executor: str) -> bool:
    traits = executor_traits(executor)
    return traits is not None and traits.runs_in_caller


def node_lines(m: RunMeasure) -> list[str]:
    """The report's words on a cluster run: one line per stage whose workers ran on a
    cluster's nodes, its workers grouped by node, e.g.::

    nodes of on_node: 127.0.0.3 1f2e3d4c: actors 0, 1 (150 units, busy 3.10 s);
        127.0.0.2 9a8b7c6d: actors 2, 3 (150 units, busy 3.02 s)

    and one per stage and node whose results were made again, e.g.::

    12 results lost with node 127.0.0.3 1f2e3d4c were made again by stage on_node
    """
    out = []
    for s in m.stages.values():
        if not s.nodes:
            continue
        groups = "; ".join(
            f"{g.node}: actor{'s' if len(g.workers) > 1 else ''} "
            f"{', '.join(map(str, g.workers))} ({g.units} units, busy {g.busy_s:.2f} s)"
            for g in s.nodes
        )
        out.append(f"nodes of {s.name}: {groups}")
    for s in m.stages.values():
        for node, n in s.remade:
            what = f"lost with node {node}" if node else "freed and needed again"
            out.append(f"{n} results {what} were made again by stage {s.name}")
    return out
