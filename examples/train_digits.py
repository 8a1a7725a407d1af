"""Pipeline-parallel training of an MLP on scikit-learn's bundled digits (8x8 images, 10 classes).

    conveyor train examples/train_digits.py:make_model --stages 2 --schedule auto --microbatches 8
    python examples/train_digits.py          # the same through the Python API, then test accuracy

make_data returns the training split (1 500 images); held-out accuracy is measured on the
other 297 after loading the pipelined run's weights back into one model.
"""

from __future__ import annotations

import torch
from torch import nn

TRAIN_ROWS = 1500


def make_model() -> nn.Sequential:
    """Unequal layers on purpose: a narrow input layer, three wide ones, a small head."""
    return nn.Sequential(
        nn.Linear(64, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The training split: (images as 64 floats in [0, 1], labels)."""
    x, y = _digits()
    return x[:TRAIN_ROWS], y[:TRAIN_ROWS]


def make_test_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _digits()
    return x[TRAIN_ROWS:], y[TRAIN_ROWS:]


def main() -> None:
    from conveyor.train import train

    report = train(
        make_model, make_data, stages=2, schedule="auto", microbatches=8, batch_size=256, steps=100,
        optimizer="adam", lr=1e-3,
    )  # fmt: skip
    print(report.summary())
    model = make_model()
    model.load_state_dict(report.state_dict)
    x, y = make_test_data()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"\nheld-out accuracy after {len(report.losses)} pipelined steps: {accuracy:.1%}")


if __name__ == "__main__":
    main()
