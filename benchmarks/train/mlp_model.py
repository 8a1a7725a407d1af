"""An MLP large enough that compute dominates: width x width layers, ReLU between."""

import torch
from torch import nn

WIDTH = 1024
DEPTH = 8
CLASSES = 10


def make_model(width: int = WIDTH, depth: int = DEPTH) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*layers)


def make_data(width: int = WIDTH) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, width, generator=gen)
    return x, torch.randint(0, CLASSES, (4096,), generator=gen)
