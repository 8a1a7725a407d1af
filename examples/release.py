"""A release of the digits classifier, as code: ``conveyor deploy examples/release.py:release``.

Each run trains a new version on scikit-learn's digits, runs the checks in
``examples/release_checks.py`` against it (pytest, with ``CONVEYOR_CANDIDATE`` naming
it), gates it against the version ``digits@champion`` points at on held-out images,
and moves the alias when it passes. With a server of ``digits@champion`` running on
the same store, set ``CANARY=1`` to have the new version go through a canary first.
``examples/ci/release.yml`` runs this on every push.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import conveyor as cv
from conveyor.lifecycle import CanaryPolicy, Candidate, Release

HERE = Path(__file__).parent


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    train, held = order[:1200], order[1200:]
    return x[train] / 16.0, y[train], x[held] / 16.0, y[held]


def build(candidate: Candidate) -> cv.models.ModelVersion:
    x, y, _, _ = data()
    c = float(os.environ.get("DIGITS_C", "1.0"))  # what a push might change
    model = LogisticRegression(C=c, max_iter=500).fit(x, y)
    return cv.models.register(
        "digits",
        model,
        metrics={"train_accuracy": float(model.score(x, y))},
        signature={"shape": [64]},
        description=f"logistic regression, C={c}",
    )


def holdout(candidate: Candidate) -> tuple[np.ndarray, np.ndarray]:
    _, _, x, y = data()
    return x, y


release = Release(
    "digits",
    build=build,
    tests=[str(HERE / "release_checks.py")],
    holdout=holdout,
    # not worse than the champion by more than a point (95% interval), and at least 90%
    gate={"metric": "accuracy", "min_effect": -0.01, "minimum": 0.9},
    reference=lambda c: data()[0],
    canary=CanaryPolicy(steps=(0.05, 0.25, 0.5)) if os.environ.get("CANARY") else None,
)
