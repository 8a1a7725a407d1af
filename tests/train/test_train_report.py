"""TrainReport.summary() on a simulated run (pure): the plan, the profile's source, the baselines."""

from __future__ import annotations

from conveyor.train import LayerProfile, ModelProfile, TrainReport, plan


def test_summary_says_when_pipelining_does_not_pay():
    prof = ModelProfile(
        tuple(LayerProfile(f"{i}", *[1e-3] * 6, 100, 400, 1000, 0) for i in range(4)), 256
    )
    p = plan(prof, 2, 256, schedules=["1f1b"], microbatches=[8], comm_latency=0.0,
             action_overhead=0.0)  # fmt: skip
    sim = p.best.simulation
    assert sim is not None and p.best.partition is not None
    report = TrainReport(
        schedule=sim.schedule,
        partition=p.best.partition,
        prediction=p.best,
        plan=p,
        profile=prof,
        losses=(1.0, 0.5),
        timelines=(sim.intervals, sim.intervals),
        measured_bubble=float(sim.bubble),
        replayed_bubble=float(sim.bubble),
        step_time=float(sim.makespan),
        step_seconds=float(sim.makespan),
        state_dict={},
        profile_source="cached at /tmp/profile.json",
    )
    text = report.summary()
    assert "\nprofile: cached at /tmp/profile.json\n" in text
    assert "why: Pipelining does not pay here: one process on the whole batch" in text
    assert text.splitlines()[-1] == (
        "no pipeline one process 12.00 ms, 2-way data parallel 12.00 ms (predicted); "
        "the measured pipelined step is 4.50x one process's"
    )
