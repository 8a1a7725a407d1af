"""The driver's own time: conveyor's scheduler measures the time it spends moving
items (not waiting), the recording keeps it, and the report names conveyor as the
limit when that time, not a stage, filled the run. Known answers on simulated runs
(``pipesim``); the measurement itself on a real run."""

from __future__ import annotations

import pytest

import conveyor as cv
import stagefns as f
from conveyor.analysis import build_report, measure, model_of, predict
from conveyor.analysis._advice import ENGINE_ADVICE, engine_bound
from conveyor.observe.recording import Recording
from pipesim import MS, SimStage, simulate

FAST = [SimStage(n, 0.1, workers=2, capacity=64) for n in ("parse", "filter", "enrich")]


def paced() -> Recording:
    # A source that delivers an item every 2 ms to stages of 0.1 ms: queues stay
    # empty, every worker idle; whether conveyor limited it depends on the driver.
    return simulate(FAST, items=300, arrival_ns=2 * MS)


def verdict(rec: Recording, driver_share: float | None) -> str | None:
    m = measure(rec)
    driver = None if driver_share is None else int(driver_share * m.makespan_s * 1e9)
    return engine_bound(m, predict(model_of(m), items=m.items), driver)


def test_a_driver_busy_most_of_the_run_is_named_as_the_limit() -> None:
    assert verdict(paced(), None) is None  # unmeasured: no full queue, no verdict
    assert verdict(paced(), 0.1) is None  # a driver mostly idle did not limit it
    why = verdict(paced(), 0.9)
    assert why is not None and why.startswith("conveyor's scheduler was busy 90% of the run")
    assert "full queues" not in why


def test_full_queues_and_a_busy_driver_are_both_given_as_evidence() -> None:
    rec = simulate(FAST, items=400, dispatch_ns=1 * MS)
    rec.driver_ns = int(0.8 * measure(rec).makespan_s * 1e9)
    report = build_report(rec)
    line = report.limiting_line() or ""
    assert line.startswith("limiting: conveyor's own overhead (conveyor's scheduler was busy 80%")
    assert "items waited in full queues" in line
    assert report.recommendations == (ENGINE_ADVICE,)


def test_a_stage_bound_run_with_a_busy_driver_is_still_the_stage_s() -> None:
    rec = simulate([SimStage("parse", 0.1, workers=2), SimStage("score", 2, workers=2)], items=400)
    rec.driver_ns = int(0.9 * measure(rec).makespan_s * 1e9)
    report = build_report(rec)
    assert report.engine_bound is None
    assert (report.limiting_line() or "").startswith("limiting stage: score")


def test_a_run_measures_its_driver_and_the_recording_keeps_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pipe = cv.Pipeline("drv", [cv.stage(f.inc, workers=2), cv.stage(f.double, workers=2)])
    run = pipe.run(range(3000))
    stats = run.statistics()
    assert 0 < stats.driver_seconds <= stats.elapsed_seconds
    rec = run.recording
    assert rec.driver_ns == pytest.approx(stats.driver_seconds * 1e9)
    assert rec.source_ns is not None
    loaded = Recording.load(rec.save(tmp_path / "r.json.gz"))
    assert (loaded.driver_ns, loaded.source_ns) == (rec.driver_ns, rec.source_ns)


def test_a_recording_saved_before_the_driver_was_measured_still_loads() -> None:
    data = simulate(FAST, items=50).to_dict()
    del data["driver_ns"], data["source_ns"]
    old = Recording.from_dict(data)
    assert old.driver_ns is None and old.source_ns is None
    assert build_report(old).measure.items == 50
