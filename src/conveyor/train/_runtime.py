"""Run one rank of a pipelined training job on torch.distributed.pipelining, and time it.

Started by torchrun (see ``_launch.py``); every rank runs :func:`run_rank` with the
same :class:`RunSpec`. A rank builds the whole model from the factory under the
same seed, keeps the layers of its stages (stage s on rank s mod p), wraps each
in a ``PipelineStage`` and drives them with the torch schedule class:

    gpipe        ScheduleGPipe
    1f1b         Schedule1F1B
    interleaved  ScheduleInterleaved1F1B    (v stages per rank)
    zbh1         _PipelineScheduleRuntime loaded with conveyor's own action lists

For ZB-H1 torch's nearest class, ScheduleInterleavedZeroBubble, produces the
same order with one stage per rank but only when m is a multiple of m // p; the
runtime's action-list facility (``_prepare_schedule_with_comms``, which the
CSV loader uses) takes conveyor's lists directly and adds the sends and receives.
For interleaved the runtime checks that torch's order equals conveyor's.

Timing: each stage's ``forward_one_chunk``, ``backward_one_chunk`` and
``backward_weight_one_chunk`` are wrapped to record start and end with
``time.perf_counter`` relative to a barrier at the start of the step, so
waiting for a neighbour's activation is idle time and only compute is busy.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor.train._errors import MissingTorchError, TrainError

try:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleGPipe,
        ScheduleInterleaved1F1B,
    )
    from torch.distributed.pipelining.schedules import (
        _Action,
        _ComputationType,
        _PipelineScheduleRuntime,
    )
except ImportError as exc:  # pragma: no cover - exercised where torch is absent
    raise MissingTorchError() from exc

from conveyor.train._profile import as_layers
from conveyor.train._rank_errors import records_rank_errors, write_rank_error
from conveyor.train._schedules import Schedule, build_schedule

__all__ = ["RunSpec", "load_object", "run_rank"]


@dataclass
class RunSpec:
    """Everything a rank needs to train, as JSON-friendly values.

    ``model`` and ``data`` are ``"path/to/file.py:name"`` or ``"module:name"``
    specs of factories (the model's called with ``model_kwargs``); ``bounds`` the
    partition's layer cut points (p·v + 1 values).
    """

    model: str
    data: str
    schedule: str
    microbatches: int
    bounds: list[int]
    stages_per_rank: int = 1
    batch_size: int = 64
    steps: int = 20
    lr: float = 0.05
    optimizer: str = "sgd"
    loss: str = "cross_entropy"
    seed: int = 0
    threads: int = 1
    record_parameters: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def load_object(spec: str) -> Any:
    """The object named by ``"file.py:name"`` or ``"package.module:name"``."""
    if ":" not in spec:
        raise TrainError(f"expected 'path/to/file.py:name' or 'module:name', got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.exists():
            raise TrainError(f"no file {path} (from {spec!r})")
        mod_name = f"_conveyor_user_{abs(hash(str(path)))}"
        module = sys.modules.get(mod_name)
        if module is None:
            s = importlib.util.spec_from_file_location(mod_name, path)
            assert s is not None and s.loader is not None
            module = importlib.util.module_from_spec(s)
            sys.modules[mod_name] = module
            s.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    try:
        return getattr(module, name)
    except AttributeError:
        raise TrainError(f"{where} has no attribute {name!r} (from {spec!r})") from None


def _loss_fn(spec: str) -> Callable[..., Any]:
    if spec == "cross_entropy":
        return nn.functional.cross_entropy
    if spec == "mse":
        return nn.functional.mse_loss
    fn = load_object(spec)
    if not callable(fn):
        raise TrainError(f"loss {spec!r} is not callable")
    return fn


def build_model_layers(spec: RunSpec) -> list[nn.Module]:
    """The factory's layers, built under ``spec.seed`` so every rank gets the same weights."""
    torch.manual_seed(spec.seed)
    return as_layers(load_object(spec.model)(**spec.model_kwargs))


def batches(spec: RunSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``spec.steps`` batches of ``spec.batch_size`` rows, in a seeded order, same on every rank."""
    inputs, targets = load_object(spec.data)()
    n = int(inputs.shape[0])
    if n < spec.batch_size:
        raise TrainError(f"the data has {n} rows, fewer than one batch of {spec.batch_size}")
    gen = torch.Generator().manual_seed(spec.seed)
    order = torch.randperm(n, generator=gen)
    per_epoch = n // spec.batch_size
    out = []
    for step in range(spec.steps):
        if step % per_epoch == 0 and step:
            order = torch.randperm(n, generator=gen)
        k = step % per_epoch
        idx = order[k * spec.batch_size : (k + 1) * spec.batch_size]
        out.append((inputs[idx], targets[idx]))
    return out


def make_optimizer(spec: RunSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr)
    raise TrainError(f"unknown optimizer {spec.optimizer!r}; use sgd or adam")


class _Recorder:
    """Wraps a stage's compute methods to log (kind, stage, micro-batch, start, end).

    On a GPU each action is bracketed by ``torch.cuda.synchronize`` so that the
    times are the kernels', not their launches'.
    """

    def __init__(self, device: torch.device) -> None:
        self.origin = time.perf_counter()
        self.events: list[tuple[str, int, int, float, float]] = []
        self.sync: Callable[[], None] | None = (
            torch.cuda.synchronize if device.type == "cuda" else None
        )

    def reset(self) -> None:
        self.origin = time.perf_counter()
        self.events = []

    def now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter() - self.origin

    def wrap(self, stage: PipelineStage) -> None:
        index = stage.stage_index

        def timed(kind: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
            def run(chunk: int, *args: Any, **kwargs: Any) -> Any:
                t0 = self.now()
                out = fn(chunk, *args, **kwargs)
                k = kind(*args, **kwargs) if callable(kind) else kind
                self.events.append((k, index, chunk, t0, self.now()))
                return out

            return run

        def backward_kind(*args: Any, full_backward: bool = True, **kwargs: Any) -> str:
            return "B" if full_backward else "I"

        stage.forward_one_chunk = timed("F", stage.forward_one_chunk)  # type: ignore[method-assign]
        stage.backward_one_chunk = timed(backward_kind, stage.backward_one_chunk)  # type: ignore[method-assign]
        stage.backward_weight_one_chunk = timed("W", stage.backward_weight_one_chunk)  # type: ignore[method-assign]


def _torch_actions(schedule: Schedule) -> dict[int, list[_Action | None]]:
    kinds = {
        "F": _ComputationType.FORWARD,
        "B": _ComputationType.FULL_BACKWARD,
        "I": _ComputationType.BACKWARD_INPUT,
        "W": _ComputationType.BACKWARD_WEIGHT,
    }
    return {
        r: [_Action(a.stage, kinds[a.kind], a.microbatch) for a in acts]
        for r, acts in enumerate(schedule.actions)
    }


def _build_schedule(plan: Schedule, stages: list[Any], loss: Callable[..., Any]) -> Any:
    m = plan.microbatches
    if plan.name == "gpipe":
        return ScheduleGPipe(stages[0], n_microbatches=m, loss_fn=loss)
    if plan.name == "1f1b":
        return Schedule1F1B(stages[0], n_microbatches=m, loss_fn=loss)
    if plan.name == "interleaved":
        sched = ScheduleInterleaved1F1B(stages, n_microbatches=m, loss_fn=loss)
        theirs = {r: [a for a in acts if a is not None] for r, acts in sched.pipeline_order.items()}
        if theirs != _torch_actions(plan):
            raise TrainError(
                "torch's ScheduleInterleaved1F1B order differs from conveyor's interleaved "
                f"schedule for p={plan.ranks}, m={m}, v={plan.stages_per_rank}; the "
                "simulator's prediction would not describe this run"
            )
        return sched
    if plan.name == "zbh1":
        runtime = _PipelineScheduleRuntime(stages, n_microbatches=m, loss_fn=loss)
        runtime._prepare_schedule_with_comms(_torch_actions(plan))
        return runtime
    raise TrainError(f"no runtime for schedule {plan.name!r}")


def _global_state(spec: RunSpec, modules: Mapping[int, nn.Module]) -> dict[str, torch.Tensor]:
    """This rank's parameters and buffers keyed as in the whole ``nn.Sequential``'s state dict."""
    out = {}
    for s, module in modules.items():
        for name, value in module.state_dict().items():
            local, rest = name.split(".", 1)
            out[f"{spec.bounds[s] + int(local)}.{rest}"] = value.detach().cpu().clone()
    return out


def run_rank(spec: RunSpec) -> dict[str, Any] | None:
    """Train ``spec.steps`` steps on this rank; rank 0 returns the gathered result, others None.

    The process group must be initialised (torchrun + ``init_process_group``).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(spec.threads)
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    v = spec.stages_per_rank
    plan = build_schedule(spec.schedule, world, spec.microbatches, v)
    layers = build_model_layers(spec)
    n_stages = world * v
    if len(spec.bounds) != n_stages + 1 or spec.bounds[-1] != len(layers):
        raise TrainError(
            f"bounds {spec.bounds} do not cut {len(layers)} layers into {n_stages} stages"
        )
    mine = [s for s in range(n_stages) if plan.stage_to_rank[s] == rank]
    modules = {
        s: nn.Sequential(*layers[spec.bounds[s] : spec.bounds[s + 1]]).to(device) for s in mine
    }
    stages = [PipelineStage(modules[s], s, n_stages, device) for s in mine]
    recorder = _Recorder(device)
    for stage in stages:
        recorder.wrap(stage)
    loss_fn = _loss_fn(spec.loss)
    sched = _build_schedule(plan, stages, loss_fn)
    params = [p for s in mine for p in modules[s].parameters()]
    optimizer = make_optimizer(spec, params)
    holds_first, holds_last = 0 in mine, n_stages - 1 in mine

    losses: list[float] = []
    timelines: list[list[tuple[str, int, int, float, float]]] = []
    snapshots: list[dict[str, torch.Tensor]] = []
    walls: list[float] = []
    for x, y in batches(spec):
        optimizer.zero_grad()
        dist.barrier()
        recorder.reset()
        mb_losses: list[torch.Tensor] = []
        args = (x.to(device),) if holds_first else ()
        kwargs: dict[str, Any] = {}
        if holds_last:
            kwargs = {"target": y.to(device), "losses": mb_losses}
        sched.step(*args, **kwargs)
        timelines.append(list(recorder.events))
        optimizer.step()
        walls.append(recorder.now())
        if holds_last:
            losses.append(float(torch.stack([t.detach() for t in mb_losses]).mean()))
        if spec.record_parameters:
            snapshots.append(_global_state(spec, modules))

    gathered: list[Any] = [None] * world if rank == 0 else []
    dist.gather_object(
        {
            "rank": rank,
            "losses": losses,
            "timelines": timelines,
            "snapshots": snapshots,
            "walls": walls,
            "final": _global_state(spec, modules),
        },
        gathered if rank == 0 else None,
        dst=0,
    )
    if rank != 0:
        return None
    losses = next(g["losses"] for g in gathered if g["losses"])
    params_by_step: list[dict[str, torch.Tensor]] = [{} for _ in range(spec.steps)]
    for g in gathered:
        for step, snap in enumerate(g["snapshots"]):
            params_by_step[step].update(snap)
    final: dict[str, torch.Tensor] = {}
    for g in gathered:
        final.update(g["final"])
    return {
        "spec": asdict(spec),
        "final_state": final,
        "ranks": world,
        "losses": losses,
        "timelines": [[g["timelines"][step] for g in gathered] for step in range(spec.steps)],
        # from the barrier to the end of the optimizer step, on the slowest rank
        "step_seconds": [max(g["walls"][step] for g in gathered) for step in range(spec.steps)],
        "parameters": params_by_step if spec.record_parameters else None,
    }


@records_rank_errors
def main(argv: list[str] | None = None) -> int:
    """torchrun entry point: ``python -m conveyor.train._runtime SPECS.json RESULT.pt``.

    Runs every spec in the file, in order, in one process group; rank 0 saves the
    list of results with ``torch.save``. An exception is recorded for the launcher
    (:mod:`conveyor.train._rank_errors`) before the group is torn down.
    """
    import json

    args = sys.argv[1:] if argv is None else argv
    specs_path, result_path = args
    with open(specs_path) as f:
        payload = json.load(f)
    use_cuda = payload.get("device", "auto") != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        results = [run_rank(RunSpec(**s)) for s in payload["specs"]]
        if dist.get_rank() == 0:
            torch.save(results, result_path)
        dist.barrier()
    except Exception as exc:
        # now, while the group is whole: tearing it down fails the other ranks too
        write_rank_error(exc)
        raise
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
