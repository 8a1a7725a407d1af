"""Choose the schedule and the number of micro-batches: a pure search over predictions.

For each schedule and each m that divides the batch, :func:`plan`

1. finds each stage's peak live activations by simulating the schedule,
2. cuts the layers exactly (:func:`partition_optimal`) so that every rank fits the
   memory cap: parameters x (1 + ``state_copies``) + peak live x activations,
3. simulates one step with the profiled costs scaled to the micro-batch size
   (fixed per-action costs included) plus a send cost at each stage boundary,

and keeps the candidate with the smallest predicted step time. More micro-batches
shrink the bubble but add fixed per-action costs and, for GPipe, activation memory;
the table of candidates shows the trade-off and ``reason`` says why the winner won.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.train._errors import TrainError
from conveyor.train._partition import Partition, _evaluate, partition_optimal
from conveyor.train._profile import ModelProfile
from conveyor.train._schedules import SCHEDULES, Schedule, build_schedule
from conveyor.train._simulate import Simulation, StageCosts, simulate

__all__ = ["Candidate", "Plan", "plan", "predict"]


@dataclass(frozen=True)
class Candidate:
    """One (schedule, m) the planner considered: its prediction, or why it was rejected."""

    schedule: str
    microbatches: int
    stages_per_rank: int
    step_time: float | None = None
    bubble: float | None = None
    peak_memory: float | None = None
    partition: Partition | None = None
    simulation: Simulation | None = None
    rejected: str | None = None


@dataclass(frozen=True)
class Plan:
    """The chosen candidate, every candidate considered, and the reason in words."""

    best: Candidate
    candidates: tuple[Candidate, ...]
    reason: str

    @property
    def schedule(self) -> Schedule:
        assert self.best.simulation is not None
        return self.best.simulation.schedule

    @property
    def partition(self) -> Partition:
        assert self.best.partition is not None
        return self.best.partition

    def table(self) -> str:
        lines = ["schedule     m  v   step ms  bubble   peak MiB"]
        for c in sorted(self.candidates, key=_order):
            mark = " *" if c is self.best else ""
            if c.rejected:
                lines.append(
                    f"{c.schedule:<11} {c.microbatches:>2} {c.stages_per_rank:>2}  rejected: {c.rejected}"
                )
            else:
                assert (
                    c.step_time is not None and c.bubble is not None and c.peak_memory is not None
                )
                lines.append(
                    f"{c.schedule:<11} {c.microbatches:>2} {c.stages_per_rank:>2}  "
                    f"{c.step_time * 1e3:8.2f}  {c.bubble:6.1%}  {c.peak_memory / 2**20:9.2f}{mark}"
                )
        return "\n".join(lines)


def _order(c: Candidate) -> tuple[float, float]:
    # step times within a microsecond are a tie; the smaller peak memory wins it
    step = round(c.step_time, 6) if c.step_time is not None else float("inf")
    return (step, c.peak_memory or 0.0)


def predict(
    profile: ModelProfile,
    schedule: Schedule,
    batch_size: int,
    *,
    memory_cap: float | None = None,
    state_copies: int = 1,
    comm_latency: float = 3e-4,
    comm_bandwidth: float = 1e9,
    action_overhead: float = 3e-4,
    bounds: Sequence[int] | None = None,
) -> Candidate:
    """Predict one schedule: partition (exact, or the given ``bounds``), step time, bubble, memory.

    ``memory_cap`` is bytes per rank; ``state_copies`` the copies of each parameter
    besides itself that training keeps (1 for SGD's gradient, 3 for Adam's).
    ``comm_latency`` + bytes / ``comm_bandwidth`` is a send between ranks, and
    ``action_overhead`` the runtime's time around each action (the defaults are
    what gloo on a 2-core CPU machine showed; :attr:`TrainReport.runtime_costs`
    measures them on yours).
    Raises TrainError when no partition meets the cap.
    """
    m = schedule.microbatches
    rows = batch_size // m
    n_stages = schedule.num_stages
    layer_costs = profile.scaled(rows)
    totals = [f + i + w for f, i, w in layer_costs]
    memory = [lp.param_bytes * (1 + state_copies) for lp in profile.layers]
    acts = [lp.activation_bytes * rows / profile.batch for lp in profile.layers]
    unit = simulate(schedule, StageCosts.uniform(n_stages, 1, 1, 1))
    live = unit.peak_activations
    v = schedule.stages_per_rank
    if bounds is None:
        part = partition_optimal(
            totals,
            n_stages,
            memory=memory,
            activations=acts,
            live=live,
            memory_cap=None if memory_cap is None else memory_cap / v,
        )
    else:
        part = _evaluate(tuple(bounds), totals, memory, None, "given")
    b = part.bounds

    def stage_sum(values: Sequence[float], s: int) -> float:
        return float(sum(values[b[s] : b[s + 1]]))

    costs = StageCosts(
        forward=tuple(stage_sum([c[0] for c in layer_costs], s) for s in range(n_stages)),
        backward=tuple(stage_sum([c[1] for c in layer_costs], s) for s in range(n_stages)),
        weight=tuple(stage_sum([c[2] for c in layer_costs], s) for s in range(n_stages)),
        comm=comm_latency
        + max(
            (
                profile.layers[b[s] - 1].output_bytes * rows / profile.batch
                for s in range(1, n_stages)
            ),
            default=0.0,
        )
        / comm_bandwidth,
        first_stage_defers_input=True,  # as torch's runtime does
        overhead=action_overhead,
    )
    sim = simulate(schedule, costs)
    per_rank = [0.0] * schedule.ranks
    for s in range(n_stages):
        per_rank[schedule.stage_to_rank[s]] += stage_sum(memory, s) + live[s] * stage_sum(acts, s)
    return Candidate(
        schedule=schedule.name,
        microbatches=m,
        stages_per_rank=v,
        step_time=float(sim.makespan),
        bubble=float(sim.bubble),
        peak_memory=max(per_rank),
        partition=part,
        simulation=sim,
    )


def plan(
    profile: ModelProfile,
    ranks: int,
    batch_size: int,
    *,
    schedules: Sequence[str] = SCHEDULES,
    microbatches: Sequence[int] | None = None,
    stages_per_rank: int = 2,
    memory_cap: float | None = None,
    state_copies: int = 1,
    comm_latency: float = 3e-4,
    comm_bandwidth: float = 1e9,
    action_overhead: float = 3e-4,
) -> Plan:
    """The (schedule, m) with the smallest predicted step time whose every rank fits ``memory_cap``.

    ``microbatches`` defaults to every divisor of ``batch_size`` up to 64. Raises
    TrainError, with every candidate's reason, when none is feasible.
    """
    if ranks < 1:
        raise TrainError(f"ranks must be at least 1, got {ranks}")
    if microbatches is None:
        microbatches = [m for m in range(1, min(batch_size, 64) + 1) if batch_size % m == 0]
    candidates: list[Candidate] = []
    for name in schedules:
        v = stages_per_rank if name == "interleaved" else 1
        for m in microbatches:
            if batch_size % m:
                candidates.append(
                    Candidate(name, m, v, rejected=f"{m} does not divide batch {batch_size}")
                )
                continue
            try:
                if len(profile.layers) < ranks * v:
                    raise TrainError(f"{len(profile.layers)} layers < {ranks * v} stages")
                sched = build_schedule(name, ranks, m, v)
                candidates.append(
                    predict(
                        profile,
                        sched,
                        batch_size,
                        memory_cap=memory_cap,
                        state_copies=state_copies,
                        comm_latency=comm_latency,
                        comm_bandwidth=comm_bandwidth,
                        action_overhead=action_overhead,
                    )
                )
            except TrainError as exc:
                candidates.append(Candidate(name, m, v, rejected=str(exc).split(". ")[0]))
    feasible = sorted((c for c in candidates if not c.rejected), key=_order)
    if not feasible:
        reasons: dict[str, list[str]] = {}
        for c in candidates:
            reasons.setdefault(str(c.rejected), []).append(f"{c.schedule} m={c.microbatches}")
        details = "; ".join(
            f"{', '.join(who[:4])}{' ...' if len(who) > 4 else ''}: {why}"
            for why, who in reasons.items()
        )
        raise TrainError(
            f"no schedule fits: {details}. Raise the memory cap, use more stages, "
            f"or a larger batch so that more micro-batch counts are possible."
        )
    best = feasible[0]
    return Plan(best, tuple(candidates), _reason(best, feasible, candidates, memory_cap))


def _reason(
    best: Candidate, feasible: list[Candidate], candidates: list[Candidate], cap: float | None
) -> str:
    assert best.step_time is not None and best.bubble is not None and best.peak_memory is not None
    cap_text = "no cap" if cap is None else f"cap {cap / 2**20:.2f} MiB"
    parts = [
        f"{best.schedule} with m={best.microbatches}: predicted step "
        f"{best.step_time * 1e3:.2f} ms, bubble {best.bubble:.1%}, peak memory "
        f"{best.peak_memory / 2**20:.2f} MiB per rank ({cap_text})."
    ]
    same_sched = [c for c in feasible if c.schedule == best.schedule and c is not best]
    fewer = [c for c in same_sched if c.microbatches < best.microbatches]
    more = [c for c in same_sched if c.microbatches > best.microbatches]
    if fewer:
        c = max(fewer, key=lambda c: c.microbatches)
        assert c.bubble is not None and c.step_time is not None
        parts.append(
            f"Fewer micro-batches (m={c.microbatches}) leave a larger bubble "
            f"({c.bubble:.1%}, {c.step_time * 1e3:.2f} ms)."
        )
    if more:
        c = min(more, key=lambda c: c.microbatches)
        assert c.step_time is not None and c.peak_memory is not None
        parts.append(
            f"More (m={c.microbatches}) cost more in fixed per-action time than they "
            f"save in bubble ({c.step_time * 1e3:.2f} ms)."
        )
    over = [c for c in candidates if c.rejected and "memory" in c.rejected]
    if over:
        parts.append(
            f"{len(over)} candidates exceed the memory cap, e.g. {over[0].schedule} "
            f"m={over[0].microbatches}."
        )
    others = [c for c in feasible if c.schedule != best.schedule]
    if others:
        c = others[0]
        assert c.step_time is not None
        parts.append(
            f"Next best schedule: {c.schedule} m={c.microbatches} at "
            f"{c.step_time * 1e3:.2f} ms (+{c.step_time / best.step_time - 1:.1%})."
        )
    return " ".join(parts)
