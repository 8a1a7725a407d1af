"""Optimizer, learning-rate schedule, and the gradient step across ranks.

After the micro-batches of a step (and of every accumulated step) each rank holds
the gradients of its stages' parameters summed over its micro-batches. One
optimizer step then needs, in this order:

1. tied parameters: the copies on different ranks each hold part of the gradient;
   sum them over the ranks that hold a copy (as Megatron does for embeddings), so
   every copy takes the same step and they stay equal;
2. data parallelism: sum each stage's gradients over its replicas;
3. one scale by 1 / (micro-batches x accumulated steps x replicas), which makes the
   gradient the mean over the whole global batch, as one process computes it;
4. clipping by the global norm over every parameter of the model, each counted
   once (a tied parameter on its first stage only), summed over the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from conveyor.train._errors import TrainError

__all__ = ["GradientStep", "TiedGroup", "make_lr_schedule", "make_optimizer"]

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "linear")


def make_optimizer(
    name: str, params: Sequence[nn.Parameter], *, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW over ``params``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise TrainError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, *, schedule: str, warmup: int, total: int) -> float:
    """The multiplier of the base learning rate at ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise TrainError(f"unknown lr schedule {schedule!r}; use one of {', '.join(LR_SCHEDULES)}")


def make_lr_schedule(
    optimizer: torch.optim.Optimizer, *, schedule: str, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, schedule=schedule, warmup=warmup, total=total)  # an unknown name fails here
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, schedule=schedule, warmup=warmup, total=total)
    )


@dataclass
class TiedGroup:
    """One tied parameter on this rank, and the group of ranks holding a copy."""

    param: nn.Parameter
    group: Any
    counted_here: bool  # its first stage is on this rank: its norm counts here


@dataclass
class GradientStep:
    """Turns the summed gradients of a step into the mean over the global batch, clipped."""

    params: list[nn.Parameter]  # this rank's, each once
    tied: list[TiedGroup]
    dp_group: Any | None  # None: no data parallelism
    pp_group: Any | None  # None: the pipeline is one rank
    device: torch.device
    clip: float | None = None

    def finish(self, scale: float) -> float:
        """Sync, scale by ``scale`` and clip the gradients; the global norm before clipping."""
        for tied in self.tied:
            dist.all_reduce(_grad(tied.param), group=tied.group)
        grads = [_grad(p) for p in self.params]
        if self.dp_group is not None and grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self.dp_group)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        for g in grads:
            g.mul_(scale)
        skip = {id(t.param) for t in self.tied if not t.counted_here}
        squares = torch.zeros((), dtype=torch.float64, device=self.device)
        for p, g in zip(self.params, grads, strict=True):
            if id(p) not in skip:
                squares += g.detach().double().pow(2).sum()
        if self.pp_group is not None:
            dist.all_reduce(squares, group=self.pp_group)
        norm = float(squares.sqrt())
        if self.clip is not None and norm > self.clip:
            factor = self.clip / (norm + 1e-6)
            for g in grads:
                g.mul_(factor)
        return norm


def _grad(param: nn.Parameter) -> torch.Tensor:
    if param.grad is None:  # unused on this rank this step: it still takes part in the sums
        param.grad = torch.zeros_like(param)
    return param.grad
