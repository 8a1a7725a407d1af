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


def all_partitions(n, p):
    for cuts in itertools.combinations(range(1, n), p - 1):
        yield (0, *cuts, n)


def test_ties_go_to_the_earliest_cuts():
    assert partition_optimal([1, 1, 1], 2).bounds == (0, 1, 3)
    # three partitions reach a slowest stage of 2; the earliest cuts win
    assert partition_optimal([1, 1, 1, 1], 3).bounds == (0, 1, 2, 4)


@pytest.mark.parametrize("seed", range(100))
def test_ties_within_float_rounding_are_broken_the_same_way(seed):
    # tenths: 0.1 + 0.2 != 0.3 in floats, so equal stage sums round apart; the rule must not
    # see that: the answer is the earliest of the partitions optimal in exact arithmetic
    rng = random.Random(2000 + seed)
    n = rng.randint(2, 8)
    p = rng.randint(1, min(n, 4))
    tenths = [rng.randint(1, 3) for _ in range(n)]
    exact = {b: max(sum(tenths[b[j] : b[j + 1]]) for j in range(p)) for b in all_partitions(n, p)}
    best = min(exact.values())
    expected = min(b for b, v in exact.items() if v == best)
    assert partition_optimal([t / 10 for t in tenths], p).bounds == expected
    # and the same answer whichever way the costs were scaled
    assert partition_optimal([t * 0.7 for t in tenths], p).bounds == expected


def brute_force_checkpointing(costs, p, memory, cap, acts, live, inputs, recompute):
    """Smallest bottleneck where a stage over the cap recomputes if that makes it fit."""
    best = None
    for b in all_partitions(len(costs), p):
        times = []
        for j in range(p):
            run = slice(b[j], b[j + 1])
            kept = sum(memory[run]) + live[j] * sum(acts[run])
            recomputing = sum(memory[run]) + live[j] * inputs[b[j]] + sum(acts[run])
            if kept <= cap:
                times.append(sum(costs[run]))
            elif recomputing <= cap:
                times.append(sum(costs[run]) + sum(recompute[run]))
            else:
                break
        else:
            best = max(times) if best is None else min(best, max(times))
    return best


@pytest.mark.parametrize("seed", range(150))
def test_checkpointing_equals_brute_force(seed):
    rng = random.Random(3000 + seed)
    n = rng.randint(2, 8)
    p = rng.randint(1, min(n, 4))
    costs = [rng.randint(1, 20) for _ in range(n)]
    recompute = [rng.randint(0, c) for c in costs]
    memory = [rng.randint(0, 5) for _ in range(n)]
    acts = [rng.randint(0, 6) for _ in range(n)]
    inputs = [rng.randint(0, 2) for _ in range(n)]
    live = [rng.randint(1, 4) for _ in range(p)]
    cap = rng.randint(8, 40)
    kwargs = {"memory": memory, "memory_cap": cap, "activations": acts, "live": live}
    expected = brute_force_checkpointing(costs, p, memory, cap, acts, live, inputs, recompute)
    if expected is None:
        with pytest.raises(TrainError, match="memory"):
            partition_optimal(costs, p, inputs=inputs, recompute=recompute, **kwargs)
        return
    part = partition_optimal(costs, p, inputs=inputs, recompute=recompute, **kwargs)
    assert part.bottleneck == expected
    assert part.stage_memory is not None and max(part.stage_memory) <= cap
    for j, on in enumerate(part.checkpoint):
        run = slice(part.bounds[j], part.bounds[j + 1])
        kept = sum(memory[run]) + live[j] * sum(acts[run])
        assert on == (kept > cap), "a stage recomputes exactly when keeping would not fit"


def test_no_stage_boundary_where_layers_pass_what_a_boundary_cannot():
    # layer 2 returns (tensor, int): the best cut (0, 3, 6) is forbidden, so the next best
    cuttable = [True, True, False, True, True, True]
    assert partition_optimal([1] * 6, 2).bounds == (0, 3, 6)
    part = partition_optimal([1] * 6, 2, cuttable=cuttable)
    assert part.bounds == (0, 2, 6)
    for seed in range(50):
        rng = random.Random(4000 + seed)
        n = rng.randint(2, 8)
        p = rng.randint(1, min(n, 4))
        costs = [rng.randint(1, 9) for _ in range(n)]
        cuts = [rng.random() < 0.7 for _ in range(n)]
        ok = [b for b in all_partitions(n, p) if all(cuts[c - 1] for c in b[1:-1])]
        if not ok:
            with pytest.raises(TrainError, match="a stage boundary must pass tensors"):
                partition_optimal(costs, p, cuttable=cuts)
            continue
        expected = min(max(sum(costs[b[j] : b[j + 1]]) for j in range(p)) for b in ok)
        assert partition_optimal(costs, p, cuttable=cuts).bottleneck == expected
    with pytest.raises(TrainError, match=r"only 1 places do \(after layers \[0\]\).*--stages 2"):
        partition_optimal([1, 1, 1], 3, cuttable=[True, False, True])
