"""Layers that cost a known time and no CPU: sleep F ms forward, I ms input-backward, W ms weight-backward.

For testing schedules and the profiler, and for benchmarks that emulate stages
on a machine with fewer cores than ranks: a sleeping rank leaves the CPU to the
others, so measured bubbles depend on the schedule alone.

The input path sleeps in forward and in its backward (I); a scalar weight on a
side branch sleeps in its backward only, which autograd runs when weight
gradients are asked for (W), or with the input path in a full backward (B = I + W).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from conveyor.train._errors import require_torch

__all__ = ["sleep_layer"]


def sleep_layer(
    forward_ms: float,
    backward_ms: float,
    weight_ms: float = 0.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """An ``nn.Module`` computing ``x + 0·w`` that sleeps the given times in F, I and W.

    ``sleep`` takes seconds; a fake clock's ``sleep`` (advancing it) makes the times
    exact for a profiler reading that clock.
    """
    require_torch()
    import torch
    from torch import nn

    class _SleepInput(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            sleep(forward_ms / 1e3)
            return x.clone()

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            sleep(backward_ms / 1e3)
            return grad

    class _SleepWeight(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
            return w * 0

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            sleep(weight_ms / 1e3)
            return grad.sum().reshape(()) * 0

    class SleepLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(()))
            self.times_ms = (forward_ms, backward_ms, weight_ms)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not x.requires_grad:
                # a real first stage's backward still runs through its layers; make
                # autograd reach the input path here too, so B sleeps I + W
                x = x.detach().requires_grad_()
            return _SleepInput.apply(x) + _SleepWeight.apply(self.weight)

        def extra_repr(self) -> str:
            return "F={} I={} W={} ms".format(*self.times_ms)

    return SleepLayer()
