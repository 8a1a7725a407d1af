"""A small deterministic model and data set for the multi-rank tests (loaded by path)."""

import torch
from torch import nn

WIDTH = 8
LAYERS = 16


def make_model() -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(LAYERS // 2):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh() if i % 2 else nn.ReLU()]
    layers[-1] = nn.Linear(WIDTH, 4)
    return nn.Sequential(*layers)


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(256, WIDTH, generator=gen)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return x, y
