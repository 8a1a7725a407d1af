"""The partitioner against brute force, literal cuts, and its errors (pure, no torch)."""

from __future__ import annotations

import itertools
import random

import pytest

from conveyor.train import (
    TrainError,
    partition_by_params,
    partition_optimal,
    partition_uniform,
)


def brute_force(costs, p, memory=None, cap=None, speeds=None, live=None, acts=None):
    """Smallest bottleneck over every way to cut ``costs`` into p non-empty runs."""
    n = len(costs)
    speeds = speeds or [1] * p
    best = None
    for cuts in itertools.combinations(range(1, n), p - 1):
        b = (0, *cuts, n)
        ok = True
        for j in range(p):
            if cap is not None:
                mem = sum(memory[b[j] : b[j + 1]])
                if acts is not None:
                    mem += live[j] * sum(acts[b[j] : b[j + 1]])
                if mem > cap:
                    ok = False
        if not ok:
            continue
        value = max(sum(costs[b[j] : b[j + 1]]) / speeds[j] for j in range(p))
        best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("seed", range(150))
def test_optimal_equals_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    p = rng.randint(1, min(n, 4))
    costs = [rng.randint(0, 20) for _ in range(n)]
    part = partition_optimal(costs, p)
    assert part.bottleneck == brute_force(costs, p)
    assert part.bounds[0] == 0 and part.bounds[-1] == n and all(s >= 1 for s in part.sizes)
    assert part.stage_costs == tuple(sum(costs[a:b]) for a, b in itertools.pairwise(part.bounds))


@pytest.mark.parametrize("seed", range(150))
def test_optimal_with_memory_cap_and_speeds_equals_brute_force(seed):
    rng = random.Random(1000 + seed)
    n = rng.randint(2, 9)
    p = rng.randint(1, min(n, 4))
    costs = [rng.randint(1, 20) for _ in range(n)]
    memory = [rng.randint(1, 10) for _ in range(n)]
    acts = [rng.randint(0, 3) for _ in range(n)]
    live = [rng.randint(0, 3) for _ in range(p)]
    speeds = [rng.choice([1, 2, 4]) for _ in range(p)]
    cap = rng.randint(10, 40)
    expected = brute_force(costs, p, memory, cap, speeds, live, acts)
    if expected is None:
        with pytest.raises(TrainError, match="memory"):
            partition_optimal(
                costs, p, memory=memory, memory_cap=cap, speeds=speeds, live=live, activations=acts
            )
        return
    part = partition_optimal(
        costs, p, memory=memory, memory_cap=cap, speeds=speeds, live=live, activations=acts
    )
    assert part.bottleneck == expected
    assert part.stage_memory is not None and max(part.stage_memory) <= cap


def test_literal_cuts():
    # a large head: the optimum gives it a stage of its own
    assert partition_optimal([1, 1, 1, 1, 1, 1, 6], 2).bounds == (0, 6, 7)
    assert partition_uniform([1, 1, 1, 1, 1, 1, 6], 2).bounds == (0, 4, 7)
    assert partition_uniform([1] * 7, 3).bounds == (0, 3, 5, 7)
    # parameters balance params, and report time
    by_params = partition_by_params([1, 5, 5, 1], [100, 1, 1, 100], 2)
    assert by_params.bounds in ((0, 1, 4), (0, 2, 4), (0, 3, 4))
    assert by_params.method == "parameters"
    # a twice-as-fast second device takes twice the work
    assert partition_optimal([1] * 6, 2, speeds=[1, 2]).bounds == (0, 2, 6)


def test_more_stages_than_layers_is_a_clear_error():
    with pytest.raises(TrainError, match=r"cannot cut 3 layers into 4 stages.*--stages 3"):
        partition_optimal([1, 2, 3], 4)


def test_memory_cap_no_partition_meets_is_a_clear_error():
    with pytest.raises(
        TrainError, match=r"no way to cut 3 layers into 2 stages.*cap.*Raise the memory cap"
    ):
        partition_optimal([1, 1, 1], 2, memory=[5, 5, 5], memory_cap=6)


def test_bad_inputs():
    with pytest.raises(TrainError, match="memory_cap needs memory"):
        partition_optimal([1, 1], 2, memory_cap=3)
    with pytest.raises(TrainError, match="speeds"):
        partition_optimal([1, 1], 2, speeds=[1])
    with pytest.raises(TrainError, match="finite"):
        partition_optimal([1, float("nan")], 2)
