"""Choose the schedule and the number of micro-batches: a pure search over predictions.

For each schedule and each m that divides the batch, :func:`plan`

1. finds each stage's peak live activations by simulating the schedule,
2. cuts the layers exactly (:func:`partition_optimal`) so that every rank fits the
   memory cap: parameters x (1 + ``state_copies``) + peak live x activations; a
   stage that fits only by recomputing its activations in the backward
   (activation checkpointing) does so, and pays a second forward,
3. simulates one step with the profiled costs at the micro-batch's rows (fixed
   per-layer costs included), divided by each rank's device speed, plus a send
   at each stage boundary and the runtime's time around each action,

and keeps the candidate with the smallest predicted step time. More micro-batches
shrink the bubble but add fixed per-action costs and, for GPipe, activation memory;
the table of candidates shows the trade-off and ``reason`` says why the winner won,
and whether it beats training without a pipeline (``_baselines.py``): one process
on the whole batch, or p-way data parallelism when the model fits one device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.train._baselines import Baseline, baselines, verdict
from conveyor.train._errors import TrainError
from conveyor.train._partition import Partition, evaluate_partition, partition_optimal
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

    @property
    def checkpoint(self) -> tuple[bool, ...]:
        """Per stage: True where the stage recomputes its activations (activation checkpointing)."""
        if self.partition is None or not self.partition.checkpoint:
            return ()
        return self.partition.checkpoint


@dataclass(frozen=True)
class Plan:
    """The chosen candidate, every candidate considered, and the reason in words.

    ``baselines`` are the predictions without a pipeline (one process on the whole
    batch, p-way data parallelism); ``pays`` says whether the best pipeline beats
    every one of them that fits the memory cap (``reason`` says so in words).
    """

    best: Candidate
    candidates: tuple[Candidate, ...]
    reason: str
    baselines: tuple[Baseline, ...] = ()
    pays: bool = True

    @property
    def schedule(self) -> Schedule:
        assert self.best.simulation is not None
        return self.best.simulation.schedule

    @property
    def partition(self) -> Partition:
        assert self.best.partition is not None
        return self.best.partition

    def table(self) -> str:
        """One row per candidate (``*`` the chosen one), then one per baseline without a pipeline.

        ``recompute`` lists the stages that checkpoint their activations.
        """
        lines = ["schedule     m  v   step ms  bubble   peak MiB  recompute"]
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
                ckpt = ",".join(str(s) for s, on in enumerate(c.checkpoint) if on) or "-"
                lines.append(
                    f"{c.schedule:<11} {c.microbatches:>2} {c.stages_per_rank:>2}  "
                    f"{c.step_time * 1e3:8.2f}  {c.bubble:6.1%}  {c.peak_memory / 2**20:9.2f}  "
                    f"{ckpt:<9}{mark}".rstrip()
                )
        for b in self.baselines:
            kind = "one process" if b.devices == 1 else "data parallel"
            where = (
                f"{b.rows} rows"
                if b.devices == 1
                else f"{b.devices} devices x {b.rows} rows + all-reduce"
            )
            over = "  over the memory cap" if not b.fits else ""
            lines.append(
                f"{kind:<19}{b.step_time * 1e3:8.2f}  {'':6}  {b.memory / 2**20:9.2f}  "
                f"{where}{over}"
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
    speeds: Sequence[float] | None = None,
    checkpointing: bool = True,
    bounds: Sequence[int] | None = None,
) -> Candidate:
    """Predict one schedule: partition (exact, or the given ``bounds``), step time, bubble, memory.

    ``memory_cap`` is bytes per rank; ``state_copies`` the copies of each parameter
    besides itself that training keeps (1 for SGD's gradient, 3 for Adam's).
    ``comm_latency`` + bytes / ``comm_bandwidth`` is a send between ranks, and
    ``action_overhead`` the runtime's time around each action (the defaults are
    what gloo on a 2-core CPU machine showed; :attr:`TrainReport.runtime_costs`
    measures them on yours). ``speeds`` gives each rank's device speed relative
    to the one profiled on (2.0: twice as fast). ``checkpointing`` lets a stage
    that would not fit the cap recompute its activations in the backward; not
    for split-backward schedules (ZB-H1), whose W needs what I recomputed.
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
    rank_speeds = list(speeds) if speeds is not None else [1.0] * schedule.ranks
    if len(rank_speeds) != schedule.ranks or any(not sp > 0 for sp in rank_speeds):
        raise TrainError(
            f"speeds gives {rank_speeds} for {schedule.ranks} ranks; give one speed > 0 per rank"
        )
    stage_speeds = [rank_speeds[schedule.stage_to_rank[s]] for s in range(n_stages)]
    inputs: list[float] | None = None
    recompute: list[float] | None = None
    if checkpointing and memory_cap is not None and not schedule.splits_backward:
        inputs = [lp.input_bytes * rows / profile.batch for lp in profile.layers]
        recompute = [c[0] for c in layer_costs]  # the forward, run again
    cap = None if memory_cap is None else memory_cap / v
    # a stage boundary passes tensors, tuples and dicts of them: none after anything else
    cuttable = [lp.output_crosses for lp in profile.layers]
    if bounds is None:
        part = partition_optimal(
            totals,
            n_stages,
            memory=memory,
            activations=acts,
            live=live,
            memory_cap=cap,
            speeds=stage_speeds,
            inputs=inputs,
            recompute=recompute,
            cuttable=cuttable,
        )
    else:
        part = evaluate_partition(
            tuple(bounds),
            totals,
            memory=memory,
            memory_cap=cap,
            activations=acts,
            live=live,
            speeds=stage_speeds,
            inputs=inputs,
            recompute=recompute,
            cuttable=cuttable,
        )
    b = part.bounds

    def stage_time(k: int, s: int) -> float:
        # k: 0 forward, 1 input gradient (or B's first part), 2 weight gradient
        layers = range(b[s], b[s + 1])
        total = sum(layer_costs[j][k] for j in layers)
        if k == 1 and part.checkpoint[s]:  # a checkpointing stage runs its forward again
            total += sum(layer_costs[j][0] for j in layers)
        return float(total) / stage_speeds[s]

    costs = StageCosts(
        forward=tuple(stage_time(0, s) for s in range(n_stages)),
        backward=tuple(stage_time(1, s) for s in range(n_stages)),
        weight=tuple(stage_time(2, s) for s in range(n_stages)),
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
    assert part.stage_memory is not None
    for s in range(n_stages):
        per_rank[schedule.stage_to_rank[s]] += part.stage_memory[s]
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
    speeds: Sequence[float] | None = None,
    checkpointing: bool = True,
) -> Plan:
    """The (schedule, m) with the smallest predicted step time whose every rank fits ``memory_cap``.

    ``microbatches`` defaults to every divisor of ``batch_size`` up to 64. The
    communication parameters, ``speeds`` (one per rank) and ``checkpointing`` are
    :func:`predict`'s; the same latency and bandwidth price data parallelism's
    all-reduce in the baselines. Raises TrainError, with every candidate's reason
    and what to change, when none is feasible.
    """
    if ranks < 1:
        raise TrainError(f"ranks must be at least 1, got {ranks}")
    if speeds is not None and (len(speeds) != ranks or any(not s > 0 for s in speeds)):
        raise TrainError(
            f"speeds gives {list(speeds)} for {ranks} ranks; give one speed > 0 per rank"
        )
    if microbatches is None:
        microbatches = [m for m in range(1, min(batch_size, 64) + 1) if batch_size % m == 0]
    n_layers = len(profile.layers)
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
                if n_layers < ranks * v:
                    raise TrainError(f"{n_layers} layers < {ranks * v} stages")
                sched = build_schedule(name, ranks, m, v)
                candidates.append(
                    predict(
                        profile,
                        sched,
                        batch_size,
                        memory_cap=memory_cap,
                        state_copies=state_copies,
                        action_overhead=action_overhead,
                        speeds=speeds,
                        checkpointing=checkpointing,
                        comm_latency=comm_latency,
                        comm_bandwidth=comm_bandwidth,
                    )
                )
            except TrainError as exc:
                candidates.append(Candidate(name, m, v, rejected=str(exc).split(". ")[0]))
    feasible = sorted((c for c in candidates if not c.rejected), key=_order)
    if not feasible:
        raise TrainError(_no_fit(candidates, n_layers, ranks, checkpointing))
    best = feasible[0]
    assert best.step_time is not None and best.bubble is not None
    assert best.simulation is not None
    bases = baselines(
        profile,
        ranks,
        batch_size,
        memory_cap=memory_cap,
        state_copies=state_copies,
        speeds=speeds,
        comm_latency=comm_latency,
        comm_bandwidth=comm_bandwidth,
    )
    pays, why = verdict(
        best.step_time,
        best.bubble,
        best.microbatches,
        max(len(acts) for acts in best.simulation.schedule.actions),
        profile,
        batch_size,
        bases,
        action_overhead=action_overhead,
        memory_cap=memory_cap,
    )
    reason = _reason(best, feasible, candidates, memory_cap)
    reason = f"{reason} {why}" if pays else f"{why} Best pipeline: {reason}"
    return Plan(best, tuple(candidates), reason, bases, pays)


def _no_fit(candidates: list[Candidate], n_layers: int, ranks: int, checkpointing: bool) -> str:
    """Every candidate's reason for rejection, and what to change, pointing the right way."""
    reasons: dict[str, list[str]] = {}
    for c in candidates:
        reasons.setdefault(str(c.rejected), []).append(f"{c.schedule} m={c.microbatches}")
    details = "; ".join(
        f"{', '.join(who[:4])}{' ...' if len(who) > 4 else ''}: {why}"
        for why, who in reasons.items()
    )
    tips = []
    if n_layers < ranks:
        tips.append(
            f"use at most {n_layers} stages (--stages {n_layers}), the most this model allows: "
            f"every stage needs a layer of its own"
        )
    elif n_layers // ranks >= 2 and any(" layers < " in why for why in reasons):
        tips.append(f"use at most {n_layers // ranks} stages per rank for interleaved")
    if any("memory" in why for why in reasons):
        tip = "raise the memory cap"
        if ranks < n_layers:
            tip += f", use more stages (up to {n_layers})"
        if not checkpointing:
            tip += ", allow activation checkpointing"
        tips.append(tip)
    if any("must pass tensors" in why for why in reasons):
        tips.append("use fewer stages, or return tensors from more layers")
    if any("(m >= p)" in why for why in reasons):
        tips.append(f"use at least {ranks} micro-batches (--microbatches {ranks}), or gpipe")
    if any("divide" in why or "rounds" in why for why in reasons):
        tips.append(
            "use a number of micro-batches that divides the batch (and, for "
            "interleaved, a multiple of the stages)"
        )
    advice = "; ".join(tips)
    return f"no schedule fits: {details}. {advice[:1].upper()}{advice[1:]}.".rstrip(" .") + "."


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
            f"{c.step_time * 1e3:.2f} ms (+{max(0.0, c.step_time / best.step_time - 1):.1%})."
        )
    return " ".join(parts)
