"""What one arm of a rollout did: requests, errors, a latency histogram, the answers.

The server keeps one :class:`ArmStats` per arm (the champion, the canary candidate, the
shadow) and per step of a rollout, and writes it to the run store every few seconds;
the rollout's controller reads them back and judges. Everything here is fixed in size
whatever the number of requests: latencies fall into :data:`LATENCY_EDGES`' bins, and
at most :data:`MAX_LABELS` distinct answers are counted by name (the rest as
``"other"``).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

# Seconds: 0.1 ms to 100 s, eight bins per factor of ten (each 33% wider than the last).
LATENCY_EDGES: tuple[float, ...] = tuple(10 ** (-4 + i / 8) for i in range(6 * 8 + 1))
MAX_LABELS = 100
OTHER = "other"


def label_of(answer: Any) -> str | None:
    """The class an answer names, for comparing answers' distributions and agreement:
    the answer itself when it is a bool, int or str; a dict's ``label``, ``prediction``,
    ``class`` or ``outputs``; the index of the largest of a list of numbers (scores).
    None when no label can be read (the answer is not counted by label)."""
    if isinstance(answer, dict):
        for key in ("label", "prediction", "class", "outputs"):
            if key in answer:
                return label_of(answer[key])
        return None
    if isinstance(answer, (bool, int, str)):
        return str(answer)
    if isinstance(answer, float):
        return None if math.isnan(answer) else repr(round(answer, 6))
    if isinstance(answer, (list, tuple)) and answer:
        if len(answer) == 1:
            return label_of(answer[0])
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in answer):
            return str(max(range(len(answer)), key=answer.__getitem__))
    return None


@dataclass
class ArmStats:
    """Counts of one arm over one step of a rollout (see the module docstring)."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES) + 1))
    predictions: dict[str, int] = field(default_factory=dict)
    compared: int = 0  # shadow: answers compared with the champion's
    agreed: int = 0  # shadow: of those, the same label

    def observe(self, latency: float, *, error: bool = False, label: str | None = None) -> None:
        """One request: its latency in seconds, whether it failed, the answer's label."""
        self.requests += 1
        if error:
            self.errors += 1
        self.latency[bisect.bisect_right(LATENCY_EDGES, latency)] += 1
        if label is not None and not error:
            if label not in self.predictions and len(self.predictions) >= MAX_LABELS:
                label = OTHER
            self.predictions[label] = self.predictions.get(label, 0) + 1

    def compare(self, same: bool) -> None:
        """One answer compared with the champion's answer to the same request."""
        self.compared += 1
        if same:
            self.agreed += 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float:
        """The latency below which ``q`` of the requests fell (the upper edge of the
        bin the ``q``-th request lies in; 0.0 with no requests)."""
        total = sum(self.latency)
        if total == 0:
            return 0.0
        rank, seen = q * total, 0
        for i, count in enumerate(self.latency):
            seen += count
            if seen >= rank and count:
                return LATENCY_EDGES[min(i, len(LATENCY_EDGES) - 1)]
        return LATENCY_EDGES[-1]

    def slower_than(self, seconds: float) -> int:
        """How many requests took longer than ``seconds`` (whole bins above it)."""
        return sum(self.latency[bisect.bisect_right(LATENCY_EDGES, seconds) + 1 :])

    def merge(self, other: ArmStats) -> ArmStats:
        """The sum of two windows (a new object)."""
        out = ArmStats(
            self.requests + other.requests,
            self.errors + other.errors,
            [a + b for a, b in zip(self.latency, other.latency, strict=True)],
            dict(self.predictions),
            self.compared + other.compared,
            self.agreed + other.agreed,
        )
        for label, count in other.predictions.items():
            out.predictions[label] = out.predictions.get(label, 0) + count
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency": list(self.latency),
            "predictions": dict(self.predictions),
            "compared": self.compared,
            "agreed": self.agreed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmStats:
        latency = list(data.get("latency") or [])
        size = len(LATENCY_EDGES) + 1
        return cls(
            int(data.get("requests", 0)),
            int(data.get("errors", 0)),
            (latency + [0] * size)[:size],
            {str(k): int(v) for k, v in (data.get("predictions") or {}).items()},
            int(data.get("compared", 0)),
            int(data.get("agreed", 0)),
        )
