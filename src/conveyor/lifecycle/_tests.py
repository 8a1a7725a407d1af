"""The statistical tests and distances of a drift check, on binned counts.

Pure functions of count vectors: the reference's and the window's counts over the same
bins (or categories). Nothing here sees a row.

- :func:`binned_ks`: the two-sample Kolmogorov-Smirnov D measured at the bin edges; its
  p-value from the Kolmogorov distribution of D with the effective n = n*m/(n+m).
  D measured at the edges is <= the exact D, so the p-value is conservative.
- :func:`chi2_counts`: Pearson's chi-squared on the 2 x k contingency table (no Yates
  correction), categories empty on both sides dropped.
- :func:`js_distance`: the Jensen-Shannon distance (base 2, in [0, 1]).
- :func:`binned_wasserstein`: the 1-Wasserstein distance between the binned CDFs
  (trapezoids between the edges).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def binned_ks(ref: Any, win: Any) -> tuple[float, float]:
    """``(D, p)`` for two count vectors over the same ordered bins."""
    n, m = float(ref.sum()), float(win.sum())
    if n == 0 or m == 0:
        return 0.0, 1.0
    d = float(np.max(np.abs(np.cumsum(ref) / n - np.cumsum(win) / m)))
    en = n * m / (n + m)
    return d, ks_p_value(d, en)


def ks_p_value(d: float, en: float) -> float:
    """P(D >= d) for the Kolmogorov distribution with effective sample size ``en``:
    exact (scipy's kstwo) at the rounded n, as scipy's ks_2samp does asymptotically."""
    if d <= 0:
        return 1.0
    return float(min(1.0, max(0.0, stats.kstwo.sf(d, max(1, round(en))))))


def chi2_counts(ref: Any, win: Any) -> tuple[float, float]:
    """``(chi2, p)`` for the 2 x k table of two count vectors over the same categories."""
    table = np.vstack([ref, win]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or (rows == 0).any():
        return 0.0, 1.0
    expected = np.outer(rows, table.sum(axis=0)) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    return stat, float(stats.chi2.sf(stat, table.shape[1] - 1))


def js_distance(ref: Any, win: Any) -> float:
    """The Jensen-Shannon distance between two count vectors, base 2: 0 for the same
    shares, 1 for shares with no bin in common."""
    p = ref / max(float(ref.sum()), 1.0)
    q = win / max(float(win.sum()), 1.0)
    mid = (p + q) / 2
    div = (_kl(p, mid) + _kl(q, mid)) / 2
    return float(np.sqrt(max(div, 0.0)))


def _kl(p: Any, q: Any) -> float:
    used = p > 0
    return float(np.sum(p[used] * np.log2(p[used] / q[used])))


def binned_wasserstein(edges: Any, ref: Any, win: Any, lo: float, hi: float) -> float:
    """W1 between two distributions binned at ``edges`` (bin k is [edges[k-1], edges[k]),
    the outer bins end at ``lo`` and ``hi``): the area between the two CDFs, each
    taken linear between the edges."""
    n, m = float(ref.sum()), float(win.sum())
    if n == 0 or m == 0 or not hi > lo:
        return 0.0
    grid = np.concatenate([[lo], np.clip(edges, lo, hi), [hi]])
    gap = np.concatenate([[0.0], np.cumsum(ref)[:-1] / n - np.cumsum(win)[:-1] / m, [0.0]])
    return float(np.sum(np.diff(grid) * (np.abs(gap[:-1]) + np.abs(gap[1:])) / 2))
