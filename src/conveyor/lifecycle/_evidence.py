"""The statistics the canary and shadow judges stand on, each a pure function of counts:
Wald's sequential probability ratio test on Bernoulli draws, Wilson's score interval,
the chi-squared test of a 2 x K table, the Jensen-Shannon distance, and quantiles and
counts read from a latency histogram.

Pure Python (``math`` and ``statistics``): the controller that calls the judges every
few seconds needs no extra.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from conveyor.lifecycle._arms import LATENCY_EDGES, ArmStats


@dataclass(frozen=True)
class Sprt:
    """Wald's SPRT of H0 ``p = p0`` against H1 ``p = p1`` (``p1 > p0``) on ``hits`` of
    ``n`` Bernoulli draws. ``llr`` is the log-likelihood ratio of H1 to H0; the test
    rejects H0 when it reaches ``upper = log((1 - beta) / alpha)`` and accepts H0 when it
    falls to ``lower = log(beta / (1 - alpha))``; ``decision`` is ``"breach"`` (H1),
    ``"pass"`` (H0) or ``"pending"``."""

    hits: float
    n: int
    p0: float
    p1: float
    llr: float
    lower: float
    upper: float

    @property
    def decision(self) -> str:
        if self.llr >= self.upper:
            return "breach"
        if self.llr <= self.lower:
            return "pass"
        return "pending"

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": round(self.hits, 3),
            "n": self.n,
            "rate": _round(self.hits / self.n if self.n else 0.0),
            "p0": _round(self.p0),
            "p1": _round(self.p1),
            "llr": _round(self.llr),
            "lower": _round(self.lower),
            "upper": _round(self.upper),
            "decision": self.decision,
        }


def sprt(hits: float, n: int, *, p0: float, p1: float, alpha: float, beta: float) -> Sprt:
    """The SPRT of ``hits`` in ``n`` draws (see :class:`Sprt`). ``p0`` and ``p1`` are
    kept inside (0, 1) so that the ratio stays finite."""
    tiny = 1e-9
    p0 = min(max(p0, tiny), 1 - 2 * tiny)
    p1 = min(max(p1, p0 + tiny), 1 - tiny)
    llr = hits * math.log(p1 / p0) + (n - hits) * math.log((1 - p1) / (1 - p0))
    return Sprt(hits, n, p0, p1, llr, math.log(beta / (1 - alpha)), math.log((1 - beta) / alpha))


def z_of(alpha: float) -> float:
    """The one-sided normal quantile for ``alpha`` (1.645 for 0.05)."""
    return NormalDist().inv_cdf(1 - alpha)


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion at ``z`` standard errors; (0, 1) when
    ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X chi-squared with ``df`` degrees of freedom, in closed form (the
    regularized upper incomplete gamma function at integer and half-integer orders)."""
    if df < 1:
        raise ValueError(f"df must be at least 1, not {df}")
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:
        total, start = 0.0, 0.0  # terms half**i / i!, i = 0 .. df/2 - 1
        count = df // 2
    else:
        total = math.erfc(math.sqrt(half))  # terms half**(i+1/2) / Gamma(i+3/2)
        start, count = 0.5, (df - 1) // 2
    log_half = math.log(half)
    for i in range(count):
        order = start + i
        total += math.exp(order * log_half - half - math.lgamma(order + 1))
    return min(1.0, total)


def chi2_table(first: dict[str, int], second: dict[str, int]) -> tuple[float, int, float]:
    """Pearson's chi-squared test of homogeneity on two rows of counts by label:
    ``(statistic, degrees of freedom, p-value)``. Labels neither row has are dropped;
    with fewer than two labels left the rows cannot differ: ``(0.0, 0, 1.0)``."""
    labels = sorted(k for k in set(first) | set(second) if first.get(k, 0) + second.get(k, 0))
    n1, n2 = sum(first.get(k, 0) for k in labels), sum(second.get(k, 0) for k in labels)
    if len(labels) < 2 or not n1 or not n2:
        return 0.0, 0, 1.0
    total = n1 + n2
    statistic = 0.0
    for label in labels:
        column = first.get(label, 0) + second.get(label, 0)
        for row_total, observed in ((n1, first.get(label, 0)), (n2, second.get(label, 0))):
            expected = row_total * column / total
            statistic += (observed - expected) ** 2 / expected
    df = len(labels) - 1
    return statistic, df, chi2_sf(statistic, df)


def js_distance(first: dict[str, int], second: dict[str, int]) -> float:
    """The Jensen-Shannon distance (the square root of the divergence, base 2: 0 for
    the same distribution, 1 for disjoint ones) between two distributions of counts."""
    n1, n2 = sum(first.values()), sum(second.values())
    if not n1 or not n2:
        return 0.0
    divergence = 0.0
    for label in set(first) | set(second):
        p, q = first.get(label, 0) / n1, second.get(label, 0) / n2
        m = (p + q) / 2
        if p:
            divergence += p * math.log2(p / m) / 2
        if q:
            divergence += q * math.log2(q / m) / 2
    return math.sqrt(max(0.0, divergence))


def latency_quantile(arm: ArmStats, q: float) -> float:
    """The latency below which ``q`` of ``arm``'s requests fell, interpolated
    log-linearly inside its histogram bin (each bin is 33% wide: taking its upper edge,
    as :meth:`ArmStats.quantile` does, would loosen the latency check by up to a third)."""
    total = sum(arm.latency)
    if total == 0:
        return 0.0
    rank, seen = q * total, 0
    for i, count in enumerate(arm.latency):
        if count and seen + count >= rank:
            if i >= len(LATENCY_EDGES):
                return LATENCY_EDGES[-1]
            share = (rank - seen) / count
            upper = LATENCY_EDGES[i]
            if i == 0:
                return upper * share
            lower = LATENCY_EDGES[i - 1]
            return lower * (upper / lower) ** share
        seen += count
    return LATENCY_EDGES[-1]


def count_slower(arm: ArmStats, seconds: float) -> float:
    """How many of ``arm``'s requests took longer than ``seconds``: the bins above it
    whole, the bin it falls in by the log-linear share above it."""
    i = bisect.bisect_right(LATENCY_EDGES, seconds)
    whole = float(sum(arm.latency[i + 1 :]))
    if i >= len(LATENCY_EDGES) or not arm.latency[i]:
        return whole
    upper = LATENCY_EDGES[i]
    if i == 0:
        above = (upper - seconds) / upper
    else:
        lower = LATENCY_EDGES[i - 1]
        above = math.log(upper / seconds) / math.log(upper / lower)
    return whole + arm.latency[i] * min(1.0, max(0.0, above))


def _round(value: float) -> float:
    return round(value, 6)
