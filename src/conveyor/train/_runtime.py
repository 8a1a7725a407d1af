"""Run one rank of a pipelined training job on torch.distributed.pipelining, and time it.

Started by torchrun (see ``_launch.py``); every rank runs :func:`run_rank` with the
same :class:`RunSpec`. The ranks form a ``dp x pp`` DeviceMesh: ``dp``
data-parallel replicas of a ``pp``-rank pipeline. A rank builds the whole model
from the factory under the run's seed (so tied parameters and initial weights
are the same everywhere), keeps the layers of its stages (stage s on pipeline
rank s mod pp) as :class:`~conveyor.train._stages.StageModule`\\ s, wraps each in a
``PipelineStage`` given its input and output shapes, and drives them with the
torch schedule class:

    gpipe        ScheduleGPipe
    1f1b         Schedule1F1B
    interleaved  ScheduleInterleaved1F1B    (v stages per rank)
    zbh1         _PipelineScheduleRuntime loaded with conveyor's own action lists

For ZB-H1 torch's nearest class, ScheduleInterleavedZeroBubble, produces the
same order with one stage per rank but only when m is a multiple of m // p; the
runtime's action-list facility (``_prepare_schedule_with_comms``, which the
CSV loader uses) takes conveyor's lists directly and adds the sends and receives.
For interleaved the runtime checks that torch's order equals conveyor's.

The schedules leave gradients unscaled; :class:`~conveyor.train._optim.GradientStep`
sums tied copies and replicas, scales once and clips, so a step equals one
process's step on the same global batch. Timing and random streams:
:mod:`conveyor.train._timing`. Checkpoints: :mod:`conveyor.train._checkpoint`.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

from conveyor.train._errors import MissingTorchError, TrainError

try:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
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

from conveyor.train import _checkpoint
from conveyor.train._data import batches, split_rows
from conveyor.train._optim import GradientStep, TiedGroup, make_lr_schedule, make_optimizer
from conveyor.train._place import Place, rank_device
from conveyor.train._profile import as_layers
from conveyor.train._rank_errors import records_rank_errors, write_rank_error
from conveyor.train._results import evaluator, gather, mean_over_replicas, progress, rss_mib
from conveyor.train._schedules import Schedule, build_schedule
from conveyor.train._spec import RunSpec, load_object
from conveyor.train._stages import (
    Boundary,
    StageModule,
    global_state,
    infer_boundaries,
    parameter_by_name,
    tied_parameters,
    unflatten,
)
from conveyor.train._timing import Recorder, seed_forwards, stream_seed

__all__ = ["RunSpec", "build_model_layers", "load_object", "run_rank"]

Batch = tuple[torch.Tensor, torch.Tensor]
TIMELINE_WINDOW = 64  # steps whose action timelines a run keeps: the first and the latest


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
    """The factory's layers, built under ``spec.seed`` so every rank gets the same weights.

    A traced model's pieces are traced for the micro-batch's rows.
    """
    torch.manual_seed(spec.seed)
    rows = spec.batch_size // (spec.dp * spec.accumulate * spec.microbatches)
    return as_layers(load_object(spec.model)(**spec.model_kwargs), rows=rows)


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
    # gradients stay summed over micro-batches: GradientStep scales them once per step
    kw: dict[str, Any] = {"n_microbatches": m, "loss_fn": loss, "scale_grads": False}
    if plan.name == "gpipe":
        return ScheduleGPipe(stages[0], **kw)
    if plan.name == "1f1b":
        return Schedule1F1B(stages[0], **kw)
    if plan.name == "interleaved":
        sched = ScheduleInterleaved1F1B(stages, **kw)
        theirs = {r: [a for a in acts if a is not None] for r, acts in sched.pipeline_order.items()}
        if theirs != _torch_actions(plan):
            raise TrainError(
                "torch's ScheduleInterleaved1F1B order differs from conveyor's interleaved "
                f"schedule for p={plan.ranks}, m={m}, v={plan.stages_per_rank}; the "
                "simulator's prediction would not describe this run"
            )
        return sched
    if plan.name == "zbh1":
        runtime = _PipelineScheduleRuntime(stages, **kw)
        runtime._prepare_schedule_with_comms(_torch_actions(plan))
        return runtime
    raise TrainError(f"no runtime for schedule {plan.name!r}")


def _layout(spec: RunSpec, world: int) -> dict[str, Any]:
    return {
        "ranks": world,
        "dp": spec.dp,
        "schedule": spec.schedule,
        "stages_per_rank": spec.stages_per_rank,
        "bounds": list(spec.bounds),
        "microbatches": spec.microbatches,
    }


PLAN_FIELDS = ("schedule", "microbatches", "bounds", "stages_per_rank", "recompute")


def _rank_zeros_plan(spec: RunSpec) -> RunSpec:
    """``spec`` with the plan (schedule, m, cut, recomputation) rank 0 was given.

    On several nodes each caller profiles and plans for itself, and timings differ
    from machine to machine; ranks running different plans would never meet. So
    every rank runs node 0's, the one its report describes.
    """
    box = [{name: getattr(spec, name) for name in PLAN_FIELDS}]
    dist.broadcast_object_list(box, src=0)
    return replace(spec, **box[0])


def _setup(spec: RunSpec) -> tuple[Place, list[nn.Module]]:
    rank, world = dist.get_rank(), dist.get_world_size()
    spec.check(world)
    torch.set_num_threads(spec.threads)
    device = rank_device()
    pp = world // spec.dp
    mesh = init_device_mesh(device.type, (spec.dp, pp), mesh_dim_names=("dp", "pp"))
    replica, pp_rank = divmod(rank, pp)
    plan = build_schedule(spec.schedule, pp, spec.microbatches, spec.stages_per_rank)
    layers = build_model_layers(spec)
    if len(spec.bounds) != plan.num_stages + 1 or spec.bounds[-1] != len(layers):
        raise TrainError(
            f"bounds {spec.bounds} do not cut {len(layers)} layers into {plan.num_stages} stages"
        )
    mine = [s for s in range(plan.num_stages) if plan.stage_to_rank[s] == pp_rank]
    place = Place(
        spec=spec,
        device=device,
        replica=replica,
        pp_rank=pp_rank,
        pp=pp,
        plan=plan,
        mine=mine,
        modules={},
        pp_group=mesh["pp"].get_group(),
        dp_group=mesh["dp"].get_group() if spec.dp > 1 else None,
    )
    return place, layers


def _tied_groups(r: Place, layers: list[nn.Module]) -> list[TiedGroup]:
    """The tied parameters this rank holds a copy of, each with the group of holders."""
    out = []
    for tied in tied_parameters(layers, r.spec.bounds):
        holders = sorted({r.plan.stage_to_rank[s] for s in tied.names})
        if len(holders) < 2:
            continue  # every copy on this rank is one tensor already
        # every rank creates every group, in the same order: torch requires it
        groups = [dist.new_group([d * r.pp + h for h in holders]) for d in range(r.spec.dp)]
        here = [s for s in tied.names if s in r.mine]
        if here:
            s = here[0]
            param = parameter_by_name(r.modules[s], tied.names[s])
            assert param is not None
            first = min(tied.names)
            out.append(TiedGroup(param, groups[r.replica], counted_here=first in r.mine))
    return out


def _data(r: Place, start: int) -> tuple[Iterator[Batch] | None, torch.Tensor | None]:
    """This replica's batches from step ``start`` (None on a rank that needs no data), and
    the first micro-batch's inputs to infer shapes from (on the first stage's rank)."""
    if not (r.holds_first or r.holds_last):
        return None, None
    spec = r.spec
    source = load_object(spec.data)()
    global_batches = batches(
        source, batch_size=spec.batch_size, steps=spec.steps, seed=spec.seed, start=start
    )
    data = (split_rows(b, spec.dp, r.replica) for b in global_batches)
    first = next(data, None)
    if first is None:
        return data, None
    rows = spec.batch_size // (spec.dp * spec.accumulate * spec.microbatches)
    return chain([first], data), first[0][:rows]


def _pipeline_stages(
    r: Place, layers: list[nn.Module], boundaries: list[Boundary], autocast: Any
) -> list[PipelineStage]:
    """This rank's stages: their layers as StageModules in ``r.modules``, each wrapped in a
    ``PipelineStage`` that knows the shapes it receives and sends."""
    spec = r.spec
    for s in r.mine:
        lo, hi = spec.bounds[s], spec.bounds[s + 1]
        r.modules[s] = StageModule(
            layers[lo:hi],
            stage=s,
            first=lo,
            inputs=boundaries[s].structure,
            autocast=autocast,
            recompute=bool(spec.recompute and spec.recompute[s]),
        ).to(r.device)
    return [
        PipelineStage(
            r.modules[s],
            s,
            r.plan.num_stages,
            r.device,
            input_args=boundaries[s].examples(r.device),
            output_args=boundaries[s + 1].examples(r.device),
            group=r.pp_group,
        )
        for s in r.mine
    ]


def run_rank(spec: RunSpec) -> dict[str, Any] | None:
    """Train steps up to ``spec.steps`` on this rank; rank 0 returns the gathered result.

    The process group must be initialised (torchrun + ``init_process_group``).
    """
    spec = _rank_zeros_plan(spec)
    r, layers = _setup(spec)
    rank, world = dist.get_rank(), dist.get_world_size()
    layout = _layout(spec, world)
    root = Path(spec.checkpoint_dir) if spec.checkpoint_dir else None
    box = [_checkpoint.latest(root) if (root and spec.resume and rank == 0) else None]
    dist.broadcast_object_list(box, src=0)
    start = int(box[0] or 0)

    k, m = spec.accumulate, spec.microbatches
    data, sample = _data(r, start)
    autocast = (
        partial(torch.autocast, r.device.type, dtype=torch.bfloat16)
        if spec.precision == "bf16"
        else None
    )
    boundaries = r.broadcast(  # pipeline rank 0 holds the first stage and its data
        infer_boundaries(layers, spec.bounds, sample, r.device, autocast)
        if r.holds_first and sample is not None
        else None
    )
    end = spec.steps if spec.until is None else min(spec.steps, spec.until)
    if start >= end and start < spec.steps:
        raise TrainError(
            f"no steps to run: the checkpoint in {root} is at step {start} and until={end}; "
            "pass a later --until (or none) to train further"
        )
    if boundaries is None:
        raise TrainError(
            f"no steps to run: the checkpoint in {root} is at step {start} of {spec.steps}; "
            "pass more steps to train further, or another checkpoint folder to start afresh"
            if start
            else f"no steps to run: steps={spec.steps}; pass steps of at least 1"
        )
    stages = _pipeline_stages(r, layers, boundaries, autocast)
    tied = _tied_groups(r, layers)
    del layers
    passes = [0]  # which pass of the schedule this is: step x accumulate + part
    recorder = Recorder(r.device)
    for stage in stages:
        seed_forwards(stage, lambda s, mb: stream_seed(spec.seed, passes[0], r.replica, s, mb))
        recorder.wrap(stage)
    loss_fn, last = _loss_fn(spec.loss), boundaries[-1].structure

    def loss(output: Any, target: torch.Tensor) -> torch.Tensor:
        tensors = output if isinstance(output, tuple) else (output,)
        if autocast is not None:  # the loss in full precision, as autocast training does
            tensors = tuple(t.float() if t.is_floating_point() else t for t in tensors)
        return loss_fn(unflatten(tensors, last), target)

    sched = _build_schedule(r.plan, stages, loss)
    params = list({id(p): p for s in r.mine for p in r.modules[s].parameters()}.values())
    optimizer = make_optimizer(spec.optimizer, params, lr=spec.lr, weight_decay=spec.weight_decay)
    lr_schedule = make_lr_schedule(
        optimizer, schedule=spec.lr_schedule, warmup=spec.warmup_steps, total=spec.steps
    )
    grad_step = GradientStep(
        params, tied, r.dp_group, r.pp_group if r.pp > 1 else None, r.device, spec.clip_grad
    )
    history: dict[str, list[Any]] = {"losses": [], "grad_norms": [], "lrs": [], "eval": []}
    if start:
        assert root is not None
        saved = _checkpoint.load(root, start, rank, layout)
        for s in r.mine:
            r.modules[s].load_state_dict(saved["modules"][s])
        optimizer.load_state_dict(saved["optimizer"])
        lr_schedule.load_state_dict(saved["lr_schedule"])
        torch.set_rng_state(saved["rng"])
        history = saved["history"]
    evaluate = evaluator(r, sched, spec)

    timelines: deque[tuple[int, list[Any]]] = deque(maxlen=TIMELINE_WINDOW - 1)
    first_timeline: tuple[int, list[Any]] | None = None
    walls: deque[float] = deque(maxlen=TIMELINE_WINDOW)
    snapshots: list[dict[str, torch.Tensor]] = []
    scale = 1.0 / (m * k * spec.dp)
    for step in range(start, end):
        batch = next(data) if data is not None else None
        optimizer.zero_grad()
        dist.barrier()
        recorder.reset()
        mb_losses: list[torch.Tensor] = []
        rows = spec.batch_size // (spec.dp * k)
        for part in range(k):
            passes[0] = step * k + part
            this_pass: list[torch.Tensor] = []
            args, kwargs = r.schedule_args(batch, slice(part * rows, (part + 1) * rows), this_pass)
            sched.step(*args, return_outputs=False, **kwargs)
            mb_losses += this_pass
        events = recorder.events()
        history["grad_norms"].append(grad_step.finish(scale))
        history["lrs"].append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr_schedule.step()
        walls.append(recorder.now())
        if first_timeline is None:
            first_timeline = (step, events)
        else:
            timelines.append((step, events))
        if r.holds_last:
            history["losses"].append(mean_over_replicas(r, mb_losses))
        if spec.record_parameters:
            snapshots.append(global_state(r.modules))
        done = step + 1
        if (spec.eval_every and done % spec.eval_every == 0) or done == end:
            result = evaluate()
            if result is not None:
                history["eval"].append((done, result))
        if spec.log_every and done % spec.log_every == 0 and r.holds_last and r.replica == 0:
            progress(spec, done, history, walls[-1])
        if root is not None and (
            (spec.checkpoint_every and done % spec.checkpoint_every == 0) or done == end
        ):
            state = {
                "modules": {s: r.modules[s].state_dict() for s in r.mine},
                "optimizer": optimizer.state_dict(),
                "lr_schedule": lr_schedule.state_dict(),
                "rng": torch.get_rng_state(),
                "history": history,
            }
            _checkpoint.save(root, done, rank, state)
            dist.barrier()
            if rank == 0:
                _checkpoint.complete(root, done, layout)
    kept = ([first_timeline] if first_timeline else []) + list(timelines)
    return gather(
        spec,
        r,
        {
            "rank": rank,
            "history": history if r.holds_last and r.replica == 0 else None,
            "timelines": kept,
            "snapshots": snapshots,
            "walls": list(walls),
            "final": global_state(r.modules) if r.replica == 0 else {},
            "rss_mib": rss_mib(),
        },
        start,
    )


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
        # now, while the group is whole: tearing it down fails the other ranks too. The
        # group is left as it is: destroying it could wait forever on peers blocked in a
        # collective, and this process's exit closes its connections anyway.
        write_rank_error(exc)
        raise
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
