"""Pipeline schedules as plain data: for each rank, the list of actions it runs in order.

An action is (kind, stage, micro-batch); kinds are

    F  forward                 B  full backward (input and weight gradients)
    I  input-gradient backward W  weight-gradient backward (I and W together make a B)

Written like torch.distributed.pipelining's schedule IR, ``"{stage}{kind}{mb}"``,
e.g. ``1F0``. p ranks, m micro-batches, v stages per rank (interleaved only):

    GPipe, p=2, m=3                    1F1B, p=2, m=3
    rank 0: 0F0 0F1 0F2 0B0 0B1 0B2    rank 0: 0F0 0F1 0B0 0F2 0B1 0B2
    rank 1: 1F0 1F1 1F2 1B0 1B1 1B2    rank 1: 1F0 1B0 1F1 1B1 1F2 1B2

The orders for GPipe, 1F1B and interleaved 1F1B are those torch 2.13's
ScheduleGPipe, Schedule1F1B and ScheduleInterleaved1F1B execute (the runtime
checks this at start-up); ZB-H1 is the order of torch's ScheduleInterleavedZeroBubble
with one stage per rank: 1F1B with B split into I and W, rank r holding back r of
its W's to fill the drain bubble (Qi et al., "Zero Bubble Pipeline Parallelism", 2023).

:func:`validate` checks counts, placement and dependencies and walks the schedule
to prove it cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from conveyor.train._errors import TrainError

__all__ = [
    "SCHEDULES",
    "Action",
    "Schedule",
    "build_schedule",
    "gpipe",
    "interleaved_1f1b",
    "one_f_one_b",
    "validate",
    "zb_h1",
]

KINDS = ("F", "B", "I", "W")


class Action(NamedTuple):
    """One unit of work on a rank: ``kind`` of micro-batch ``microbatch`` on ``stage``."""

    kind: str
    stage: int
    microbatch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.kind}{self.microbatch}"


@dataclass(frozen=True)
class Schedule:
    """Per-rank action lists; stage s runs on rank ``stage_to_rank[s]``.

    ``name`` is one of :data:`SCHEDULES`; ``ranks`` p, ``microbatches`` m,
    ``stages_per_rank`` v (1 except for interleaved).
    """

    name: str
    ranks: int
    microbatches: int
    stages_per_rank: int
    actions: tuple[tuple[Action, ...], ...]

    @property
    def num_stages(self) -> int:
        return self.ranks * self.stages_per_rank

    @property
    def stage_to_rank(self) -> tuple[int, ...]:
        """Looped placement: stage s on rank s mod p (for v = 1, stage s on rank s)."""
        return tuple(s % self.ranks for s in range(self.num_stages))

    @property
    def splits_backward(self) -> bool:
        """True when backward runs as separate I and W actions (zero-bubble schedules)."""
        return any(a.kind == "I" for rank in self.actions for a in rank)

    def table(self) -> str:
        """The action lists as text, one line per rank."""
        return "\n".join(
            f"rank {r}: " + " ".join(str(a) for a in acts) for r, acts in enumerate(self.actions)
        )


def _check(p: int, m: int, *, need_m_ge_p: bool, name: str) -> None:
    if p < 1 or m < 1:
        raise TrainError(f"{name} needs at least 1 rank and 1 micro-batch, got p={p}, m={m}")
    if need_m_ge_p and m < p:
        raise TrainError(
            f"{name} needs at least as many micro-batches as stages (m >= p), got m={m} "
            f"with p={p} stages. Use --microbatches {p} or more, or --schedule gpipe."
        )


def gpipe(p: int, m: int) -> Schedule:
    """GPipe: every forward, then every backward (fill, drain); holds m activations per stage."""
    _check(p, m, need_m_ge_p=False, name="gpipe")
    actions = tuple(
        tuple(Action("F", r, i) for i in range(m)) + tuple(Action("B", r, i) for i in range(m))
        for r in range(p)
    )
    return Schedule("gpipe", p, m, 1, actions)


def one_f_one_b(p: int, m: int) -> Schedule:
    """1F1B (PipeDream-flush): p-1-r warm-up forwards on rank r, then alternate F and B.

    Same bubble as GPipe, but rank r holds at most min(p - r, m) activations.
    """
    _check(p, m, need_m_ge_p=True, name="1f1b")
    ranks = []
    for r in range(p):
        warmup = min(m, p - 1 - r)
        acts = [Action("F", r, i) for i in range(warmup)]
        f, b = warmup, 0
        while f < m:
            acts += [Action("F", r, f), Action("B", r, b)]
            f, b = f + 1, b + 1
        acts += [Action("B", r, i) for i in range(b, m)]
        ranks.append(tuple(acts))
    return Schedule("1f1b", p, m, 1, tuple(ranks))


def _rounds(p: int, m: int, name: str) -> int:
    rounds = max(1, m // p)
    if m % rounds:
        raise TrainError(
            f"{name} runs micro-batches in rounds of about p; m={m} with p={p} gives "
            f"{rounds} rounds, and m must be a multiple of the number of rounds. "
            f"Use a multiple of p for --microbatches, e.g. {p * rounds}."
        )
    return m // rounds


def _looped_1f1b(
    p: int, m: int, v: int, rank: int, warmup: int, *, zero_bubble: bool, held_back_w: int = 0
) -> tuple[Action, ...]:
    """The per-rank order of torch's looped 1F1B generator (``_get_1f1b_rank_ops``).

    Forwards walk the rank's v stages in rounds of ``per_round`` micro-batches
    (depth first); backwards walk them in reverse. With ``zero_bubble`` the
    backward is I, and the W of the k-th backward follows the (k + held_back_w)-th.
    """
    per_round = m // max(1, m // p) if v > 1 else m
    total = v * m
    fwd_next = [0] * v
    bwd_next = [0] * v
    w_next = [0] * v

    def fwd_stage(step: int) -> int:
        return ((step // per_round) % v) * p + rank

    def bwd_stage(step: int) -> int:
        return (v - 1 - ((step - warmup) // per_round) % v) * p + rank

    def take(counter: list[int], stage: int) -> int:
        local = stage // p
        counter[local] += 1
        return counter[local] - 1

    acts: list[Action] = []
    bwd_steps: list[int] = []
    w_done = 0
    back_kind = "I" if zero_bubble else "B"

    def backward(step: int) -> None:
        nonlocal w_done
        s = bwd_stage(step)
        acts.append(Action(back_kind, s, take(bwd_next, s)))
        bwd_steps.append(step)
        if zero_bubble and step - warmup >= held_back_w:
            ws = bwd_stage(bwd_steps[w_done])
            acts.append(Action("W", ws, take(w_next, ws)))
            w_done += 1

    for step in range(warmup):
        s = fwd_stage(step)
        acts.append(Action("F", s, take(fwd_next, s)))
    for step in range(warmup, total):
        s = fwd_stage(step)
        acts.append(Action("F", s, take(fwd_next, s)))
        backward(step)
    for step in range(total, total + warmup):
        backward(step)
    while zero_bubble and w_done < len(bwd_steps):
        ws = bwd_stage(bwd_steps[w_done])
        acts.append(Action("W", ws, take(w_next, ws)))
        w_done += 1
    return tuple(acts)


def interleaved_1f1b(p: int, m: int, v: int = 2) -> Schedule:
    """Interleaved 1F1B (Narayanan et al. 2021): v stages per rank, stage s on rank s mod p.

    Bubble (p-1)/(v·m + p-1) with equal costs: each warm-up step is 1/v as long.
    """
    _check(p, m, need_m_ge_p=True, name="interleaved")
    if v < 2:
        raise TrainError(f"interleaved needs v >= 2 stages per rank, got v={v}; for v=1 use 1f1b")
    per_round = _rounds(p, m, "interleaved")
    actions = tuple(
        _looped_1f1b(
            p, m, v, r, min((v - 1) * per_round + 2 * (p - 1 - r), v * m), zero_bubble=False
        )
        for r in range(p)
    )
    return Schedule("interleaved", p, m, v, actions)


def zb_h1(p: int, m: int) -> Schedule:
    """ZB-H1: 1F1B with B split into I (input grad) and W (weight grad); W's fill the drain.

    Rank r holds back r W's. With equal F, I, W costs the bubble is (p-1)·(F+I-W),
    a third of 1F1B's (p-1)·(F+I+W).
    """
    _check(p, m, need_m_ge_p=True, name="zbh1")
    actions = tuple(
        _looped_1f1b(p, m, 1, r, min(p - 1 - r, m), zero_bubble=True, held_back_w=r)
        for r in range(p)
    )
    return Schedule("zbh1", p, m, 1, actions)


SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbh1")


def build_schedule(name: str, p: int, m: int, v: int = 2) -> Schedule:
    """The schedule called ``name`` (one of :data:`SCHEDULES`) for p ranks and m micro-batches."""
    if name == "gpipe":
        return gpipe(p, m)
    if name == "1f1b":
        return one_f_one_b(p, m)
    if name == "interleaved":
        return interleaved_1f1b(p, m, v)
    if name == "zbh1":
        return zb_h1(p, m)
    raise TrainError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)} (or auto)")


def dependencies(action: Action, schedule: Schedule) -> Iterator[Action]:
    """The actions that must finish before ``action`` can start (across ranks)."""
    kind, s, i = action
    last = schedule.num_stages - 1
    split = schedule.splits_backward
    if kind == "F" and s > 0:
        yield Action("F", s - 1, i)
    elif kind in ("B", "I"):
        yield Action("F", s, i)
        if s < last:
            yield Action("I" if split else "B", s + 1, i)
    elif kind == "W":
        yield Action("I", s, i)


def validate(schedule: Schedule) -> None:
    """Check counts, placement, dependencies; walk it to prove it finishes. Raises TrainError.

    Every stage must run F once per micro-batch and either B once, or I and W once;
    each action on the rank that owns its stage; and executing each rank's list in
    order, waiting only on :func:`dependencies`, must reach the end (no deadlock).
    """
    p, m, nstages = schedule.ranks, schedule.microbatches, schedule.num_stages
    if len(schedule.actions) != p:
        raise TrainError(f"{schedule.name}: {len(schedule.actions)} action lists for {p} ranks")
    back = ("I", "W") if schedule.splits_backward else ("B",)
    expected = {Action(k, s, i) for s in range(nstages) for i in range(m) for k in ("F", *back)}
    seen: set[Action] = set()
    for r, acts in enumerate(schedule.actions):
        for a in acts:
            if a.kind not in KINDS:
                raise TrainError(f"{schedule.name}: rank {r} has unknown action kind {a}")
            if a in seen:
                raise TrainError(f"{schedule.name}: action {a} appears twice")
            if not 0 <= a.stage < nstages or schedule.stage_to_rank[a.stage] != r:
                raise TrainError(
                    f"{schedule.name}: action {a} is on rank {r} but stage {a.stage} "
                    f"belongs to rank {schedule.stage_to_rank[a.stage] if 0 <= a.stage < nstages else '?'}"
                )
            seen.add(a)
    if seen != expected:
        missing = sorted(expected - seen, key=lambda a: (a.stage, a.microbatch))
        extra = sorted(seen - expected, key=lambda a: (a.stage, a.microbatch))
        raise TrainError(
            f"{schedule.name}: wrong actions: missing {[str(a) for a in missing[:6]]}, "
            f"unexpected {[str(a) for a in extra[:6]]}"
        )
    # walking to the end is the proof that it finishes; walk raises on a deadlock
    for _ in walk(schedule):
        continue


def walk(schedule: Schedule) -> Iterator[tuple[int, Action]]:
    """Yield (rank, action) in an order that respects every rank's list and every dependency.

    Raises TrainError naming the stuck action on each rank if the schedule deadlocks.
    """
    heads = [0] * schedule.ranks
    done: set[Action] = set()
    remaining = sum(len(a) for a in schedule.actions)
    while remaining:
        progressed = False
        for r, acts in enumerate(schedule.actions):
            while heads[r] < len(acts):
                action = acts[heads[r]]
                if any(d not in done for d in dependencies(action, schedule)):
                    break
                done.add(action)
                heads[r] += 1
                remaining -= 1
                progressed = True
                yield r, action
        if not progressed:
            stuck = {
                r: str(acts[heads[r]])
                for r, acts in enumerate(schedule.actions)
                if heads[r] < len(acts)
            }
            raise TrainError(
                f"{schedule.name} deadlocks: each rank waits on an action that never runs; "
                f"stuck at {stuck}"
            )
