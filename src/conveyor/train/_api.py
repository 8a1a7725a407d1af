"""The one call a user makes: profile, cut, plan, train pipelined, and compare bubbles.

    report = conveyor.train.train("model.py:make_model", "model.py:make_data",
                                  stages=2, schedule="auto", microbatches="auto")
    print(report.summary())

:func:`train` runs in the caller's process until the launch: it builds the model
once to profile it (one thread, as each rank uses), cuts and plans with the pure
functions, then starts torchrun and turns what the ranks recorded into
:class:`TrainReport`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from conveyor.train._draw import draw_svg
from conveyor.train._errors import TrainError, require_torch
from conveyor.train._partition import Partition
from conveyor.train._plan import Candidate, Plan
from conveyor.train._profile import ModelProfile
from conveyor.train._schedules import SCHEDULES, Action, Schedule, dependencies
from conveyor.train._simulate import Interval, StageCosts, bubble_of, simulate

__all__ = ["TrainReport", "measured_intervals", "replay", "train"]


def measured_intervals(timeline: Sequence[Sequence[Sequence[Any]]], ranks: int) -> list[Interval]:
    """Intervals from one step's per-rank records ``(kind, stage, mb, start, end)``."""
    return [
        Interval(s % ranks, Action(kind, s, mb), float(t0), float(t1))
        for rank_events in timeline
        for kind, s, mb, t0, t1 in rank_events
    ]


def runtime_costs(schedule: Schedule, steps: Sequence[Sequence[Interval]]) -> tuple[float, float]:
    """(overhead, comm) seconds the runtime adds, read off measured timelines (medians).

    overhead: the gap between two actions on a rank when the second's inputs were
    already there (posting sends and receives, the loss). comm: the gap between an
    action on another rank finishing and the action waiting on it starting, when
    its rank was otherwise free.
    """
    gaps: list[float] = []
    hops: list[float] = []
    rank_of = schedule.stage_to_rank
    for step in steps:
        end = {iv.action: iv.end for iv in step}
        by_rank: dict[int, list[Interval]] = {}
        for iv in step:
            by_rank.setdefault(iv.rank, []).append(iv)
        for ivs in by_rank.values():
            ivs.sort(key=lambda iv: iv.start)
            for prev, nxt in pairwise(ivs):
                deps = [end[d] for d in dependencies(nxt.action, schedule) if d in end]
                if all(d <= prev.end for d in deps):
                    gaps.append(nxt.start - prev.end)
                else:
                    crossing = [
                        end[d]
                        for d in dependencies(nxt.action, schedule)
                        if d in end and rank_of[d.stage] != nxt.rank
                    ]
                    if crossing and max(crossing) > prev.end:
                        hops.append(nxt.start - max(crossing))
    overhead = max(0.0, statistics.median(gaps)) if gaps else 0.0
    comm = max(0.0, statistics.median(hops)) if hops else 0.0
    return overhead, comm


def replay(schedule: Schedule, steps: Sequence[Sequence[Interval]]) -> float:
    """The simulator's bubble for ``schedule`` with each stage's mean measured F, B, I, W times.

    Runtime overhead and communication come from :func:`runtime_costs`. Held
    against the measured bubble it shows how much of the run the model explains.
    """
    sums: dict[tuple[str, int], list[float]] = {}
    for step in steps:
        for iv in step:
            sums.setdefault((iv.action.kind, iv.action.stage), []).append(iv.end - iv.start)
    n = schedule.num_stages
    overhead, comm = runtime_costs(schedule, steps)

    def mean(kind: str, s: int) -> float:
        values = sums.get((kind, s), [])
        return statistics.fmean(values) if values else 0.0

    costs = StageCosts(
        forward=tuple(mean("F", s) for s in range(n)),
        backward=tuple(
            mean("I", s) if schedule.splits_backward else mean("B", s) for s in range(n)
        ),
        weight=tuple(mean("W", s) for s in range(n)),
        # measured I and W already show torch's stage-0 deferral
        comm=comm,
        overhead=overhead,
    )
    return float(simulate(schedule, costs).bubble)


@dataclass(frozen=True)
class TrainReport:
    """What a pipelined run did and how its bubble compares with the prediction.

    Bubbles and step times are medians over the steps after the first (which
    includes torch's shape inference). ``step_time`` is the schedule's makespan
    (first action start to last action end); ``step_seconds`` the wall time of a
    whole step, barrier to optimizer step done, on the slowest rank. ``predicted_bubble`` comes from the
    profile; ``replayed_bubble`` simulates the schedule with the measured
    per-stage action times, so the gap between it and ``measured_bubble`` is
    what communication and waiting add. ``state_dict`` holds the trained weights,
    keyed as the factory's ``nn.Sequential``: ``model.load_state_dict(report.state_dict)``.
    Per step: ``losses``, ``grad_norms`` (before clipping) and ``lrs``; ``evals`` the
    held-out losses as (step, loss); ``rank_memory`` each rank's resident MiB at the end.
    """

    schedule: Schedule
    partition: Partition
    prediction: Candidate
    plan: Plan | None
    profile: ModelProfile
    losses: tuple[float, ...]
    timelines: tuple[tuple[Interval, ...], ...]
    measured_bubble: float
    replayed_bubble: float
    step_time: float
    step_seconds: float
    state_dict: dict[str, Any]
    assumed_costs: tuple[float, float] = (0.0, 0.0)
    parameters: list[dict[str, Any]] | None = None
    replicas: int = 1
    start: int = 0
    grad_norms: tuple[float, ...] = ()
    lrs: tuple[float, ...] = ()
    evals: tuple[tuple[int, float], ...] = ()
    rank_memory: tuple[float, ...] = ()
    profile_source: str = ""

    @property
    def runtime_costs(self) -> tuple[float, float]:
        """(action overhead, communication) seconds this run showed; feed them to :func:`plan`."""
        return runtime_costs(self.schedule, self.timelines[1:] or self.timelines)

    @property
    def predicted_bubble(self) -> float:
        assert self.prediction.bubble is not None
        return self.prediction.bubble

    @property
    def predicted_step_time(self) -> float:
        assert self.prediction.step_time is not None
        return self.prediction.step_time

    def svg(self, which: str = "measured") -> str:
        """The median step as measured, or the predicted step, as an SVG timeline."""
        p = self.schedule.ranks
        name = f"{self.schedule.name} p={p} m={self.schedule.microbatches}"
        if which == "predicted":
            assert self.prediction.simulation is not None
            return draw_svg(self.prediction.simulation.intervals, p, title=f"{name}, predicted")
        steps = self.timelines[1:] or self.timelines
        median_step = sorted(steps, key=lambda ivs: bubble_of(ivs, p))[len(steps) // 2]
        start = min(iv.start for iv in median_step)
        shifted = [
            Interval(iv.rank, iv.action, iv.start - start, iv.end - start) for iv in median_step
        ]
        return draw_svg(shifted, p, title=f"{name}, measured")

    def summary(self) -> str:
        """Partition, plan, losses, and measured against predicted bubble, as text."""
        lines = [self.partition.describe()]
        if self.profile_source:
            lines += ["", f"profile: {self.profile_source}"]
        if self.plan is not None:
            lines += ["", "plan:", self.plan.table(), "", "why: " + self.plan.reason]
        lines += [
            "",
            f"schedule {self.schedule.name}, p={self.schedule.ranks}, "
            f"m={self.schedule.microbatches}, v={self.schedule.stages_per_rank}"
            + (f", {self.replicas} data-parallel replicas" if self.replicas > 1 else "")
            + (f", resumed at step {self.start}" if self.start else ""),
            "losses:",
        ]
        every = max(1, len(self.losses) // 20)
        shown = list(range(0, len(self.losses), every))
        for k in range(0, len(shown), 5):
            lines.append(
                "  " + "  ".join(f"step {i:>3} {self.losses[i]:.4f}" for i in shown[k : k + 5])
            )
        if self.evals:
            shown_evals = self.evals[-5:]
            lines.append(
                "evaluation loss: " + "  ".join(f"step {i} {v:.4f}" for i, v in shown_evals)
            )
        if self.rank_memory:
            lines.append(
                "memory per rank: " + ", ".join(f"{m:.0f}" for m in self.rank_memory) + " MiB"
            )
        overhead, comm = self.runtime_costs
        lines += [
            "",
            f"step time   measured {self.step_time * 1e3:8.2f} ms   predicted "
            f"{self.predicted_step_time * 1e3:8.2f} ms   (with optimizer: "
            f"{self.step_seconds * 1e3:.2f} ms)",
            f"bubble      measured {self.measured_bubble:8.1%}      predicted "
            f"{self.predicted_bubble:8.1%}   (replayed from measured action times "
            f"{self.replayed_bubble:.1%})",
            f"runtime     {overhead * 1e3:.2f} ms per action, {comm * 1e3:.2f} ms per send "
            f"(measured; the plan assumed {self.assumed_costs[0] * 1e3:.2f} and "
            f"{self.assumed_costs[1] * 1e3:.2f})",
        ]
        bases = self.plan.baselines if self.plan is not None else ()
        if bases:
            each = ", ".join(
                f"{b.name} {b.step_time * 1e3:.2f} ms{'' if b.fits else ' (over the memory cap)'}"
                for b in bases
            )
            ratio = self.step_time / bases[0].step_time if bases[0].step_time > 0 else math.inf
            lines.append(
                f"no pipeline {each} (predicted); the measured pipelined step is "
                f"{ratio:.2f}x one process's"
            )
        return "\n".join(lines)


def _spec_of(obj: str | Callable[..., Any]) -> str:
    if isinstance(obj, str):
        return obj
    import inspect

    path = inspect.getsourcefile(obj)
    if path is None or obj.__name__ == "<lambda>" or "<locals>" in obj.__qualname__:
        raise TrainError(
            f"{obj!r} must be a module-level function so that each rank can import it; "
            f"or pass 'path/to/file.py:name'"
        )
    return f"{path}:{obj.__name__}"


def train(
    model: str | Callable[..., Any],
    data: str | Callable[..., Any] | None = None,
    *,
    stages: int,
    schedule: str = "auto",
    microbatches: int | str = "auto",
    batch_size: int = 64,
    steps: int = 20,
    lr: float = 0.05,
    optimizer: str = "sgd",
    loss: str = "cross_entropy",
    partition: str = "optimal",
    stages_per_rank: int = 2,
    memory_cap: float | None = None,
    seed: int = 0,
    device: str = "auto",
    timeout: float | None = None,
    record_parameters: bool = False,
    profile_repeats: int = 5,
    comm_latency: float = 3e-4,
    action_overhead: float = 3e-4,
    comm_bandwidth: float = 1e9,
    speeds: Sequence[float] | None = None,
    checkpointing: bool = True,
    profile: str | Path | ModelProfile | None = None,
    profile_cache: str | Path | bool = True,
    dp: int = 1,
    accumulate: int = 1,
    weight_decay: float = 0.0,
    lr_schedule: str = "constant",
    warmup_steps: int = 0,
    clip_grad: float | None = None,
    precision: str = "fp32",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    until: int | None = None,
    eval_data: str | Callable[..., Any] | None = None,
    eval_every: int = 0,
    log_every: int = 0,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
) -> TrainReport | None:
    """Profile ``model``, cut it into ``stages`` ranks, plan, train ``steps`` steps pipelined.

    ``model`` and ``data`` are module-level factories or ``"file.py:name"`` specs:
    ``model()`` returns an ``nn.Sequential`` (or a list of modules), ``data()``
    returns ``(inputs, targets)`` tensors; ``data`` defaults to ``make_data``
    beside the model factory. ``schedule`` is one of gpipe, 1f1b, interleaved,
    zbh1 or auto; ``microbatches`` a number or auto; ``partition`` optimal,
    uniform or parameters; ``memory_cap`` bytes per rank; ``comm_latency`` and
    ``action_overhead`` (seconds) and ``comm_bandwidth`` (bytes per second, also
    for data parallelism's all-reduce) the runtime costs the plan assumes;
    ``speeds`` each rank's device speed relative to the profiling device;
    ``checkpointing`` lets a stage recompute its activations when that is what
    fits the memory cap.

    The profile is measured once per model and kept in ``profile_cache`` (True:
    the user's cache directory; a path; False: none), so the same model is cut
    the same way on every call; ``profile`` pins one instead (a
    :class:`ModelProfile` or the path of one saved with ``profile.save(path)``).

    ``data()`` may instead return an iterable of ``(inputs, targets)`` batches of
    ``batch_size`` rows (a DataLoader, a generator), read step by step.
    Training: ``dp`` data-parallel replicas of the pipeline (``stages x dp``
    processes); ``accumulate`` schedule passes per optimizer step; ``optimizer``
    sgd, adam or adamw with ``weight_decay``; ``lr_schedule`` constant, cosine or
    linear after ``warmup_steps``; ``clip_grad`` the global gradient norm;
    ``precision`` fp32 or bf16 (autocast); ``checkpoint_dir`` saves every
    ``checkpoint_every`` steps and at the end, ``resume`` continues from the
    newest checkpoint there, ``until`` stops early (to resume later);
    ``eval_data`` a factory of held-out ``(inputs, targets)`` evaluated every
    ``eval_every`` steps and at the end; ``log_every`` prints a progress line.
    """
    require_torch()

    from conveyor.train._launch import launch
    from conveyor.train._prepare import prepare_run
    from conveyor.train._runtime import RunSpec

    model_spec = _spec_of(model)
    data_spec = _spec_of(data) if data is not None else model_spec.rsplit(":", 1)[0] + ":make_data"
    if schedule != "auto" and schedule not in SCHEDULES:
        raise TrainError(
            f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)} or auto"
        )
    if partition not in ("optimal", "uniform", "parameters"):
        raise TrainError(f"unknown partition {partition!r}; choose optimal, uniform or parameters")
    if dp < 1 or accumulate < 1 or batch_size % (dp * accumulate):
        raise TrainError(
            f"batch size {batch_size} does not split into dp={dp} replicas x "
            f"accumulate={accumulate} passes; use a multiple of {max(1, dp * accumulate)}"
        )
    # the plan describes one pipeline pass: a replica's rows, split over accumulated passes
    pipeline_rows = batch_size // (dp * accumulate)
    if microbatches != "auto" and (
        not isinstance(microbatches, int) or pipeline_rows % microbatches
    ):
        raise TrainError(
            f"--microbatches {microbatches} must divide the {pipeline_rows} rows of a pipeline "
            f"pass (batch size {batch_size} / (dp x accumulate)) "
            f"so that every micro-batch has the same rows"
        )

    prepared = prepare_run(
        model_spec,
        data_spec,
        stages=stages,
        schedule=schedule,
        microbatches=microbatches,
        batch_size=pipeline_rows,
        partition=partition,
        stages_per_rank=stages_per_rank,
        memory_cap=memory_cap,
        optimizer=optimizer,
        seed=seed,
        comm_latency=comm_latency,
        comm_bandwidth=comm_bandwidth,
        action_overhead=action_overhead,
        speeds=speeds,
        checkpointing=checkpointing,
        profile=profile,
        profile_cache=profile_cache,
        profile_repeats=profile_repeats,
        device=device,
    )
    prof, chosen_plan, candidate = prepared.profile, prepared.plan, prepared.candidate
    sched = prepared.schedule
    assert candidate.partition is not None

    spec = RunSpec(
        model=model_spec,
        data=data_spec,
        schedule=sched.name,
        microbatches=sched.microbatches,
        bounds=list(candidate.partition.bounds),
        stages_per_rank=sched.stages_per_rank,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        loss=loss,
        seed=seed,
        record_parameters=record_parameters,
        dp=dp,
        accumulate=accumulate,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        warmup_steps=warmup_steps,
        clip_grad=clip_grad,
        precision=precision,
        recompute=list(candidate.partition.checkpoint) or None,
        checkpoint_dir=None if checkpoint_dir is None else str(Path(checkpoint_dir).resolve()),
        checkpoint_every=checkpoint_every,
        resume=resume,
        until=until,
        eval_data=None if eval_data is None else _spec_of(eval_data),
        eval_every=eval_every,
        log_every=log_every,
    )
    results = launch(
        [spec], stages * dp, timeout=timeout, device=device,
        nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port,
    )  # fmt: skip
    if not results:  # another node holds rank 0 and makes the report
        return None
    (result,) = results
    report = report_from_result(result, sched, candidate, chosen_plan, prof)
    return dataclasses.replace(
        report,
        assumed_costs=(action_overhead, comm_latency),
        profile_source=prepared.profile_source,
    )


def report_from_result(
    result: dict[str, Any],
    schedule: Schedule,
    prediction: Candidate,
    chosen_plan: Plan | None,
    prof: ModelProfile,
) -> TrainReport:
    """Turn rank 0's gathered records into a :class:`TrainReport`."""
    assert prediction.partition is not None
    p = schedule.ranks
    timelines = tuple(tuple(measured_intervals(step, p)) for step in result["timelines"])
    later = timelines[1:] or timelines
    makespans = [max(iv.end for iv in s) - min(iv.start for iv in s) for s in later]
    return TrainReport(
        schedule=schedule,
        partition=prediction.partition,
        prediction=prediction,
        plan=chosen_plan,
        profile=prof,
        losses=tuple(result["losses"]),
        timelines=timelines,
        measured_bubble=statistics.median(bubble_of(s, p) for s in later),
        replayed_bubble=replay(schedule, later),
        step_time=statistics.median(makespans),
        step_seconds=statistics.median(result["step_seconds"][1:] or result["step_seconds"]),
        state_dict=result["final_state"],
        parameters=result["parameters"],
        replicas=result["replicas"],
        start=result["start"],
        grad_norms=tuple(result["grad_norms"]),
        lrs=tuple(result["lrs"]),
        evals=tuple((int(step), float(loss)) for step, loss in result["eval"]),
        rank_memory=tuple(result["rss_mib"]),
    )


def write_svg(path: str | Path, text: str) -> Path:
    """Write an SVG picture and return its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def save_weights(path: str | Path, state_dict: dict[str, Any]) -> Path:
    """``torch.save`` the trained weights (load with ``model.load_state_dict(torch.load(path))``)."""
    import torch

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, out)
    return out
