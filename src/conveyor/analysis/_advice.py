"""The limits of the report's worker advice: the machine's cores, sync stages, and
runs that conveyor's own overhead limits.

- **Cores.** A process worker runs Python on a core of its own; more process
  workers than the machine has cores (``RunMeasure.cpus``) share them, each runs
  slower, and the model's prediction (each worker on its own core) fails. So an
  allocation is *allowed* only if it gives no process stage another worker while
  the process workers would then outnumber the cores. Thread stages are not
  counted: a recording cannot tell a thread that holds the GIL from one waiting on
  I/O (the usual reason to run a stage on threads), and capping those would give
  wrong advice for I/O-bound stages.
- **Sync stages** run in the caller's thread: they are no workers, use none of
  the budget and are never given any.
- **Engine-bound runs.** Every stage's workers were mostly idle and the stages'
  measured work allows at least twice the rate the run made, while either items
  waited in full queues or conveyor's scheduler thread (the driver, which
  dispatches, routes and records every item) was busy most of the run (its time is
  measured: ``RunStatistics.driver_seconds``, ``Recording.driver_ns``). The time
  went to conveyor, not to any stage. More workers would not help.
"""

from __future__ import annotations

from collections.abc import Mapping

from conveyor.analysis._measure import RunMeasure
from conveyor.analysis._model import Prediction
from conveyor.executors.base import executor_traits

__all__ = [
    "ENGINE_ADVICE",
    "allowed",
    "cpu_workers",
    "engine_bound",
    "sync_stages",
]

ENGINE_BUSY = 0.5  # no stage busier than this share of its workers' time
ENGINE_FULL = 0.5  # and some queue full at least this share of the run
ENGINE_GAP = 2.0  # and the stages alone could go this many times the measured rate
ENGINE_DRIVER = 0.5  # or the driver was busy at least this share of the run

ENGINE_ADVICE = (
    "conveyor's own overhead (dispatching, routing and recording each item) limits this "
    "run, not a stage: more workers would not raise throughput; run it with record=False, "
    "let consecutive trivial stages fuse (the same executor and workers, no cache, "
    "timeout or retry after the first: Pipeline.plan() shows what fused), raise the "
    "pipeline's capacity= so that each task carries more items, and send small items "
    "in batches (a list of rows per item, for instance)"
)


def sync_stages(m: RunMeasure) -> set[str]:
    """The stages that run in the caller's thread: no workers of their own."""
    return {n for n, s in m.stages.items() if _runs_in_caller(s.executor)}


def cpu_workers(m: RunMeasure, workers: Mapping[str, int]) -> int:
    """The workers of ``workers`` that each need a core: those of process stages (a
    fused chain's pool counted once)."""
    pools = {
        (m.stages[n].fused or (n,))[0]: w
        for n, w in workers.items()
        if n in m.stages and needs_core(m.stages[n].executor)
    }
    return sum(pools.values())


def allowed(m: RunMeasure, now: Mapping[str, int], workers: Mapping[str, int]) -> bool:
    """Whether advising ``workers`` (from ``now``) keeps to the machine's cores: no
    process stage gains a worker while the process workers would outnumber them."""
    if not m.cpus or cpu_workers(m, workers) <= m.cpus:
        return True
    return not any(
        workers[n] > now.get(n, 0)
        for n in workers
        if n in m.stages and needs_core(m.stages[n].executor)
    )


def needs_core(executor: str) -> bool:
    """Whether each worker of ``executor`` is a process of this machine (its traits)."""
    traits = executor_traits(executor)
    return traits is not None and traits.host_cores


def _runs_in_caller(executor: str) -> bool:
    traits = executor_traits(executor)
    return traits is not None and traits.runs_in_caller


def engine_bound(m: RunMeasure, pred: Prediction, driver_ns: int | None = None) -> str | None:
    """The evidence that conveyor's own overhead limited the run (module doc), or None.
    ``driver_ns``: the time the driver spent moving items, when measured."""
    if m.items < 2 or m.makespan_s <= 0 or not m.stages or m.throughput <= 0:
        return None
    busiest = max(m.stages.values(), key=lambda s: s.utilisation)
    fullest = max(m.stages.values(), key=lambda s: s.full_share)
    if busiest.utilisation >= ENGINE_BUSY or pred.throughput < ENGINE_GAP * m.throughput:
        return None
    driver = None if driver_ns is None else min(1.0, driver_ns / 1e9 / m.makespan_s)
    full = fullest.full_share >= ENGINE_FULL
    if not full and (driver is None or driver < ENGINE_DRIVER):
        return None
    waits = (
        f"items waited in full queues ({fullest.name}'s input full {fullest.full_share:.0%} of "
        "the time) while "
        if full
        else ""
    )
    busy = f"conveyor's scheduler was busy {driver:.0%} of the run moving items, " if driver else ""
    return (
        f"{busy}{waits}the busiest stage, {busiest.name}, was busy "
        f"{busiest.utilisation:.0%} of its workers' time; the stages' own work allows "
        f"{_num(pred.throughput)} items/s, the run made {_num(m.throughput)}"
    )


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
