"""Measurements: what a recording says happened, per stage and per run.

Pure functions of a :class:`~conveyor.observe.recorder.Recording`. Definitions (all times
in seconds; the run's window ``[t0, t1]`` runs from its first unit's start to its
last unit's end or last item's finish, so neither the workers' start-up nor the
shutdown counts; start-up, from the run's start to t0, is reported on its own)::

    service            a unit's finished - started (a unit: an item, or a batch)
    service per item   busy / items_in, busy = Σ service of the stage's units
    demand             busy / N: the stage's work per source item (N items read)
    queue wait         a unit's started - enqueued (its first item's enqueue)
    worker-seconds     ∫ workers(t) dt over [t0, t1] (resizes applied)
    utilisation        busy / worker-seconds
    capacity           mean workers / service per item (items per second)
    starved share      share of [t0, t1] with the input queue empty and a worker idle
    full share         share with the input queue full: depth >= bound - max(1, ⌈bound/10⌉)
    blocked share      share with some successor's input queue full
    makespan           t1 - t0
    throughput         items finished / makespan
    latency            an item's finish (its last result reached the output) - its read
    first latency      the first item to finish: its finish - max(its read, t0)
    bubble             1 - Σ busy / Σ worker-seconds
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from conveyor.observe.recorder import Recording, StageRecording

__all__ = ["Distribution", "RunMeasure", "StageMeasure", "measure", "quantile", "time_share"]


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


def time_share(
    times: Sequence[int],
    values: Sequence[int],
    t0: int,
    t1: int,
    pred: Callable[[int], bool],
    *,
    initial: int = 0,
) -> float:
    """Share of [t0, t1] during which the step function (``values[i]`` from ``times[i]``
    on, ``initial`` before the first) satisfies ``pred``."""
    if t1 <= t0:
        return 0.0
    total = 0
    prev_t, prev_v = t0, initial
    for t, v in zip(times, values, strict=True):
        if t <= t0:
            prev_v = v
            continue
        if t >= t1:
            break
        if pred(prev_v):
            total += t - prev_t
        prev_t, prev_v = t, v
    if pred(prev_v):
        total += t1 - prev_t
    return total / (t1 - t0)


def time_mean(times: Sequence[int], values: Sequence[int], t0: int, t1: int) -> float:
    """Time-weighted mean of a step function over [t0, t1] (0 before the first sample)."""
    if t1 <= t0:
        return 0.0
    total = 0
    prev_t, prev_v = t0, 0
    for t, v in zip(times, values, strict=True):
        if t <= t0:
            prev_v = v
            continue
        if t >= t1:
            break
        total += prev_v * (t - prev_t)
        prev_t, prev_v = t, v
    total += prev_v * (t1 - prev_t)
    return total / (t1 - t0)


def is_full(depth: int, bound: int | None) -> bool:
    """Whether a queue of ``bound`` holding ``depth`` items counts as full (see module doc)."""
    if bound is None:
        return False
    return depth >= bound - max(1, math.ceil(bound / 10))


def _full(bound: int | None) -> Callable[[int], bool]:
    return lambda depth: is_full(depth, bound)


def run_window(rec: Recording) -> tuple[int, int]:
    """The run's window: its first unit's start (the run's start if none ran), and its
    last unit's end or last item's finish."""
    firsts = [min(s.started) for s in rec.stages.values() if s.started]
    t0 = min(firsts) if firsts else rec.started_ns
    ends = [s.finished[-1] for s in rec.stages.values() if s.finished]
    ends.extend(rec.done_t[-1:])
    t1 = max(ends) if ends else rec.end_ns
    return t0, max(t1, t0)


def _busy_steps(s: StageRecording) -> tuple[list[int], list[int]]:
    """The number of the stage's units running, as a step function."""
    events = sorted([(t, 1) for t in s.started] + [(t, -1) for t in s.finished])
    times, values, n = [], [], 0
    for t, d in events:
        n += d
        times.append(t)
        values.append(n)
    return times, values


def _starved_share(s: StageRecording, t0: int, t1: int) -> float:
    """Share of [t0, t1] with the input queue empty while a worker sat idle."""
    bt, bv = _busy_steps(s)
    # Stable on (time, kind): depth samples at one instant keep their recorded order.
    merged = sorted(
        [(t, 0, v) for t, v in zip(s.depth_t, s.depth, strict=True)]
        + [(t, 1, v) for t, v in zip(bt, bv, strict=True)]
        + [(t, 2, w) for t, w in s.resizes],
        key=lambda e: (e[0], e[1]),
    )
    depth, busy, workers = 0, 0, s.shape.workers
    times: list[int] = []
    flags: list[int] = []
    for t, kind, v in merged:
        if kind == 0:
            depth = v
        elif kind == 1:
            busy = v
        else:
            workers = v
        times.append(t)
        flags.append(1 if depth == 0 and busy < workers else 0)
    return time_share(times, flags, t0, t1, bool, initial=1)


def measure(rec: Recording) -> RunMeasure:
    """Every measured figure of ``rec`` (definitions in the module docstring)."""
    t0, t1 = run_window(rec)
    wall = (t1 - t0) / 1e9
    n_items = rec.items_read
    stages: dict[str, StageMeasure] = {}
    total_busy = total_ws = 0.0
    for s in rec.stages.values():
        busy = s.busy_ns() / 1e9
        ws = s.worker_seconds(t0, t1)
        total_busy += busy
        total_ws += ws
        items_in = s.items_in if s.items_in is not None else _items_in(s)
        enq = s.enqueued_ns()
        service = [(b - a) / 1e9 for a, b in zip(s.started, s.finished, strict=True)]
        waits = [max(0, a - e) / 1e9 for a, e in zip(s.started, enq, strict=True)]
        per_item = busy / items_in if items_in else None
        mean_w = ws / wall if wall > 0 else float(s.shape.workers)
        bound = s.shape.capacity
        succ = [rec.stages[n] for n in s.shape.successors if n in rec.stages]
        blocked = max(
            (time_share(q.depth_t, q.depth, t0, t1, _full(q.shape.capacity)) for q in succ),
            default=0.0,
        )
        stages[s.name] = StageMeasure(
            name=s.name,
            kind=s.shape.kind,
            executor=s.shape.executor,
            workers=s.shape.workers,
            final_workers=s.resizes[-1][1] if s.resizes else s.shape.workers,
            mean_workers=mean_w,
            items_in=items_in,
            items_out=s.items_out,
            units=s.units,
            errors=s.errors,
            busy_s=busy,
            service=Distribution.of(service),
            first_service_s=(
                service[min(range(len(service)), key=s.started.__getitem__)] if service else None
            ),
            service_per_item_s=per_item,
            demand_s=busy / n_items if n_items else None,
            queue_wait=Distribution.of(waits),
            utilisation=busy / ws if ws > 0 else 0.0,
            capacity=mean_w / per_item if per_item else None,
            starved_share=_starved_share(s, t0, t1),
            full_share=time_share(s.depth_t, s.depth, t0, t1, _full(bound)),
            blocked_share=blocked,
            mean_queue_depth=time_mean(s.depth_t, s.depth, t0, t1),
            peak_queue_depth=max(s.depth, default=0),
            bound=bound,
            resizable=s.shape.kind != "collect" and s.shape.executor != "sync",
            predecessors=s.shape.predecessors,
        )
    read = rec.read_ns()
    done_t = rec.done_ns()
    lat = [
        (t - read[r]) / 1e9 for r, t in zip(rec.done_roots, done_t, strict=True) if r < len(read)
    ]
    first = None
    if done_t:
        i = min(range(len(done_t)), key=done_t.__getitem__)
        r = rec.done_roots[i]
        first = (done_t[i] - max(read[r], t0)) / 1e9 if r < len(read) else None
    return RunMeasure(
        pipeline=rec.pipeline,
        run_id=rec.run_id,
        state=rec.state,
        items=n_items,
        done=rec.items_done,
        makespan_s=wall,
        throughput=rec.items_done / wall if wall > 0 else 0.0,
        latency=Distribution.of(lat),
        first_latency_s=first,
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
