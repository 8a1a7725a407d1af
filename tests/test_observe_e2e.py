"""Synthetic pipelines with known answers: sleep-based stages of chosen costs.

Each stage sleeps a fixed time per item (threads: sleeping releases the GIL, so
the 2-core machine's CPUs are not what limits). The formulas then give the
answers: P = max s_i / w_i, L = Σ s_i, T_N = L + (N - 1) P; the tolerance is the
issue's 10%, and every sleep is at least 5 ms so scheduling noise stays small.
``time.sleep`` overshoots by 0.1-0.3 ms on a loaded machine; where that matters
(the latency of one item) the formula is taken with the measured service times.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import conveyor as cv
from conveyor.analysis import balance, build_report, measure, model_of, predict, throughput_of
from conveyor.cli import cli

TOL = 0.10


def sleeper(name: str, ms: float) -> Callable[[int], int]:
    def fn(x: int) -> int:
        time.sleep(ms / 1000)
        return x

    fn.__name__ = name
    return fn


def chain(
    costs: dict[str, float], workers: dict[str, int] | None = None, capacity: int = 128
) -> cv.Pipeline:
    workers = workers or {}
    return cv.Pipeline(
        "synthetic",
        [cv.Stage(sleeper(n, ms), workers=workers.get(n, 1)) for n, ms in costs.items()],
        capacity=capacity,
    )


def close(measured: float, expected: float, tol: float = TOL) -> bool:
    return abs(measured - expected) <= tol * expected


@pytest.mark.slow
def test_seed_pipeline_bottleneck_period_latency_makespan_and_little() -> None:
    # The seed's simulate : analyse : render = 4 : 3 : 5, in units of 2 ms.
    costs = {"simulate": 8, "analyse": 6, "render": 10}
    n = 100
    run = chain(costs, capacity=4).run(range(n))
    report = run.report()
    m = report.measure
    b = report.bottleneck
    assert b is not None and b.stage == "render"
    assert b.utilisation > 0.9
    # Evidence: render's small input queue fills (from item ~15 on) and blocks analyse.
    assert b.input_full_share > 0.5 and b.upstream_blocked["analyse"] > 0.5
    assert "its input queue full" in report.limiting_line()  # type: ignore[operator]
    period_ms, latency_ms = 10, 8 + 6 + 10
    makespan_ms = latency_ms + (n - 1) * period_ms
    measured_period = (m.makespan_s - m.first_latency_s) / (n - 1) * 1e3
    assert close(measured_period, period_ms), measured_period
    assert close(m.makespan_s * 1e3, makespan_ms), m.makespan_s
    pred = report.prediction
    assert close(pred.latency_s * 1e3, latency_ms)
    assert close(pred.period_s * 1e3, period_ms)
    assert pred.makespan_s is not None and close(pred.makespan_s, m.makespan_s)
    assert report.little is not None and abs(report.little.error) <= TOL
    # Bubble: 24 ms of work per item on 3 workers over the makespan.
    assert m.bubble == pytest.approx(1 - n * 24 / (3 * makespan_ms), abs=0.05)
    # The lesson: a faster analyse changes nothing; a faster render does.
    model = report.model
    assert predict(model, faster={"analyse": 2.0}).throughput == pytest.approx(pred.throughput)
    assert predict(model, faster={"render": 2.0}).bottleneck == "simulate"


def test_first_item_latency_is_the_sum_of_service_times() -> None:
    # One item's latency is one sample, and a loaded 2-core machine sometimes stalls
    # a thread for milliseconds: take the median of five short runs. A sleep also
    # overshoots by 0.1-0.3 ms, so the formula uses the measured service times.
    costs = {"simulate": 8, "analyse": 6, "render": 10}
    measured, predicted = [], []
    for _ in range(5):
        report = chain(costs).run(range(3)).report()
        assert report.measure.first_latency_s is not None
        measured.append(report.measure.first_latency_s)
        predicted.append(report.prediction.latency_s)
    m, p = sorted(measured)[2], sorted(predicted)[2]
    assert close(p * 1e3, 24), p
    assert close(m, p), (measured, predicted)


@pytest.mark.slow
def test_what_if_predictions_match_measured_reruns() -> None:
    costs = {"a": 5, "b": 10, "c": 20}
    n = 100
    base = chain(costs).run(range(n))
    model = model_of(measure(base.recording))
    # c with 2 workers: P halves to 10 ms.
    pred = predict(model, workers={"c": 2}, items=n)
    assert pred.bottleneck == "b" and close(pred.period_s * 1e3, 10)
    rerun = measure(chain(costs, {"c": 2}).run(range(n)).recording)
    assert pred.makespan_s is not None and close(rerun.makespan_s, pred.makespan_s)
    # b twice as fast: not the bottleneck, so nothing changes.
    same = predict(model, faster={"b": 2.0}, items=n)
    assert same.period_s == pytest.approx(predict(model).period_s)
    faster_b = measure(chain({"a": 5, "b": 5, "c": 20}).run(range(n)).recording)
    assert same.makespan_s is not None and close(faster_b.makespan_s, same.makespan_s)
    assert close(faster_b.makespan_s, measure(base.recording).makespan_s)


@pytest.mark.slow
def test_balanced_allocation_from_a_measured_run_is_the_brute_force_optimum() -> None:
    costs = {"a": 5, "b": 10, "c": 20}
    run = chain(costs).run(range(60))
    demands = model_of(run.report().measure).demands
    alloc = balance(demands, 4)
    assert alloc.workers == {"a": 1, "b": 1, "c": 2}
    best = max(
        throughput_of(demands, dict(zip(demands, ws, strict=True)))
        for ws in itertools.product(range(1, 5), repeat=3)
        if sum(ws) <= 4
    )
    assert alloc.throughput == pytest.approx(best)
    text = build_report(run.recording, budget=4).render()
    assert "give `c` 2 workers of the 4 (a 1, b 1): predicted 2.0× throughput" in text


def test_report_of_a_short_run() -> None:
    run = chain({"a": 5, "b": 10}).run(range(20))
    report = run.report()
    assert report.bottleneck is not None and report.bottleneck.stage == "b"
    assert report.measure.done == 20
    assert "limiting stage: b" in report.render()


# --- the command line: conveyor run --record/--trace/--gantt, conveyor analyze ----------

PIPELINE_FILE = """
import time
import conveyor as cv

def parse(x):
    time.sleep(0.003)
    return x

def embed(x):
    time.sleep(0.009)
    return x

pipeline = cv.Pipeline(
    "cli", [cv.Stage(parse), cv.Stage(embed, workers=2)], source=lambda: range(30)
)
"""


def test_cli_run_writes_recording_trace_and_picture_and_analyze_reads_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "clipipe.py").write_text(PIPELINE_FILE)
    rec, trace, svg = tmp_path / "r.cvrec", tmp_path / "t.json", tmp_path / "g.svg"
    path, modules = sys.path[:], set(sys.modules)
    try:
        result = CliRunner().invoke(
            cli,
            [
                "run",
                f"{tmp_path}/clipipe.py:pipeline",
                "--no-progress",
                "--record",
                str(rec),
                "--trace",
                str(trace),
                "--gantt",
                str(svg),
                "--budget",
                "4",
            ],
        )
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]
    assert result.exit_code == 0, result.output
    assert "cli: succeeded, 30 items read, 30 results" in result.stdout
    assert "limiting stage: embed" in result.stdout
    assert "model against measurement:" in result.stdout
    assert "recommendations:" in result.stdout
    assert json.loads(trace.read_text())["traceEvents"]
    assert svg.read_text().startswith("<svg")
    analyzed = CliRunner().invoke(
        cli, ["analyze", str(rec), "--budget", "4", "--json", str(tmp_path / "a.json")]
    )
    assert analyzed.exit_code == 0, analyzed.output
    assert "limiting stage: embed" in analyzed.stdout
    # parse 3 ms, embed 9 ms on 2 workers (4.5 ms per item): 1 + 3 of 4 workers balance it
    assert "give `embed` 3 workers of the 4 (parse 1)" in analyzed.stdout
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["bottleneck"]["stage"] == "embed"


def test_cli_analyze_and_run_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli, ["analyze", str(tmp_path / "none.cvrec")])
    assert missing.exit_code == 2 and "not found; check the path" in missing.output
    (tmp_path / "bad.cvrec").write_text("not gzip")
    bad = CliRunner().invoke(cli, ["analyze", str(tmp_path / "bad.cvrec")])
    assert bad.exit_code == 2 and "is not a conveyor recording" in bad.output
    assert "Traceback" not in bad.output
    png = CliRunner().invoke(cli, ["analyze", str(tmp_path / "bad.cvrec"), "--gantt", "x.png"])
    assert png.exit_code == 2 and "give a path ending in .svg" in png.output


REBALANCE_FILE = """
import time
import conveyor as cv

def light(x):
    time.sleep(0.003)
    return x

def heavy(x):
    time.sleep(0.012)
    return x

pipeline = cv.Pipeline(
    "rb", [cv.Stage(light, workers=2), cv.Stage(heavy)], source=lambda: range(120)
)
"""


def test_cli_rebalance_moves_workers_while_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "rbpipe.py").write_text(REBALANCE_FILE)
    path, modules = sys.path[:], set(sys.modules)
    try:
        result = CliRunner().invoke(
            cli, ["run", f"{tmp_path}/rbpipe.py:pipeline", "--no-progress", "--rebalance", "3"]
        )
        small = CliRunner().invoke(
            cli, ["run", f"{tmp_path}/rbpipe.py:pipeline", "--no-progress", "--rebalance", "1"]
        )
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]
    assert result.exit_code == 0, result.output
    # light 3 ms on 2 workers, heavy 12 ms on 1: the budget of 3 goes 1 + 2.
    assert "rebalanced at " in result.stderr and "light 1, heavy 2" in result.stderr
    assert "threads×1→2" in result.stdout
    assert small.exit_code == 2 and "each needs a worker; give at least 2" in small.output
