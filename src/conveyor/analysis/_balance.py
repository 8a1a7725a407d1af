"""Balancing: the allocation of a worker budget to stages that maximises throughput.

Throughput with w_i workers on stage i of demand d_i is λ(w) = min_i w_i / d_i
(the model's 1 / P). Maximise it over whole w_i >= 1 with Σ w_i <= budget::

    For a target rate λ, stage i needs at least  n_i(λ) = max(1, ⌈λ · d_i⌉)  workers,
    and λ is reachable iff  Σ n_i(λ) <= budget  (giving any stage fewer misses λ;
    giving it exactly n_i(λ) reaches it). Σ n_i(λ) grows with λ, so reachability is
    monotone; and the best λ* equals w_j / d_j for its bottleneck j with
    1 <= w_j <= budget. So λ* is the largest reachable value among the candidates
    { k / d_i : 1 <= k <= budget }: sort them and binary-search. Exact, in
    O(n · budget · log(n · budget)); brute force agrees (tests).

Spare workers (budget - Σ n_i(λ*)) cannot raise λ*; with ``spend_all`` they go one
by one to the stage of lowest capacity w_i / d_i, which never lowers it.

    demands 10, 25, 40 ms, budget 8:  λ = 0.1/ms needs 1 + ⌈2.5⌉ + 4 = 8 → (1, 3, 4),
    100 items/s; an equal split (3, 3, 2) gives min(3/10, 3/25, 2/40) = 50 items/s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["Allocation", "balance", "equal_split", "throughput_of"]

_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Workers per stage, and the throughput the model predicts for them."""

    workers: dict[str, int]
    throughput: float  # source items per second
    period_s: float
    budget: int
    bottleneck: str

    @property
    def spare(self) -> int:
        return self.budget - sum(self.workers.values())


def throughput_of(
    demands: Mapping[str, float], workers: Mapping[str, int], fused: Iterable[Sequence[str]] = ()
) -> float:
    """λ = min_i w_i / d_i (stages of zero demand never limit); a fused chain's stages
    share one pool, so each one's rate is w / Σ d over the chain."""
    load = dict(demands)
    for chain in fused:
        total = sum(demands.get(n, 0.0) for n in chain)
        load.update({n: total for n in chain if n in load})
    rates = [workers[n] / load[n] for n, d in demands.items() if d > 0]
    return min(rates) if rates else math.inf


def _need(lam: float, d: float) -> int:
    # ⌈λ·d⌉ with a tolerance: k/d·d must give k, not k + 1, after rounding.
    return max(1, math.ceil(lam * d * (1 - _EPS)))


def balance(
    demands: Mapping[str, float],
    budget: int,
    *,
    fixed: Mapping[str, int] | None = None,
    spend_all: bool = False,
    fused: Iterable[Sequence[str]] = (),
) -> Allocation:
    """The allocation of ``budget`` workers maximising ``min_i w_i / d_i`` (module doc).

    ``demands`` maps each stage to its busy seconds per source item; ``fixed`` stages
    keep their count (a collect stage, a sync stage) and use up budget. Each chain in
    ``fused`` shares one pool: it is balanced as one stage of the chain's summed
    demand, counted once in the budget, and each of its stages gets the pool's size.

    >>> balance({"a": 0.010, "b": 0.025, "c": 0.040}, 8).workers
    {'a': 1, 'b': 3, 'c': 4}
    """
    fixed = dict(fixed or {})
    pool = {n: chain[0] for chain in fused for n in chain if n in demands}
    if pool:
        summed: dict[str, float] = {}
        for n, d in demands.items():
            summed[pool.get(n, n)] = summed.get(pool.get(n, n), 0.0) + d
        pooled = {pool.get(n, n): w for n, w in fixed.items()}
        a = balance(summed, budget, fixed=pooled, spend_all=spend_all)
        workers = {n: a.workers[pool.get(n, n)] for n in demands}
        heavy = max(
            (n for n in demands if pool.get(n, n) == a.bottleneck), key=lambda n: demands[n]
        )
        return dataclasses.replace(a, workers=workers, bottleneck=heavy)
    for name, d in demands.items():
        if d < 0 or math.isnan(d):
            raise ValueError(f"stage {name!r} has demand {d!r}; demands are seconds >= 0")
    free = [n for n in demands if n not in fixed]
    left = budget - sum(fixed.values())
    if left < len(free):
        raise ValueError(
            f"a budget of {budget} workers cannot give each of {len(demands)} stages at least "
            f"one ({sum(fixed.values())} fixed, {len(free)} to place); raise the budget to at "
            f"least {sum(fixed.values()) + len(free)}"
        )
    cap = throughput_of({n: demands[n] for n in fixed}, fixed)
    positive = [n for n in free if demands[n] > 0]
    workers = dict.fromkeys(free, 1)
    if positive:
        candidates = sorted({k / demands[n] for n in positive for k in range(1, left + 1)})
        lo, hi = 0, len(candidates) - 1  # candidates[0] (all ones) is always reachable
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if sum(_need(candidates[mid], demands[n]) for n in free) <= left:
                lo = mid
            else:
                hi = mid - 1
        lam = min(candidates[lo], cap)
        workers = {n: _need(lam, demands[n]) for n in free}
        if spend_all:
            spare = left - sum(workers.values())
            for _ in range(spare):
                n = min(positive, key=lambda n: workers[n] / demands[n])
                workers[n] += 1
    allocation = {n: fixed.get(n, workers.get(n, 1)) for n in demands}
    return _allocation(demands, allocation, budget)


def equal_split(stages: list[str], budget: int) -> dict[str, int]:
    """``budget`` workers shared as evenly as possible, the remainder to the first stages."""
    q, r = divmod(budget, len(stages))
    return {n: q + (1 if i < r else 0) for i, n in enumerate(stages)}


def _allocation(demands: Mapping[str, float], workers: dict[str, int], budget: int) -> Allocation:
    lam = throughput_of(demands, workers)
    per = {n: (demands[n] / workers[n]) for n in demands}
    bottleneck = max(per, key=lambda n: per[n]) if per else ""
    return Allocation(
        workers=workers,
        throughput=lam,
        period_s=1 / lam if lam > 0 and lam != math.inf else 0.0,
        budget=budget,
        bottleneck=bottleneck,
    )
