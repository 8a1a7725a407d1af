"""The performance model, and predictions from it: throughput, latency, makespan.

For stage i with demand d_i (busy seconds per source item: its mean service time
per item s_i times the items it sees per source item) and w_i workers::

    capacity          c_i = w_i / d_i           source items per second
    period            P   = max_i d_i / w_i     the bottleneck: the stage attaining it
    throughput        λ   = 1 / P
    latency           L   = max over source-to-sink paths of Σ u_i, u_i the mean
                            service time of one unit (an item, or a whole batch)
    makespan          T_N ≈ L + (N - 1) · P
    barrier (convoy)  T   = Σ_i N · d_i / w_i   each stage finishing before the next

A what-if changes w_i (``workers``) or divides d_i and u_i by a factor
(``faster``) and computes the same formulas: speeding up a stage that does not
attain the max leaves P, and so λ, unchanged. Fused stages (one task per item in one
pool, :mod:`conveyor.core.fusion`) share their workers: each one's load is the
chain's Σ d_i / w, and resizing one resizes them all, as the engine does. Little's law (L = λ·W) is checked
on the steady part of a run, between its 10th and 90th percentile finishes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from conveyor.analysis._measure import RunMeasure
from conveyor.observe.recording import Recording

__all__ = ["Little", "Model", "Prediction", "StageModel", "little", "model_of", "predict"]


@dataclasses.dataclass(frozen=True)
class StageModel:
    """One stage in the model: its demand per source item, unit time and workers."""

    name: str
    demand_s: float  # busy seconds per source item
    unit_s: float  # mean service time of one unit
    workers: int
    predecessors: tuple[str, ...] = ()
    resizable: bool = True
    fused: tuple[str, ...] = ()  # a fused chain's stages share one pool: its own included


@dataclasses.dataclass(frozen=True)
class Model:
    """The pipeline as the model sees it: stages in topological order."""

    stages: tuple[StageModel, ...]

    def stage(self, name: str) -> StageModel:
        for s in self.stages:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.stages)
        raise KeyError(f"no stage {name!r} in the model (its stages: {known})")

    @property
    def workers(self) -> dict[str, int]:
        return {s.name: s.workers for s in self.stages}

    @property
    def demands(self) -> dict[str, float]:
        return {s.name: s.demand_s for s in self.stages}

    @property
    def fused(self) -> tuple[tuple[str, ...], ...]:
        """The fused chains: each shares one pool of workers."""
        return tuple(dict.fromkeys(s.fused for s in self.stages if s.fused))

    def pools(self, workers: Mapping[str, int]) -> int:
        """Workers in all, a fused chain's pool counted once."""
        heads = {s.name: s.fused[0] if s.fused else s.name for s in self.stages}
        return sum({heads[n]: w for n, w in workers.items()}.values())


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What the model predicts for one configuration."""

    workers: dict[str, int]
    period_s: float
    throughput: float  # items per second, 1 / period
    latency_s: float  # of one item through an empty pipeline
    bottleneck: str
    items: int | None = None
    makespan_s: float | None = None  # L + (N - 1) P for ``items`` items
    barrier_s: float | None = None  # Σ N d_i / w_i, for comparison


def model_of(m: RunMeasure, *, workers: str = "mean") -> Model:
    """The model of a measured run. ``workers="mean"`` uses each stage's time-weighted
    mean pool (rounded to whole workers); ``"start"`` and ``"final"`` the pool at the
    start or after the last resize."""
    stages = []
    for s in m.stages.values():
        w = {"mean": max(1, round(s.mean_workers)), "start": s.workers, "final": s.final_workers}[
            workers
        ]
        stages.append(
            StageModel(
                name=s.name,
                demand_s=s.demand_s or 0.0,
                unit_s=s.service.mean if s.service.count else 0.0,
                workers=w,
                predecessors=s.predecessors,
                resizable=s.resizable,
                fused=s.fused,
            )
        )
    return Model(tuple(stages))


def predict(
    model: Model,
    *,
    workers: Mapping[str, int] | None = None,
    faster: Mapping[str, float] | None = None,
    items: int | None = None,
) -> Prediction:
    """The model's prediction with some stages' ``workers`` changed, or some made
    ``faster`` by a factor (2.0: twice as fast), for ``items`` source items."""
    workers = dict(workers or {})
    faster = dict(faster or {})
    for name in [*workers, *faster]:
        model.stage(name)  # KeyError naming the stages for an unknown one
    for name, f in faster.items():
        if not f > 0:
            raise ValueError(f"faster[{name!r}]={f!r}; give a factor above 0 (2.0: twice as fast)")
    for name, count in workers.items():
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"workers[{name!r}]={count!r}; give a whole number of at least 1")
    for s in model.stages:  # a fused chain's stages share one pool
        given = [workers[m] for m in s.fused if m in workers]
        if given:
            workers[s.name] = max(given)
    w = {s.name: workers.get(s.name, s.workers) for s in model.stages}
    d = {s.name: s.demand_s / faster.get(s.name, 1.0) for s in model.stages}
    u = {s.name: s.unit_s / faster.get(s.name, 1.0) for s in model.stages}
    load = {s.name: sum(d[m] for m in s.fused if m in d) or d[s.name] for s in model.stages}
    per = {n: load[n] / w[n] for n in d}
    # The slowest pool; within a fused chain (one pool), the stage of most demand.
    pooled = {s.name: d[s.name] if s.fused else 0.0 for s in model.stages}
    bottleneck = max(per, key=lambda n: (per[n], pooled[n])) if per else ""
    period = per[bottleneck] if per else 0.0
    # Longest path of unit times: stages are in topological order.
    reach: dict[str, float] = {}
    for s in model.stages:
        reach[s.name] = u[s.name] + max((reach[p] for p in s.predecessors if p in reach), default=0)
    latency = max(reach.values(), default=0.0)
    makespan = barrier = None
    if items is not None:
        makespan = latency + max(0, items - 1) * period
        barrier = sum(items * d[n] / w[n] for n in d)
    return Prediction(
        workers=w,
        period_s=period,
        throughput=1 / period if period > 0 else math.inf,
        latency_s=latency,
        bottleneck=bottleneck,
        items=items,
        makespan_s=makespan,
        barrier_s=barrier,
    )


@dataclasses.dataclass(frozen=True)
class Little:
    """Little's law over a run, from two independent sets of events: the mean number
    of items in the system ``L`` from the queues' depths and the workers' occupancy,
    against ``λ·W`` from the items' reads and finishes."""

    window_s: float
    items_in_system: float  # L: (∫ Σ queue depths dt + Σ units' time in a worker) / window
    throughput: float  # λ: items finished per second over the window
    mean_latency_s: float  # W: mean of finish - read
    predicted: float  # λ · W

    @property
    def error(self) -> float:
        """Relative difference (L - λW) / λW."""
        return (self.items_in_system - self.predicted) / self.predicted if self.predicted else 0.0


def little(rec: Recording) -> Little | None:
    """Little's law, L = λ·W, over the whole run (from its start to the end of its
    window, its last unit's end or last item's finish); ``None`` before two items have
    finished.

    L counts an item while it waits in a stage's input queue (the integral of the
    queue's depth) and from when its task leaves the queue to when the task's last
    unit ends (the stage's occupancy: results come back with their whole task), in
    source items: an item at a stage that sees
    ``items_in`` items for ``N`` source items counts ``N / items_in`` (a flat_map's
    children share their root; a batch unit counts as its items). Time between stages
    (a result waiting for the scheduler to route it) is in W but not in L, so L runs a
    little under λ·W; a large gap means items wait somewhere conveyor does not see.
    With fan-out a source item in two branches at once counts twice, so L then runs
    over λ·W.
    """
    lat = rec.latency
    if lat.count < 2 or rec.t1_ns is None:
        return None
    a, b = rec.started_ns, rec.t1_ns
    if b <= a:
        return None
    n = rec.items_read
    area = 0.0
    for s in rec.stages.values():
        # In source items: an item here stands for n / items_in source items (a
        # flat_map's children share their root; a batch result carries several).
        items_in = s.items_in if s.items_in is not None else s.items_enqueued
        if not items_in or not s.units:
            continue
        area += s.run_depth_ns * n / items_in
        area += s.occupancy_ns * n / s.units
    span = (b - a) / 1e9
    lam = lat.count / span
    w = lat.mean / 1e9
    return Little(
        window_s=span,
        items_in_system=area / (b - a),
        throughput=lam,
        mean_latency_s=w,
        predicted=lam * w,
    )
