"""What a pipeline must beat: one process on the whole batch, and p-way data parallelism.

A pipeline pays for its bubble, its sends and the runtime's time around every
action; it is worth that only when the model does not fit one device, or when
it is faster than training without it:

    one process           compute(batch) / fastest device's speed
    p-way data parallel   compute(batch / p) / slowest device's speed + all-reduce
                          (ring: 2(p-1)/p x gradient bytes / bandwidth + 2(p-1) x latency)

compute(r) is the profile's forward and backward of the whole model on r rows,
read at that size, so fixed per-layer costs weigh as they will. None of the
three predictions includes the optimizer step. A baseline fits when parameters x
(1 + state copies) + activations of its rows is within the memory cap.

:func:`verdict` says in words whether the pipeline pays and, when it does not,
why: small micro-batches doing more work than one large batch (fixed per-layer
costs), the runtime's per-action time, the bubble.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.train._profile import ModelProfile

__all__ = ["Baseline", "baselines", "verdict"]


@dataclass(frozen=True)
class Baseline:
    """A way to train without a pipeline, predicted: ``name``, rows per device, seconds, bytes.

    ``step_time`` = ``compute`` + ``communication`` (the all-reduce; 0 for one
    process); ``memory`` is the peak per device and ``fits`` says whether it is
    within the cap.
    """

    name: str
    devices: int
    rows: int
    step_time: float
    compute: float
    communication: float
    memory: float
    fits: bool


def baselines(
    profile: ModelProfile,
    ranks: int,
    batch_size: int,
    *,
    memory_cap: float | None = None,
    state_copies: int = 1,
    comm_latency: float = 3e-4,
    comm_bandwidth: float = 1e9,
    speeds: Sequence[float] | None = None,
) -> tuple[Baseline, ...]:
    """One process on the whole batch, and, for ``ranks`` > 1, ``ranks``-way data parallelism."""
    params = sum(lp.param_bytes for lp in profile.layers)
    state = params * (1 + state_copies)

    def acts(rows: int) -> float:
        return sum(lp.activation_bytes for lp in profile.layers) * rows / profile.batch

    def fits(memory: float) -> bool:
        return memory_cap is None or memory <= memory_cap

    fastest = max(speeds) if speeds else 1.0
    slowest = min(speeds) if speeds else 1.0
    single = profile.step_compute(batch_size) / fastest
    out = [
        Baseline(
            "one process",
            1,
            batch_size,
            single,
            single,
            0.0,
            state + acts(batch_size),
            fits(state + acts(batch_size)),
        )
    ]
    if ranks > 1:
        rows = -(-batch_size // ranks)  # the largest share when ranks does not divide the batch
        compute = profile.step_compute(rows) / slowest
        allreduce = (
            2 * (ranks - 1) / ranks * params / comm_bandwidth + 2 * (ranks - 1) * comm_latency
        )
        memory = state + acts(rows)
        out.append(
            Baseline(
                f"{ranks}-way data parallel",
                ranks,
                rows,
                compute + allreduce,
                compute,
                allreduce,
                memory,
                fits(memory),
            )
        )
    return tuple(out)


def verdict(
    step_time: float,
    bubble: float,
    microbatches: int,
    actions_per_rank: int,
    profile: ModelProfile,
    batch_size: int,
    bases: Sequence[Baseline],
    *,
    action_overhead: float,
    memory_cap: float | None,
) -> tuple[bool, str]:
    """(does the pipeline pay, the sentence saying so and why) for a pipeline step of ``step_time``."""
    fitting = [b for b in bases if b.fits]
    single = bases[0]
    ms = 1e3
    if not fitting:
        cap = "" if memory_cap is None else f" (cap {memory_cap / 2**20:.2f} MiB)"
        return True, (
            f"Pipelining is needed: one process would need {single.memory / 2**20:.2f} MiB, "
            f"over the memory cap{cap}, and data parallelism keeps the whole model on each device."
        )
    rival = min(fitting, key=lambda b: b.step_time)
    if step_time < rival.step_time:
        return True, (
            f"Pipelining pays: {step_time * ms:.2f} ms per step, "
            f"{_ratio(rival.step_time, step_time)} faster than {_name(rival)}. Without a "
            f"pipeline: {'; '.join(_describe(b) for b in bases)}."
        )
    rows = batch_size // microbatches
    work = microbatches * profile.step_compute(rows)
    whole = profile.step_compute(batch_size)
    why = []
    if whole > 0 and work > 1.1 * whole:
        why.append(
            f"its {microbatches} micro-batches of {rows} rows do {work / whole:.2f}x the work "
            f"of one batch of {batch_size} rows (fixed per-layer costs dominate small "
            f"micro-batches)"
        )
    added = actions_per_rank * action_overhead
    if added > 0.05 * step_time:  # only when it weighs
        why.append(
            f"the runtime adds {action_overhead * ms:.2f} ms around each of its "
            f"{actions_per_rank} actions per rank ({added * ms:.2f} ms, "
            f"{added / max(step_time, added):.0%} of the step)"
        )
    why.append(f"the bubble leaves {bubble:.0%} of rank time idle")
    if rival is not single:
        why[-1] += (
            f", while data parallelism keeps all {rival.devices} devices busy on {rival.rows} "
            f"rows each and its all-reduce takes {rival.communication * ms:.2f} ms"
        )
    advice = (
        "Train in one process."
        if rival is single
        else "The model fits one device: split the batch across devices, not the model."
    )
    return False, (
        f"Pipelining does not pay here: {_name(rival)} is predicted at "
        f"{rival.step_time * ms:.2f} ms per step, the best pipeline at {step_time * ms:.2f} ms "
        f"({_ratio(step_time, rival.step_time)} slower), because {_join(why)}. {advice}"
    )


def _name(b: Baseline) -> str:
    return (
        "one process on the whole batch" if b.devices == 1 else f"{b.devices}-way data parallelism"
    )


def _describe(b: Baseline) -> str:
    text = f"{_name(b)} {b.step_time * 1e3:.2f} ms"
    if b.devices > 1:
        text += (
            f" ({b.rows} rows per device {b.compute * 1e3:.2f} ms + all-reduce "
            f"{b.communication * 1e3:.2f} ms)"
        )
    if not b.fits:
        text += f", but it needs {b.memory / 2**20:.2f} MiB, over the memory cap"
    return text


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "infinitely"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
