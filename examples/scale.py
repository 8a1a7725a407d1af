"""One pipeline file for a laptop and a cluster: only the executor changes.

    tokenize   map, 2 workers     split a sentence into words
    score      map, class stage   a "model" made once per worker (a word-weight table)
    top        fold               the best-scored sentence of all

Run it on threads (the file's own choice), then on processes or on Ray, unchanged::

    conveyor run examples/scale.py:pipeline
    conveyor run examples/scale.py:pipeline --config examples/scale-processes.toml
    conveyor run examples/scale.py:pipeline --ray local      # or --ray HEAD:6379

``--ray`` moves every stage to Ray actors; ``resources=`` says what each worker needs
there (here one CPU for the scorer).
"""

from __future__ import annotations

import hashlib

import conveyor as cv

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
]


def sentences(n: int = 400):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 9))


@cv.stage(workers=2)
def tokenize(sentence: str) -> list[str]:
    return sentence.split()


class Scorer:
    """Loads its weights once per worker, as a model would."""

    def __init__(self) -> None:
        self.weights = {w: int(hashlib.sha256(w.encode()).hexdigest()[:4], 16) for w in WORDS}

    def __call__(self, words: list[str]) -> tuple[int, str]:
        return sum(self.weights[w] for w in words), " ".join(words)


score = cv.stage(Scorer, name="score", workers=2, cpus=1)


def keep_best(best: tuple[int, str], scored: tuple[int, str]) -> tuple[int, str]:
    return max(best, scored)


# A fold: chunks are folded in parallel and merged with `combine`, in any order.
top = cv.stage(keep_best, name="top", kind="fold", initial=(0, ""), combine=max)


pipeline = cv.Pipeline("scale", [tokenize, score, top], source=sentences)
