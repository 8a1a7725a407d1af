"""Property: for random pipelines of pure functions, conveyor computes exactly what
the sequential composition of the functions computes (in order when ordered)."""

from __future__ import annotations

import collections
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor as cv
import stagefns as f

# (function, kind, options, sequential meaning over a list of values)
MENU: list[tuple[Any, str, dict[str, Any], Any]] = [
    (f.inc, "map", {}, lambda xs: [x + 1 for x in xs]),
    (f.double, "map", {}, lambda xs: [2 * x for x in xs]),
    (f.negate, "map", {}, lambda xs: [-x for x in xs]),
    (f.explode, "flat_map", {}, lambda xs: [x for x in xs for _ in range(x % 4)]),
    (f.evens_only, "flat_map", {}, lambda xs: [x for x in xs if x % 2 == 0]),
    (f.batch_square, "batch", {"size": 5, "split": True}, lambda xs: [x * x for x in xs]),
    (f.total, "collect", {}, lambda xs: [sum(xs)] if xs else []),
]

step = st.tuples(
    st.integers(0, len(MENU) - 1),  # which function
    st.integers(1, 3),  # workers
)


def build(steps: list[tuple[int, int]], executors: list[str], capacity: int) -> cv.Pipeline:
    stages = []
    for i, ((choice, workers), executor) in enumerate(
        zip(steps, executors[: len(steps)], strict=True)
    ):
        fn, kind, options, _ = MENU[choice]
        if kind == "collect":
            workers = 1
        stages.append(
            cv.stage(fn, name=f"s{i}", kind=kind, workers=workers, executor=executor, **options)
        )
    return cv.Pipeline("random", stages, capacity=capacity)


def sequential(steps: list[tuple[int, int]], source: list[int]) -> list[int]:
    xs = list(source)
    for choice, _ in steps:
        xs = MENU[choice][3](xs)
    return xs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step, min_size=1, max_size=4),
    executors=st.lists(st.sampled_from(["sync", "threads"]), min_size=4, max_size=4),
    source=st.lists(st.integers(-50, 50), max_size=60),
    capacity=st.integers(1, 16),
    ordered=st.booleans(),
)
def test_pipeline_equals_sequential_composition(
    steps: list[tuple[int, int]],
    executors: list[str],
    source: list[int],
    capacity: int,
    ordered: bool,
) -> None:
    pipe = build(steps, executors, capacity)
    got = pipe.run(source, ordered=ordered).results
    expected = sequential(steps, source)
    has_collect = any(MENU[c][1] == "collect" for c, _ in steps)
    if ordered and not has_collect:
        assert got == expected
    else:
        # a collect stage sums in key order, so results match as multisets
        assert collections.Counter(got) == collections.Counter(expected)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step, min_size=1, max_size=3),
    source=st.lists(st.integers(-50, 50), max_size=80),
    capacity=st.integers(2, 16),
)
def test_pipeline_on_processes_equals_sequential_composition(
    steps: list[tuple[int, int]], source: list[int], capacity: int
) -> None:
    pipe = build(steps, ["processes"] * len(steps), capacity)
    assert pipe.run(source, ordered=True).results == sequential(steps, source) or any(
        MENU[c][1] == "collect" for c, _ in steps
    )
    assert collections.Counter(pipe.run(source).results) == collections.Counter(
        sequential(steps, source)
    )
