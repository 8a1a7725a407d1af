"""Everything :func:`~conveyor.train.train` does before the launch: profile, plan, choose.

:func:`prepare_run` runs in the caller's process and can be called, and tested,
alone:

1. build the model under the seed and take one batch of the data;
2. profile it at the micro-batch sizes the plan will consider, the whole batch
   (one process) and batch / p (data parallelism), with one thread as each rank
   runs; or read that profile from the disk cache (``_profile_cache.py``), or
   take the one the caller pinned;
3. plan: every schedule and m asked for, or just the one given, compared with
   training without a pipeline;
4. re-cut with the uniform or parameter-count partition when asked to.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.train._errors import TrainError, require_torch
from conveyor.train._partition import partition_by_params, partition_uniform
from conveyor.train._plan import Candidate, Plan, plan, predict
from conveyor.train._profile import ModelProfile, as_layers, profile_model
from conveyor.train._profile_cache import (
    cache_file,
    default_cache_dir,
    load_cached,
    profile_key,
    store_profile,
)
from conveyor.train._schedules import SCHEDULES, Schedule
from conveyor.train._trees import map_tensors, rows_of, take_rows

__all__ = ["PreparedRun", "prepare_run", "profile_rows"]


@dataclass(frozen=True)
class PreparedRun:
    """The profile, the plan, the candidate to run, and where the profile came from.

    ``profile_source`` is "measured", "measured, saved to PATH", "cached at PATH"
    or "pinned".
    """

    profile: ModelProfile
    plan: Plan
    candidate: Candidate
    profile_source: str

    @property
    def schedule(self) -> Schedule:
        assert self.candidate.simulation is not None
        return self.candidate.simulation.schedule


def profile_rows(
    batch_size: int, ranks: int, microbatches: Sequence[int], *, limit: int = 8
) -> list[int]:
    """The micro-batch sizes to measure, ascending.

    Every candidate m's rows, the whole batch and batch / ``ranks``; when that is
    more than ``limit`` sizes, the smallest, the largest and log-spaced ones
    between (the rest are interpolated).
    """
    wanted = {batch_size // m for m in microbatches if batch_size % m == 0} | {batch_size}
    if ranks > 1:
        wanted.add(-(-batch_size // ranks))
    sizes = sorted(wanted)
    if len(sizes) <= limit:
        return sizes
    lo, hi = math.log(sizes[0]), math.log(sizes[-1])
    keep = {sizes[0], sizes[-1]}
    for k in range(1, limit - 1):
        target = lo + (hi - lo) * k / (limit - 1)
        keep.add(min(sizes, key=lambda r: (abs(math.log(r) - target), r)))
    return sorted(keep)


def _check_pinned(prof: ModelProfile, layers: Sequence[Any]) -> None:
    names = [f"{i}:{type(layer).__name__}" for i, layer in enumerate(layers)]
    if len(prof.layers) != len(layers):
        raise TrainError(
            f"the pinned profile has {len(prof.layers)} layers and the model {len(layers)}: "
            f"it is another model's. Profile this one (leave out profile=) and save that."
        )
    for lp, name in zip(prof.layers, names, strict=True):
        if lp.name != name:
            raise TrainError(
                f"the pinned profile's layer {lp.name} is {name} in the model: it is another "
                f"model's. Profile this one (leave out profile=) and save that."
            )


def _profile(
    factory: Callable[..., Any],
    layers: list[Any],
    inputs: Any,
    batch_size: int,
    *,
    rows: Sequence[int],
    repeats: int,
    warmup: int,
    cache: str | Path | bool | None,
    clock: Callable[[], float],
) -> tuple[ModelProfile, str]:
    import torch

    try:
        n = rows_of(inputs)
    except ValueError:
        raise TrainError(
            "the data factory's inputs hold no tensor with a batch dimension"
        ) from None
    if n < batch_size:
        raise TrainError(f"the data has {n} rows, fewer than one batch of {batch_size}")
    sample = take_rows(inputs, batch_size)
    params = [p for layer in layers for p in layer.parameters()]
    if params and params[0].device.type == "cuda":  # profile where the ranks will train
        sample = map_tensors(lambda t: t.to(params[0].device), sample)
    key = profile_key(
        factory=factory,
        layers=layers,
        sample=sample,
        rows=rows,
        repeats=repeats,
        warmup=warmup,
        threads=torch.get_num_threads(),
        device=str(params[0].device) if params else "cpu",
        torch_version=torch.__version__,
    )
    root: str | Path | None = None
    if cache is True:
        root = default_cache_dir()
    elif cache:
        root = cache
    if root is not None:
        hit = load_cached(root, key)
        if hit is not None:
            return hit, f"cached at {cache_file(root, key)}"
    prof = profile_model(layers, sample, rows=rows, repeats=repeats, warmup=warmup, clock=clock)
    prof = dataclasses.replace(prof, key=key)
    if root is None:
        return prof, "measured"
    return prof, f"measured, saved to {store_profile(root, prof)}"


def _cuda_clock() -> float:
    """Seconds, once the GPU has finished what was queued: a kernel is timed, not its launch."""
    import torch

    torch.cuda.synchronize()
    return time.perf_counter()


def prepare_run(
    model_spec: str,
    data_spec: str,
    *,
    stages: int,
    schedule: str = "auto",
    microbatches: int | str = "auto",
    batch_size: int = 64,
    partition: str = "optimal",
    stages_per_rank: int = 2,
    memory_cap: float | None = None,
    optimizer: str = "sgd",
    seed: int = 0,
    comm_latency: float = 3e-4,
    comm_bandwidth: float = 1e9,
    action_overhead: float = 3e-4,
    speeds: Sequence[float] | None = None,
    checkpointing: bool = True,
    profile: str | Path | ModelProfile | None = None,
    profile_cache: str | Path | bool | None = True,
    profile_repeats: int = 5,
    profile_warmup: int = 2,
    clock: Callable[[], float] | None = None,
    device: str = "auto",
) -> PreparedRun:
    """Profile (or read the cached or pinned profile), plan and choose, as :func:`train` does.

    The model is profiled on the device the ranks train on: the first GPU when
    ``device`` is "auto" and CUDA is available (timed with a synchronisation around
    each measurement), else the CPU. The arguments are :func:`train`'s; ``clock`` is
    the profiler's (tests pass a
    fake one). Raises TrainError for a model, data or setting that cannot run.
    """
    require_torch()
    import torch

    from conveyor.train._data import sample_inputs
    from conveyor.train._runtime import load_object

    auto_m = microbatches == "auto"
    v = stages_per_rank if schedule == "interleaved" else 1
    divisors = [m for m in range(1, min(batch_size, 64) + 1) if batch_size % m == 0]
    ms = divisors if auto_m else [int(microbatches)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        factory = load_object(model_spec)
        layers = as_layers(factory())
        if device != "cpu" and torch.cuda.is_available():
            layers = [layer.to("cuda:0") for layer in layers]
            if clock is None:
                clock = _cuda_clock
        if schedule != "auto" and len(layers) < stages * v:
            most = f"--stages {len(layers) // v}" + (f" with {v} per rank" if v > 1 else "")
            raise TrainError(
                f"cannot cut {len(layers)} layers into {stages * v} stages ({stages} ranks x "
                f"{v} per rank): every stage needs a layer. Use {most} or fewer (the most this "
                f"model allows), or a model with more layers."
            )
        if profile is not None:
            prof = profile if isinstance(profile, ModelProfile) else ModelProfile.load(profile)
            _check_pinned(prof, layers)
            source = "pinned" if isinstance(profile, ModelProfile) else f"pinned from {profile}"
        else:
            inputs = sample_inputs(load_object(data_spec)())
            prof, source = _profile(
                factory,
                layers,
                inputs,
                batch_size,
                rows=profile_rows(batch_size, stages, ms),
                repeats=profile_repeats,
                warmup=profile_warmup,
                cache=profile_cache,
                clock=clock or time.perf_counter,
            )
    finally:
        torch.set_num_threads(threads)

    options: dict[str, Any] = {
        "memory_cap": memory_cap,
        "state_copies": 3 if optimizer in ("adam", "adamw") else 1,  # gradient (+ moments)
        "comm_latency": comm_latency,
        "comm_bandwidth": comm_bandwidth,
        "action_overhead": action_overhead,
        "speeds": speeds,
        "checkpointing": checkpointing,
    }
    chosen = plan(
        prof,
        stages,
        batch_size,
        schedules=SCHEDULES if schedule == "auto" else (schedule,),
        microbatches=None if auto_m else ms,
        stages_per_rank=stages_per_rank,
        **options,
    )
    candidate = chosen.best
    if partition != "optimal":
        sched = candidate.simulation.schedule if candidate.simulation else None
        assert sched is not None
        totals = [sum(c) for c in prof.scaled(batch_size // sched.microbatches)]
        cut = (
            partition_uniform(totals, sched.num_stages)
            if partition == "uniform"
            else partition_by_params(totals, [lp.params for lp in prof.layers], sched.num_stages)
        )
        candidate = predict(prof, sched, batch_size, bounds=cut.bounds, **options)
        assert candidate.partition is not None
        candidate = dataclasses.replace(
            candidate, partition=dataclasses.replace(candidate.partition, method=cut.method)
        )
    return PreparedRun(prof, chosen, candidate, source)
