"""Checks a release runs on its candidate (pytest, from ``examples/release.py``):
``CONVEYOR_CANDIDATE`` names the version under test, ``CONVEYOR_STORE`` its store."""

from __future__ import annotations

import os

import numpy as np

import conveyor as cv


def candidate() -> object:
    return cv.models.load(os.environ.get("CONVEYOR_CANDIDATE", "digits"))


def test_it_answers_a_batch_with_one_digit_per_image() -> None:
    answers = candidate().predict(np.zeros((5, 64)))  # type: ignore[attr-defined]
    assert answers.shape == (5,) and set(answers.tolist()) <= set(range(10))


def test_it_declares_its_input() -> None:
    version = cv.models.get(os.environ.get("CONVEYOR_CANDIDATE", "digits"))
    assert version.signature == {"shape": [64]}
