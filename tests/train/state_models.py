"""Models with state, loaded by path on every rank: BatchNorm, tied weights, dropout,
tuples and dicts between layers, and their data."""

import torch
from torch import nn

WIDTH = 8


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(256, WIDTH, generator=gen) * 3 + 1  # far from BatchNorm's initial statistics
    y = (x[:, 0] > 1).long() + 2 * (x[:, 1] > 1).long()
    return x, y


def make_eval_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_data()
    return x[:96], y[:96]


def make_batchnorm() -> nn.Sequential:
    """Cut [0, 3) [3, 7): each stage has a BatchNorm."""
    return nn.Sequential(
        nn.Linear(WIDTH, WIDTH),
        nn.BatchNorm1d(WIDTH),
        nn.ReLU(),
        nn.Linear(WIDTH, WIDTH),
        nn.BatchNorm1d(WIDTH),
        nn.Tanh(),
        nn.Linear(WIDTH, 4),
    )


class Draw(nn.Module):
    """Identity that keeps the random numbers its last forward drew, and applies dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("last", torch.zeros(16))
        self.dropout = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last.copy_(torch.rand(16))
        return self.dropout(x)


def make_dropout() -> nn.Sequential:
    """Cut [0, 3) [3, 6): a Draw on each stage."""
    return nn.Sequential(
        nn.Linear(WIDTH, WIDTH),
        Draw(),
        nn.ReLU(),
        nn.Linear(WIDTH, WIDTH),
        Draw(),
        nn.Linear(WIDTH, 4),
    )


class Split(nn.Module):
    """Returns (hidden, skip) or {"hidden": ..., "skip": ...}."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(WIDTH, WIDTH)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        h, skip = torch.relu(self.linear(x)), x * 0.5
        return {"hidden": h, "skip": skip} if self.as_dict else (h, skip)


class Join(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(WIDTH, WIDTH)

    def forward(self, value):  # type: ignore[no-untyped-def]
        h, skip = (value["hidden"], value["skip"]) if isinstance(value, dict) else value
        return torch.tanh(self.linear(h) + skip)


def make_tuple() -> nn.Sequential:
    """Cut [0, 2) [2, 4): a tuple crosses the cut."""
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), Split(False), Join(), nn.Linear(WIDTH, 4))


def make_dict() -> nn.Sequential:
    """Cut [0, 2) [2, 4): a dict crosses the cut."""
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), Split(True), Join(), nn.Linear(WIDTH, 4))


VOCAB, SEQ, DIM = 16, 6, 8


class Head(nn.Module):
    """The output layer, tied to the embedding's weight."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.embedding.weight.T


def make_tied() -> nn.Sequential:
    """Cut [0, 2) [2, 4): the embedding on stage 0, the tied head on stage 1."""
    embedding = nn.Embedding(VOCAB, DIM)
    return nn.Sequential(embedding, nn.Linear(DIM, DIM), nn.Tanh(), Head(embedding))


def make_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, VOCAB, (128, SEQ), generator=gen)
    return x, (x * 3 + 1) % VOCAB


def token_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))


def make_broken() -> nn.Sequential:
    """Layer 3 expects 5 features and gets 8."""
    return nn.Sequential(
        nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.Linear(5, 4)
    )


def make_wide() -> nn.Sequential:
    return nn.Sequential(nn.Linear(256, 16), nn.ReLU(), nn.Linear(16, 2))


def make_big_table() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2048, 256, generator=gen)
    return x, (x[:, 0] > 0).long()


def _feed_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(i)
    x = torch.randn(32, 256, generator=gen)
    return x, (x[:, 0] > 0).long()


def make_conveyor_feed():  # type: ignore[no-untyped-def]
    """Batches made by a conveyor pipeline (two worker threads), streamed without end."""
    import itertools

    import conveyor as cv

    pipe = cv.Pipeline("feed", [cv.Stage(_feed_batch, executor="threads", workers=2)])

    def feed():  # type: ignore[no-untyped-def]
        with pipe.stream(itertools.count(), ordered=True) as run:
            yield from run

    return feed()
