"""A small MLP whose per-layer fixed costs dominate 32-row micro-batches: 8 layers of 128 x 128."""

import torch
from torch import nn

WIDTH = 128
DEPTH = 8
CLASSES = 10


def make_model() -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    layers.append(nn.Linear(WIDTH, CLASSES))
    return nn.Sequential(*layers)


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, WIDTH, generator=gen)
    return x, torch.randint(0, CLASSES, (2048,), generator=gen)
