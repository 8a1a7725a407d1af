"""The report on a run that its source paced: no stage limits it, and advice about
workers would be wrong. Simulated runs in virtual time (``pipesim``)."""

from __future__ import annotations

from conveyor.analysis import build_report
from pipesim import MS, SimStage, simulate


def test_a_run_paced_by_a_slow_source_names_the_source_and_gives_no_worker_advice() -> None:
    # Items arrive every 10 ms; the stages need 1 and 2 ms: the stream sets the pace.
    rec = simulate([SimStage("parse", 1), SimStage("score", 2)], items=200, arrival_ns=10 * MS)
    report = build_report(rec)
    line = report.limiting_line()
    assert line is not None and line.startswith("limiting: the source (it delivered 100")
    assert "busiest stage, score, was busy 20%" in line
    assert report.recommendations == (
        "the source sets the pace: more workers or faster stages would not raise "
        "throughput; only a faster source would",
    )
    assert "limiting: the source" in "\n".join(report.lines())


def test_a_run_whose_source_keeps_up_still_names_its_bottleneck() -> None:
    rec = simulate([SimStage("parse", 1), SimStage("score", 2)], items=200)
    report = build_report(rec)
    assert report.source_paced is None
    assert (report.limiting_line() or "").startswith("limiting stage: score")
    assert any("making `score` 2× faster" in r for r in report.recommendations)


def test_a_source_nearly_as_fast_as_the_stages_is_not_blamed() -> None:
    # 2.5 ms between items against a 2 ms stage: the stage is busy 80% of the time,
    # so the source is not the whole story and the usual analysis stands.
    rec = simulate([SimStage("parse", 1), SimStage("score", 2)], items=200, arrival_ns=2_500_000)
    assert build_report(rec).source_paced is None


def test_a_real_run_over_a_slow_stream_is_reported_as_paced_by_its_source() -> None:
    import time

    import conveyor as cv

    def feed():  # type: ignore[no-untyped-def]
        for i in range(60):
            time.sleep(0.002)  # a stream: one item every 2 ms at most
            yield i

    def tag(x: int) -> int:
        return x

    run = cv.Pipeline("stream", [cv.Stage(tag), cv.Stage(tag, name="tag2")]).run(feed())
    assert sorted(run.results) == list(range(60))
    assert run.statistics().source_seconds >= 60 * 0.002
    report = run.report()
    assert report.source_paced is not None, report.render()
    assert "producing its items took" in report.source_paced
    assert all("workers of the" not in r for r in report.recommendations)
