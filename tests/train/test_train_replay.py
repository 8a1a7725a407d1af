"""Reading runtime costs off a timeline, and replaying it: exact on simulated timelines (pure)."""

from __future__ import annotations

import pytest

from conveyor.train import StageCosts, build_schedule, simulate
from conveyor.train._api import measured_intervals, replay, runtime_costs


@pytest.mark.parametrize(
    ("name", "v"), [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("zbh1", 1)]
)
@pytest.mark.parametrize(("overhead", "comm"), [(1e-4, 3e-4), (3e-4, 1e-4), (0.0, 5e-4)])
def test_runtime_costs_and_replay_recover_a_simulated_run(name, v, overhead, comm):
    schedule = build_schedule(name, 4, 8, v)
    costs = StageCosts.uniform(4 * v, 1e-3, 2e-3, 1e-3, comm=comm, overhead=overhead)
    sim = simulate(schedule, costs)
    assert runtime_costs(schedule, [sim.intervals]) == pytest.approx((overhead, comm), abs=1e-12)
    assert replay(schedule, [sim.intervals]) == pytest.approx(float(sim.bubble), abs=1e-12)


def test_measured_intervals_from_rank_records():
    records = [[("F", 0, 0, 0.0, 1.0)], [("F", 1, 0, 1.5, 2.5), ("B", 1, 0, 2.5, 4.5)]]
    ivs = measured_intervals(records, 2)
    assert [(iv.rank, str(iv.action), iv.start, iv.end) for iv in ivs] == [
        (0, "0F0", 0.0, 1.0),
        (1, "1F0", 1.5, 2.5),
        (1, "1B0", 2.5, 4.5),
    ]
