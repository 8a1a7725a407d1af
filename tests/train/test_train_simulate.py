"""The simulator against the textbook formulas, exactly (fractions), and memory counts."""

from __future__ import annotations

from fractions import Fraction as Fr

import pytest

from conveyor.train import (
    StageCosts,
    TrainError,
    gpipe,
    interleaved_1f1b,
    one_f_one_b,
    simulate,
    zb_h1,
)

CASES = [(p, m) for p in (2, 3, 4, 5, 8) for m in (p, p + 1, 2 * p, 3 * p, 4 * p)]


@pytest.mark.parametrize(("p", "m"), CASES)
def test_gpipe_and_1f1b_bubble_formula(p, m):
    costs = StageCosts.uniform(p, Fr(1), Fr(2))  # any F, B equal on every stage
    for schedule in (gpipe(p, m), one_f_one_b(p, m)):
        sim = simulate(schedule, costs)
        assert sim.bubble == Fr(p - 1, m + p - 1)
        assert sim.makespan == (m + p - 1) * 3


# torch's interleaved order needs m to be a multiple of its number of rounds, max(1, m // p)
INTERLEAVED_CASES = [(p, m) for p, m in CASES if m % max(1, m // p) == 0]


@pytest.mark.parametrize(("p", "m"), INTERLEAVED_CASES)
@pytest.mark.parametrize("v", [2, 3])
def test_interleaved_bubble_formula(p, m, v):
    # a rank's work split into v chunks, each 1/v of the cost
    sim = simulate(interleaved_1f1b(p, m, v), StageCosts.uniform(p * v, Fr(1, v), Fr(2, v)))
    assert sim.bubble == Fr(p - 1, v * m + p - 1)


@pytest.mark.parametrize(("p", "m"), CASES)
def test_zb_h1_bubble_is_a_third_of_1f1b(p, m):
    costs = StageCosts.uniform(p, Fr(1), Fr(1), Fr(1))  # F = I = W
    zb = simulate(zb_h1(p, m), costs)
    ofob = simulate(one_f_one_b(p, m), costs)
    idle = lambda s: s.makespan * p - sum(s.busy)  # noqa: E731
    assert idle(zb) == idle(ofob) / 3 == p * (p - 1)  # (p-1)(F+I-W) per rank
    assert zb.bubble == Fr(p - 1, 3 * m + p - 1)
    assert ofob.bubble == Fr(p - 1, m + p - 1)


@pytest.mark.parametrize(("p", "m"), CASES)
def test_live_activations(p, m):
    costs = StageCosts.uniform(p, Fr(1), Fr(2))
    assert simulate(one_f_one_b(p, m), costs).peak_activations == tuple(
        min(p - i, m) for i in range(p)
    )
    assert simulate(gpipe(p, m), costs).peak_activations == (m,) * p


def test_communication_cost_adds_to_each_crossing():
    # fill and drain each cross p-1 boundaries once on the critical path
    p, m, c = 4, 6, Fr(1, 10)
    sim = simulate(gpipe(p, m), StageCosts.uniform(p, Fr(1), Fr(2), comm=c))
    assert sim.makespan == (m + p - 1) * 3 + 2 * (p - 1) * c


def test_unequal_stages_the_slowest_sets_the_pace():
    # stage 1 twice as slow: GPipe's steady state runs at its pace
    costs = StageCosts((Fr(1), Fr(2)), (Fr(1), Fr(2)), (Fr(0), Fr(0)))
    sim = simulate(gpipe(2, 4), costs)
    assert sim.makespan == 1 + 4 * 2 + 4 * 2 + 1


def test_costs_must_match_stages():
    with pytest.raises(TrainError, match=r"costs.forward has 2 values for the 4 stages"):
        simulate(interleaved_1f1b(2, 2, 2), StageCosts.uniform(2, 1, 1))
