"""The log-bucketed histogram: its error bound against exact quantiles, merging, storage."""

from __future__ import annotations

import math
import random

import pytest

from conveyor.analysis import quantile
from conveyor.observe.histogram import (
    RELATIVE_ERROR,
    Histogram,
    HistogramCounter,
    bounds_of,
    key_of,
)

QS = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)


def exact(values: list[int], q: float) -> float:
    return quantile(sorted(values), q)


def within_bound(got: float, want: float) -> bool:
    return abs(got - want) <= RELATIVE_ERROR * abs(want) + 1e-9


def test_the_error_bound_is_a_quarter_of_a_percent_and_some() -> None:
    assert pytest.approx(0.0039, abs=1e-4) == RELATIVE_ERROR
    for v in (1, 7, 100, 129, 1_000, 123_456, 10**9, 3_600 * 10**9):
        low, high = bounds_of(key_of(v))
        assert low <= v < high or (low == v == high)
        assert (high - low) / 2 <= RELATIVE_ERROR * v + 1e-9


@pytest.mark.parametrize(
    "draw",
    [
        lambda r: int(r.lognormvariate(13, 1.5)),  # µs to seconds, a long tail
        lambda r: r.randint(200, 400),  # tiny units: each ns its own bucket
        lambda r: r.choice([5_000_000, 5_000_100, 40_000_000]),  # few values, far apart
        lambda r: int(r.expovariate(1 / 2e6)),  # zeros and small values included
    ],
)
def test_quantiles_are_within_the_bound_of_the_exact_ones(draw) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(11)
    for n in (1, 2, 3, 10, 1000, 20_000):
        values = [draw(rng) for _ in range(n)]
        h = Histogram()
        h.add_many(values)
        assert (h.count, h.total, h.low, h.high) == (n, sum(values), min(values), max(values))
        assert h.mean == sum(values) / n
        for q in QS:
            assert within_bound(h.quantile(q), exact(values, q)), (n, q)
        assert h.quantiles(QS) == [h.quantile(q) for q in QS]


def test_merging_counts_what_adding_both_would() -> None:
    rng = random.Random(3)
    a = [rng.randint(1, 10**7) for _ in range(5000)]
    b = [rng.randint(10**6, 10**9) for _ in range(3000)]
    ha, hb, both = Histogram(), Histogram(), Histogram()
    ha.add_many(a)
    hb.add_many(b)
    both.add_many(a + b)
    assert ha.merge(hb) == both
    for q in QS:
        assert within_bound(both.quantile(q), exact(a + b, q))


def test_weighted_adds_equal_repeated_values_and_the_size_stays_bounded() -> None:
    h, g = Histogram(), Histogram()
    h.add(1500, 3)
    h.add(10, 2)
    g.add_many([1500, 1500, 1500, 10, 10])
    assert h == g
    big = Histogram()
    big.add_many(list(range(1, 2_000_000, 7)))  # 285,715 distinct values
    # at most 128 buckets per doubling: 21 doublings up to 2e6, and 128 below 128
    assert len(big.counts) <= 128 + 21 * 128


def test_empty_and_persistence() -> None:
    h = Histogram()
    assert math.isnan(h.quantile(0.5)) and math.isnan(h.mean)
    h.add_many([3, 1_000_000, 42])
    assert Histogram.from_dict(h.to_dict()) == h
    assert Histogram.from_dict(Histogram().to_dict()) == Histogram()


def test_a_counter_counts_few_values_exactly_and_many_in_buckets_with_exact_sums() -> None:
    few = HistogramCounter()
    few.add_many([5, 7, 5] * 1000)  # three distinct values however many come
    assert few.exact == {5: 2000, 7: 1000} and not few.spread
    rng = random.Random(5)
    values = [rng.randint(1, 10**8) for _ in range(20_000)]
    many, plain = HistogramCounter(), Histogram()
    for i in range(0, len(values), 4096):  # as the recorder folds them
        many.add_many(values[i : i + 4096])
    plain.add_many(values)
    assert many.spread and len(many.exact) == 0
    got = many.value()
    assert (got.count, got.total, got.low, got.high) == (
        len(values),
        sum(values),
        min(values),
        max(values),
    )
    assert got == plain  # the same buckets as counting them all at once
