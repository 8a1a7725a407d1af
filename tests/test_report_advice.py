"""The report's worker advice keeps to the machine: no more process workers than
cores, no workers for sync stages, none at all when conveyor's own overhead limits
the run; and the advice, applied, holds. Simulated runs in virtual time (``pipesim``)."""

from __future__ import annotations

import re

import pytest

import conveyor as cv
import stagefns as f
from conveyor.analysis import build_report
from conveyor.analysis._advice import ENGINE_ADVICE
from conveyor.observe.recording import Recording
from pipesim import MS, SimStage, simulate


def on_cores(rec: Recording, cpus: int) -> Recording:
    rec.cpus = cpus  # the recording of a machine with ``cpus`` cores
    return rec


def test_an_oversubscribed_machine_gets_no_advice_to_add_process_workers() -> None:
    # 3 process workers on 2 cores; embed limits. The model alone would say "with 1
    # more (embed 3) 1.50x"; on 2 cores a fourth process worker only shares them.
    stages = [
        SimStage("parse", 2, executor="processes"),
        SimStage("embed", 8, workers=2, executor="processes"),
    ]
    report = build_report(on_cores(simulate(stages, items=200), 2))
    text = "\n".join(report.recommendations)
    assert "more (" not in text and "workers of the" not in text, text
    assert report.advised_workers is None
    assert "the cores are the limit: 3 process workers already use the machine's 2 CPU" in text
    assert "3 process workers shared 2 CPU cores" in report.render()
    # The same run on 8 cores: adding a worker is sound there, and advised.
    roomy = build_report(on_cores(simulate(stages, items=200), 8))
    assert any("with 1 more (4: parse 1, embed 3)" in r for r in roomy.recommendations)
    assert all("cores are the limit" not in r for r in roomy.recommendations)


def test_moving_workers_onto_process_stages_stops_at_the_cores() -> None:
    # The budget is 5, but only 2 cores: embed (processes) may not get 4 workers.
    stages = [
        SimStage("load", 1, workers=3),
        SimStage("embed", 8, workers=2, executor="processes"),
    ]
    tight = build_report(on_cores(simulate(stages, items=200), 2))
    assert tight.advised_workers is None, tight.recommendations
    assert all("embed 3" not in r and "embed 4" not in r for r in tight.recommendations)
    assert "no change" in tight.to_config()
    roomy = build_report(on_cores(simulate(stages, items=200), 8))
    assert roomy.advised_workers == {"load": 1, "embed": 4}


def test_a_sync_stage_is_not_a_worker_in_the_budget_nor_given_workers() -> None:
    stages = [
        SimStage("read", 1, executor="sync"),
        SimStage("work", 4, workers=2),
        SimStage("save", 1, workers=2),
    ]
    report = build_report(simulate(stages, items=200))
    assert report.budget == 4  # work 2 + save 2: read runs in the caller
    give = [r for r in report.recommendations if r.startswith("give")]
    assert give == [
        "give `work` 3 workers of the 4 (save 1): predicted 1.5× throughput (500.0 → 750.0 items/s)"
    ], report.recommendations
    assert report.advised_workers == {"read": 1, "work": 3, "save": 1}
    # Already balanced: the "more" plan names only stages that have workers.
    balanced = [SimStage("read", 1, executor="sync"), SimStage("work", 4, workers=2)]
    more = build_report(simulate(balanced, items=200))
    assert more.budget == 2
    assert any(
        r.startswith("the 2 workers are already balanced; with 1 more (3: work 3)")
        for r in more.recommendations
    ), more.recommendations


def test_an_engine_bound_run_names_conveyor_and_gives_no_worker_advice() -> None:
    # Each task costs the scheduler 1 ms before its 0.1 ms unit starts: the queue
    # stays full and every worker is mostly idle.
    stages = [SimStage(n, 0.1, workers=2) for n in ("parse", "filter", "enrich")]
    report = build_report(simulate(stages, items=400, dispatch_ns=1 * MS))
    line = report.limiting_line() or ""
    assert line.startswith("limiting: conveyor's own overhead (items waited in full queues"), line
    assert "was busy 9% of its workers' time" in line
    assert report.recommendations == (ENGINE_ADVICE,)
    assert "record=False" in ENGINE_ADVICE
    assert report.advised_workers is None and report.allocation is None
    assert "limiting: conveyor's own overhead" in report.render()


def test_a_stage_bound_run_is_not_blamed_on_the_engine() -> None:
    stages = [SimStage("parse", 0.1, workers=2), SimStage("score", 2, workers=2)]
    report = build_report(simulate(stages, items=400, dispatch_ns=MS // 10))
    assert report.engine_bound is None
    assert (report.limiting_line() or "").startswith("limiting stage: score")


def measured_rate(rec: Recording) -> float:
    """Steady throughput: the run's fill left out (the report's own comparison)."""
    report = build_report(rec)
    (steady,) = [c for c in report.comparisons if c.name == "steady throughput λ"]
    return steady.measured


def test_the_advice_applied_lands_within_15_percent_of_its_prediction() -> None:
    costs = {"parse": 2.0, "embed": 8.0, "store": 3.0}

    def chain(workers: dict[str, int]) -> list[SimStage]:
        return [SimStage(n, ms, workers=workers[n]) for n, ms in costs.items()]

    report = build_report(simulate(chain({"parse": 2, "embed": 2, "store": 2}), items=600))
    advised = report.advised_workers
    assert advised == {"parse": 1, "embed": 3, "store": 2}
    assert report.allocation is not None
    predicted = report.allocation.throughput
    rate = measured_rate(simulate(chain(advised), items=600))
    assert abs(rate - predicted) <= 0.15 * predicted, (rate, predicted)

    # And "with N more" from a balanced run, applied.
    balanced = build_report(simulate(chain(advised), items=600))
    (more,) = [r for r in balanced.recommendations if "already balanced" in r]
    plan = re.search(r"with \d+ more \(\d+: (.*?)\) the model predicts ([\d.]+)×", more)
    assert plan is not None, more
    workers = {n: int(w) for n, w in (p.split() for p in plan.group(1).split(", "))}
    predicted = balanced.prediction.throughput * float(plan.group(2))
    rate = measured_rate(simulate(chain(workers), items=600))
    assert abs(rate - predicted) <= 0.15 * predicted, (workers, rate, predicted)


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_a_call_past_its_timeout_counts_as_busy_for_its_whole_timeout(executor: str) -> None:
    # Item 5 hangs past the 0.3 s timeout; the others return at once. The hung call
    # held its worker at least 0.3 s, so the stage was busy at least that long.
    pipe = cv.Pipeline(
        "timeout",
        [cv.stage(f.hang_on_5, executor=executor, workers=2, timeout=0.3, on_error="skip")],
    )
    try:
        run = pipe.run(range(20))
    finally:
        f.RELEASE.set()  # the abandoned thread may end its call now
    f.RELEASE.clear()
    assert run.statistics().stages["hang_on_5"].timeouts == 1
    s = run.report().measure.stages["hang_on_5"]
    assert s.busy_s >= 0.3, s
    assert s.units == 20 and s.errors == 1
    assert s.service.max >= 0.3
