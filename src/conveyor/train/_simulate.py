"""Simulate a schedule: when each action starts and ends, the makespan, the bubble, memory.

Every rank runs its action list in order; an action starts when its rank is free
and every action it depends on has finished (plus ``comm`` when that action ran
on another rank). Costs are per stage:

    F      forward[s]
    B      backward[s] + weight[s]      (full backward)
    I      backward[s]                  (input gradient)
    W      weight[s]                    (weight gradient)

    bubble = 1 - sum(busy) / (p * makespan)

With equal costs this reproduces the textbook figures exactly (the tests check
them with fractions): (p-1)/(m+p-1) for GPipe and 1F1B, (p-1)/(v·m+p-1) for
interleaved when the per-stage costs are 1/v of a rank's, and for ZB-H1 a bubble
time of (p-1)·(F+I-W), a third of 1F1B's when F = I = W.

Live activations: a forward's activations count from its start until the
action that frees them ends: B, or W for a split backward (W still needs the
stage's saved inputs). 1F1B peaks at min(p - r, m) on rank r, GPipe at m.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor.train._errors import TrainError
from conveyor.train._schedules import Action, Schedule, dependencies, walk

__all__ = ["Interval", "Simulation", "StageCosts", "simulate"]


@dataclass(frozen=True)
class StageCosts:
    """Per-stage time of one micro-batch's forward, input-gradient and weight-gradient passes.

    ``backward`` is the input-gradient part; a full backward B costs
    ``backward + weight``. ``comm`` is added when a dependency crosses ranks.
    ``overhead`` is time a rank spends after each action outside compute (posting
    sends and receives): the rank is occupied but not busy, as the runtime measures.
    ``first_stage_defers_input`` models torch.distributed.pipelining, whose stage 0
    has no input gradient to send: its I does nothing and its W runs the whole
    backward (``backward + weight``).
    """

    forward: tuple[float, ...]
    backward: tuple[float, ...]
    weight: tuple[float, ...]
    comm: float = 0
    first_stage_defers_input: bool = False
    overhead: float = 0

    @classmethod
    def uniform(
        cls,
        stages: int,
        forward: float,
        backward: float,
        weight: float = 0,
        comm: float = 0,
        *,
        first_stage_defers_input: bool = False,
        overhead: float = 0,
    ) -> StageCosts:
        """The same costs on every stage."""
        return cls(
            (forward,) * stages,
            (backward,) * stages,
            (weight,) * stages,
            comm,
            first_stage_defers_input,
            overhead,
        )

    def duration(self, action: Action) -> float:
        s = action.stage
        deferred = self.first_stage_defers_input and s == 0
        if action.kind == "F":
            return self.forward[s]
        if action.kind == "B":
            return self.backward[s] + self.weight[s]
        if action.kind == "I":
            return 0 if deferred else self.backward[s]
        return self.weight[s] + (self.backward[s] if deferred else 0)


@dataclass(frozen=True)
class Interval:
    """One action on one rank, from ``start`` to ``end`` (seconds from the step's start)."""

    rank: int
    action: Action
    start: float
    end: float


@dataclass(frozen=True)
class Simulation:
    """The timeline of one training step and the figures derived from it."""

    schedule: Schedule
    intervals: tuple[Interval, ...]
    peak_activations: tuple[int, ...] = field(default=())

    @property
    def makespan(self) -> float:
        return max((iv.end for iv in self.intervals), default=0)

    @property
    def busy(self) -> tuple[float, ...]:
        """Busy time of each rank."""
        out: list[float] = [0] * self.schedule.ranks
        for iv in self.intervals:
            out[iv.rank] += iv.end - iv.start
        return tuple(out)

    @property
    def bubble(self) -> float:
        """1 - sum(busy) / (p * makespan): the share of rank-time spent idle."""
        return bubble_of(self.intervals, self.schedule.ranks)


def bubble_of(intervals: Sequence[Interval], ranks: int) -> float:
    """1 - sum(busy) / (ranks * makespan), for simulated and measured timelines alike."""
    if not intervals:
        return 0.0
    start = min(iv.start for iv in intervals)
    makespan = max(iv.end for iv in intervals) - start
    if makespan <= 0:
        return 0.0
    busy = sum(iv.end - iv.start for iv in intervals)
    return 1 - busy / (ranks * makespan)


def peak_live_activations(schedule: Schedule, intervals: Sequence[Interval]) -> tuple[int, ...]:
    """Most micro-batches whose activations each stage holds at once."""
    frees = "W" if schedule.splits_backward else "B"
    events: dict[int, list[tuple[float, int]]] = {s: [] for s in range(schedule.num_stages)}
    for iv in intervals:
        if iv.action.kind == "F":
            events[iv.action.stage].append((iv.start, +1))
        elif iv.action.kind == frees:
            events[iv.action.stage].append((iv.end, -1))
    peaks = []
    for s in range(schedule.num_stages):
        live = peak = 0
        # at equal times a release comes before an acquire
        for _, delta in sorted(events[s]):
            live += delta
            peak = max(peak, live)
        peaks.append(peak)
    return tuple(peaks)


def simulate(schedule: Schedule, costs: StageCosts) -> Simulation:
    """Run ``schedule`` on ``costs``; raises TrainError if costs and schedule disagree in size."""
    n = schedule.num_stages
    for name in ("forward", "backward", "weight"):
        if len(getattr(costs, name)) != n:
            raise TrainError(
                f"costs.{name} has {len(getattr(costs, name))} values for the "
                f"{n} stages of {schedule.name}; give one per stage"
            )
    rank_of = schedule.stage_to_rank
    end: dict[Action, float] = {}
    rank_free: list[float] = [0] * schedule.ranks  # ints keep Fractions exact
    intervals = []
    for r, action in walk(schedule):
        ready = rank_free[r]
        for dep in dependencies(action, schedule):
            hop = costs.comm if rank_of[dep.stage] != r else 0
            ready = max(ready, end[dep] + hop)
        finish = ready + costs.duration(action)
        end[action] = finish
        rank_free[r] = finish + costs.overhead
        intervals.append(Interval(r, action, ready, finish))
    intervals.sort(key=lambda iv: (iv.rank, iv.start))
    return Simulation(schedule, tuple(intervals), peak_live_activations(schedule, intervals))
