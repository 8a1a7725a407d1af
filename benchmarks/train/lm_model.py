"""A model with unequal layers: a token embedding, a stack of MLP blocks, a large vocabulary head."""

import torch
from torch import nn

VOCAB, DIM, BLOCKS, SEQ = 8192, 256, 6, 16


class Block(nn.Module):
    """Residual MLP block: x + W2 gelu(W1 x)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(x)))


def make_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Embedding(VOCAB, DIM), *(Block(DIM) for _ in range(BLOCKS)), nn.Linear(DIM, VOCAB)
    )


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (1024, SEQ + 1), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
