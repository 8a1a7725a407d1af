"""Live rebalancing: move workers to the bottleneck while the run goes on.

A :class:`Rebalancer` is an instrument. It keeps, per stage, the service time of
its recent tasks and how many items it sees per source item, so a stage's demand
(busy seconds per source item) is::

    d_i = (Σ busy / Σ units over the last ``window`` tasks) · units per item · r_i

where r_i, the items stage i sees per source item, is 1 for a stage reading the
source and r_p · (items enqueued into i) / (items p has finished) for a stage with
one predecessor p: counting against what p has finished, not what was read,
keeps the estimate true while the queues are still filling (with several
predecessors, items enqueued / items read).

Policy: at most every ``interval_s`` seconds (checked when a task finishes), once
every stage has finished ``min_units`` units, it computes the balanced allocation
of ``budget`` workers for these demands (:func:`conveyor.analysis.balance`, exact)
and applies it through ``RunInfo.control.resize`` if the model predicts at least
``min_gain`` times the throughput of the current pools: the bottleneck's pool
grows, idle ones shrink, the total stays within the budget. Collect and sync
stages keep their workers. Decisions are kept in :attr:`decisions` (the last
``DECISIONS_KEPT``; :attr:`resizes` counts them all), so an endless run that keeps
drifting holds a bounded list::

    rebalancer = Rebalancer(budget=8)
    pipeline.run(instruments=[rebalancer])
    rebalancer.decisions   # [Decision(t_s=0.5, workers={'a': 1, 'b': 3, 'c': 4}, ...)]
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from time import monotonic_ns
from typing import Any

from conveyor.analysis._balance import balance, throughput_of
from conveyor.core.events import Instrument, Key, RunInfo
from conveyor.executors.base import executor_traits

__all__ = ["DECISIONS_KEPT", "Decision", "Rebalancer"]

DECISIONS_KEPT = 1000


@dataclasses.dataclass(frozen=True)
class Decision:
    """One resize the rebalancer applied."""

    t_s: float  # since the run's start
    before: dict[str, int]
    workers: dict[str, int]
    demands_s: dict[str, float]
    predicted_gain: float  # predicted throughput after / before


class _Stage:
    __slots__ = (
        "enqueued",
        "fixed",
        "preds",
        "recent",
        "taken",
        "units",
        "units_started",
        "workers",
    )

    def __init__(self, workers: int, fixed: bool, window: int, preds: tuple[str, ...]) -> None:
        self.preds = preds
        self.workers = workers
        self.fixed = fixed
        self.recent: deque[tuple[int, int]] = deque(maxlen=window)  # (busy_ns, units)
        self.units = 0
        self.enqueued = 0
        self.taken = 0  # items taken out of the queue by tasks
        self.units_started = 0


class Rebalancer(Instrument):
    """Resizes stages' pools during a run to the balanced allocation (module docstring)."""

    def __init__(
        self,
        budget: int,
        *,
        interval_s: float = 0.5,
        min_units: int = 5,
        window: int = 16,
        min_gain: float = 1.05,
    ) -> None:
        if not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget={budget!r}; give a whole number of workers, at least 1")
        self.budget = budget
        self.interval_ns = int(interval_s * 1e9)
        self.min_units = min_units
        self.window = window
        self.min_gain = min_gain
        self.decisions: list[Decision] = []  # the last DECISIONS_KEPT
        self.resizes = 0  # decisions applied, all of them
        self._stages: dict[str, _Stage] = {}
        self._control: Any = None
        self._fused: tuple[tuple[str, ...], ...] = ()  # chains that share one pool
        self._read = 0
        self._started = 0
        self._last = 0

    def run_started(self, run: RunInfo) -> None:
        self._stages = {
            s.name: _Stage(
                s.workers,
                s.kind == "collect" or _runs_in_caller(s.executor),
                self.window,
                s.predecessors,
            )
            for s in run.stages
        }
        fixed = sum(s.workers for s in self._stages.values() if s.fixed)
        free = sum(1 for s in self._stages.values() if not s.fixed)
        if self.budget < fixed + free:
            raise ValueError(
                f"a rebalancing budget of {self.budget} workers cannot give each of "
                f"{len(self._stages)} stages one; raise it to at least {fixed + free}"
            )
        self._fused = tuple(dict.fromkeys(s.fused for s in run.stages if s.fused))  # one pool
        self._control = run.control
        self._started = self._last = run.started_ns

    def items_read(self, keys: Sequence[Key], t_ns: int) -> None:
        self._read += len(keys)

    def items_enqueued(self, stage: str, keys: Sequence[Key], depth: int, t_ns: int) -> None:
        s = self._stages.get(stage)
        if s is not None:
            s.enqueued += len(keys)

    def task_started(
        self, stage: str, task: int, keys: Sequence[Key], depth: int, t_ns: int
    ) -> None:
        s = self._stages[stage]
        s.units_started += len(keys)
        s.taken = s.enqueued - depth

    def stage_resized(self, stage: str, workers: int, t_ns: int) -> None:
        self._stages[stage].workers = workers

    def task_finished(
        self,
        stage: str,
        task: int,
        worker: int,
        keys: Sequence[Key],
        starts_ns: Sequence[int],
        ends_ns: Sequence[int],
        error: BaseException | None,
    ) -> None:
        s = self._stages[stage]
        if ends_ns:
            s.recent.append((sum(ends_ns) - sum(starts_ns), len(ends_ns)))
            s.units += len(ends_ns)
        now = ends_ns[-1] if ends_ns else monotonic_ns()
        if now - self._last >= self.interval_ns and self._decide(now):
            self._last = now  # until every stage is measured, look again at each task

    def demands(self) -> dict[str, float] | None:
        """Each stage's current demand estimate (s per source item); ``None`` until
        every stage has finished ``min_units`` units."""
        if not self._read:
            return None
        out: dict[str, float] = {}
        load: dict[str, float] = {}
        for name, s in self._stages.items():  # topological order
            if s.units < self.min_units:
                return None
            busy = sum(b for b, _ in s.recent)
            units = sum(n for _, n in s.recent)
            items_per_unit = s.taken / s.units_started if s.units_started else 1.0
            if not s.preds:
                load[name] = 1.0
            elif len(s.preds) == 1:
                p = self._stages[s.preds[0]]
                p_items_per_unit = p.taken / p.units_started if p.units_started else 1.0
                finished = p.units * p_items_per_unit
                load[name] = load[s.preds[0]] * s.enqueued / finished if finished else 1.0
            else:
                load[name] = s.enqueued / self._read
            out[name] = busy / units / 1e9 / items_per_unit * load[name]
        return out

    def _decide(self, now: int) -> bool:
        """Resize if worth it; False when the demands are not known yet."""
        demands = self.demands()
        control = self._control
        if demands is None or control is None:
            return False
        current = {n: s.workers for n, s in self._stages.items()}
        fixed = {n: s.workers for n, s in self._stages.items() if s.fixed}
        target = balance(demands, self.budget, fixed=fixed, fused=self._fused)
        if target.workers == current:
            return True
        gain = target.throughput / throughput_of(demands, current, self._fused)
        if gain < self.min_gain:
            return True
        # Shrink first, so the pools never exceed the budget together.
        order = sorted(target.workers, key=lambda n: target.workers[n] - current[n])
        for name in order:
            if target.workers[name] != current[name]:
                control.resize(name, target.workers[name])
        self.decisions.append(
            Decision((now - self._started) / 1e9, current, dict(target.workers), demands, gain)
        )
        self.resizes += 1
        if len(self.decisions) > DECISIONS_KEPT:
            del self.decisions[: len(self.decisions) - DECISIONS_KEPT]
        return True

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        self._control = None


def _runs_in_caller(executor: str) -> bool:
    traits = executor_traits(executor)
    return traits is not None and traits.runs_in_caller
