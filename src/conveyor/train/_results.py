"""What a rank reports: the loss over replicas, evaluations, the progress line, the result.

Rank 0 gathers every rank's records into one result: losses, gradient norms and
learning rates per step, evaluations, the action timelines of the first step and
of the latest ones (a bounded window), each rank's memory, and the final weights
keyed as in the whole model's state dict.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from conveyor.train._data import split_rows
from conveyor.train._errors import TrainError
from conveyor.train._place import Place
from conveyor.train._rank_errors import PROGRESS_FILE, RUN_DIR_VAR
from conveyor.train._spec import RunSpec, load_object

__all__ = ["evaluator", "gather", "mean_over_replicas", "progress", "rss_mib"]


def rss_mib() -> float:
    """This process's resident memory now, MiB (Linux; 0.0 where /proc is absent)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def mean_over_replicas(r: Place, mb_losses: list[torch.Tensor]) -> float:
    value = torch.stack([t.detach().float() for t in mb_losses]).mean()
    if r.dp_group is not None:
        dist.all_reduce(value, group=r.dp_group)
        value /= r.spec.dp
    return float(value)


def progress(spec: RunSpec, done: int, history: dict[str, list[Any]], seconds: float) -> None:
    """One line on the step just done; the launcher relays it to the caller's stderr."""
    line = (
        f"step {done}/{spec.steps}  loss {history['losses'][-1]:.4f}  "
        f"lr {history['lrs'][-1]:.3g}  grad norm {history['grad_norms'][-1]:.3g}  "
        f"{seconds * 1e3:.1f} ms/step"
    )
    if history["eval"] and history["eval"][-1][0] == done:
        line += f"  eval loss {history['eval'][-1][1]:.4f}"
    run_dir = os.environ.get(RUN_DIR_VAR)
    if run_dir is None:  # started by hand, not by launch()
        print(line, file=sys.stderr, flush=True)
        return
    with open(os.path.join(run_dir, PROGRESS_FILE), "a") as f:
        f.write(line + "\n")


def evaluator(r: Place, sched: Any, spec: RunSpec) -> Callable[[], float | None]:
    """A forward-only pass over the held-out data; the mean loss on the last stage's ranks."""
    if spec.eval_data is None:
        return lambda: None
    # like the training data, read only where it is used: the first and last stages
    held_out = load_object(spec.eval_data)() if r.holds_first or r.holds_last else None
    if held_out is not None and int(held_out[0].shape[0]) < spec.batch_size:
        raise TrainError(
            f"the evaluation data has {int(held_out[0].shape[0])} rows, fewer than one batch "
            f"of {spec.batch_size}"
        )
    count = r.broadcast(None if held_out is None else int(held_out[0].shape[0]) // spec.batch_size)
    k = spec.accumulate
    rows = spec.batch_size // (spec.dp * k)

    def run() -> float | None:
        for module in r.modules.values():
            module.eval()
        losses: list[torch.Tensor] = []
        try:
            with torch.no_grad():
                for b in range(count):
                    part = slice(b * spec.batch_size, (b + 1) * spec.batch_size)
                    batch = None
                    if held_out is not None:
                        batch = split_rows(
                            (held_out[0][part], held_out[1][part]), spec.dp, r.replica
                        )
                    for p in range(k):
                        sub = slice(p * rows, (p + 1) * rows)
                        this_pass: list[torch.Tensor] = []
                        args, kw = r.schedule_args(batch, sub, this_pass)
                        sched.eval(*args, return_outputs=False, **kw)
                        losses += this_pass
        finally:
            for module in r.modules.values():
                module.train()
        return mean_over_replicas(r, losses) if r.holds_last else None

    return run


def gather(spec: RunSpec, r: Place, mine: dict[str, Any], start: int) -> dict[str, Any] | None:
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: list[Any] = [None] * world if rank == 0 else []
    dist.gather_object(mine, gathered if rank == 0 else None, dst=0)
    if rank != 0:
        return None
    history = next(g["history"] for g in gathered if g["history"] is not None)
    steps = [step for step, _ in gathered[0]["timelines"]]
    params_by_step: list[dict[str, torch.Tensor]] = [{} for _ in gathered[0]["snapshots"]]
    final: dict[str, torch.Tensor] = {}
    for g in gathered:
        for i, snap in enumerate(g["snapshots"]):
            params_by_step[i].update(snap)
        final.update(g["final"])
    pipeline = gathered[: r.pp]  # replica 0's ranks
    return {
        "spec": asdict(spec),
        "final_state": final,
        "ranks": r.pp,
        "replicas": spec.dp,
        "start": start,
        "losses": history["losses"],
        "grad_norms": history["grad_norms"],
        "lrs": history["lrs"],
        "eval": history["eval"],
        "timeline_steps": steps,
        "timelines": [[dict(g["timelines"])[s] for g in pipeline] for s in steps],
        # from the barrier to the end of the optimizer step, on the slowest rank
        "step_seconds": [max(w) for w in zip(*(g["walls"] for g in gathered), strict=True)],
        "parameters": params_by_step if spec.record_parameters else None,
        "rss_mib": [g["rss_mib"] for g in gathered],
    }
