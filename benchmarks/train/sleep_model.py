"""Stages emulated by sleeping: one sleep layer per stage, so ranks use no CPU."""

import torch
from torch import nn

from conveyor.train._emulate import sleep_layer


def make_model(costs_ms: list[list[float]]) -> nn.Sequential:
    """One layer per stage; costs_ms[s] = [F, I, W] milliseconds."""
    return nn.Sequential(*(sleep_layer(f, i, w) for f, i, w in costs_ms))


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(512, 4, generator=gen), torch.randn(512, 4, generator=gen)
