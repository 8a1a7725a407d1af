"""Fake clocks and layers of known cost for the profiler and planner tests (torch needed)."""

from __future__ import annotations

import random

import torch
from torch import nn

from conveyor.train._emulate import sleep_layer


class FakeClock:
    """Seconds that pass only when a layer sleeps: the profiler's arithmetic, exactly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class NoisyClock(FakeClock):
    """A fake clock whose every reading is off by up to ``noise`` seconds, as on a busy machine."""

    def __init__(self, noise: float = 2e-4, seed: int = 0) -> None:
        super().__init__()
        self.noise = noise
        self.rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now + self.rng.uniform(0, self.noise)


def affine_layer(
    clock: FakeClock, fixed_ms: tuple[float, float, float], per_row_ms: tuple[float, float, float]
) -> nn.Module:
    """A layer whose F, I and W each sleep fixed + per_row x rows milliseconds on ``clock``."""
    (ff, fi, fw), (rf, ri, rw) = fixed_ms, per_row_ms

    def ms(fixed: float, per_row: float, rows: int) -> float:
        return (fixed + per_row * rows) / 1e3

    class _Input(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.rows = x.shape[0]
            clock.sleep(ms(ff, rf, x.shape[0]))
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            clock.sleep(ms(fi, ri, ctx.rows))
            return grad

    class _Weight(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w, rows):
            ctx.rows = rows
            return w * 0

        @staticmethod
        def backward(ctx, grad):
            clock.sleep(ms(fw, rw, ctx.rows))
            return grad.sum().reshape(()) * 0, None

    class AffineLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return _Input.apply(x) + _Weight.apply(self.weight, x.shape[0])

    return AffineLayer()


class Pair(nn.Module):
    """x -> (h, mask): a sleeping layer that also returns a boolean mask."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.inner = sleep_layer(2, 3, 1, sleep=clock.sleep)

    def forward(self, x):
        return self.inner(x), x > 0


class Masked(nn.Module):
    """(h, mask) -> {"hidden": h' * mask, "mask": mask}."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.inner = sleep_layer(4, 5, 2, sleep=clock.sleep)

    def forward(self, inputs):
        hidden, mask = inputs
        return {"hidden": self.inner(hidden) * mask, "mask": mask}


class Head(nn.Module):
    """{"hidden": h, ...} -> logits."""

    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, classes)

    def forward(self, inputs):
        return self.linear(inputs["hidden"])
