"""Pipelines with known answers: simulated with a fake clock, and real runs.

The arithmetic (period, latency, makespan, Little's law, what-if, balancing) is held
against pipelines simulated in virtual time (``pipesim``): every stage takes exactly
its cost, the recorder's hooks get the simulation's timestamps, and the formulas
give the answers, P = max s_i / w_i, L = Σ s_i, T_N = L + (N - 1) P, whatever else
the machine is doing. Real runs of sleeping stages check what load cannot break:
which stage is the bottleneck when it costs several times the others, the counts,
and lower bounds (an item cannot finish before it has slept in every stage).
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
from conveyor.observe.recording import Recording
from pipesim import SimStage, simulate


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


def simulated(
    costs: dict[str, float], n: int, workers: dict[str, int] | None = None, capacity: int = 128
) -> Recording:
    workers = workers or {}
    return simulate(
        [SimStage(s, ms, workers=workers.get(s, 1), capacity=capacity) for s, ms in costs.items()],
        items=n,
    )


def test_seed_pipeline_bottleneck_period_latency_makespan_and_little() -> None:
    # The seed's simulate : analyse : render = 4 : 3 : 5, in units of 2 ms.
    n = 100
    report = build_report(simulated({"simulate": 8, "analyse": 6, "render": 10}, n, capacity=4))
    m, b, pred = report.measure, report.bottleneck, report.prediction
    assert b is not None and b.stage == "render" and b.runner_up == "simulate"
    assert b.margin == pytest.approx(10 / 8)
    # render runs from its first item (at 14 ms) to the end: busy but for that fill.
    assert b.utilisation == pytest.approx(n * 10 / (m.makespan_s * 1e3))
    # Evidence: render's small input queue fills and blocks analyse.
    assert b.input_full_share > 0.5 and b.upstream_blocked["analyse"] > 0.5
    assert "its input queue full" in report.limiting_line()  # type: ignore[operator]
    period_ms, latency_ms = 10, 8 + 6 + 10
    makespan_ms = latency_ms + (n - 1) * period_ms
    assert m.first_latency_s == pytest.approx(latency_ms / 1e3)
    assert m.makespan_s == pytest.approx(makespan_ms / 1e3)
    assert (pred.period_s, pred.latency_s) == (pytest.approx(0.010), pytest.approx(0.024))
    assert pred.makespan_s == pytest.approx(m.makespan_s)
    assert [c.error for c in report.comparisons] == pytest.approx([0, 0, 0, 0], abs=1e-9)
    assert report.little is not None and report.little.error == pytest.approx(0, abs=1e-9)
    # Bubble: 24 ms of work per item on 3 workers over the makespan.
    assert m.bubble == pytest.approx(1 - n * 24 / (3 * makespan_ms))
    # The lesson: a faster analyse changes nothing; a faster render does.
    model = report.model
    assert predict(model, faster={"analyse": 2.0}).throughput == pytest.approx(pred.throughput)
    assert predict(model, faster={"render": 2.0}).bottleneck == "simulate"


def test_what_if_predictions_match_simulated_reruns() -> None:
    costs = {"a": 5, "b": 10, "c": 20}
    n = 100
    base = measure(simulated(costs, n))
    model = model_of(base)
    assert base.makespan_s == pytest.approx(0.035 + (n - 1) * 0.020)
    # c with 2 workers: P halves to 10 ms, and b limits.
    pred = predict(model, workers={"c": 2}, items=n)
    assert pred.bottleneck == "b" and pred.period_s == pytest.approx(0.010)
    rerun = measure(simulated(costs, n, {"c": 2}))
    assert pred.makespan_s == pytest.approx(rerun.makespan_s)
    # b twice as fast: not the bottleneck, so nothing changes.
    same = predict(model, faster={"b": 2.0}, items=n)
    assert same.period_s == pytest.approx(predict(model).period_s)
    faster_b = measure(simulated({"a": 5, "b": 5, "c": 20}, n))
    assert same.makespan_s == pytest.approx(faster_b.makespan_s)
    assert faster_b.makespan_s == pytest.approx(base.makespan_s - 0.005)  # only L shrinks


def test_balanced_allocation_from_a_recorded_run_is_the_brute_force_optimum() -> None:
    costs = {"a": 5, "b": 10, "c": 20}
    rec = simulated(costs, 60)
    demands = model_of(measure(rec)).demands
    assert demands == pytest.approx({"a": 0.005, "b": 0.010, "c": 0.020})
    alloc = balance(demands, 4)
    assert alloc.workers == {"a": 1, "b": 1, "c": 2}
    best = max(
        throughput_of(demands, dict(zip(demands, ws, strict=True)))
        for ws in itertools.product(range(1, 5), repeat=3)
        if sum(ws) <= 4
    )
    assert alloc.throughput == pytest.approx(best)
    text = build_report(rec, budget=4).render()
    assert "give `c` 2 workers of the 4 (a 1, b 1): predicted 2.0× throughput" in text
    # And the balanced pipeline, run, delivers what the model promised.
    balanced = measure(simulated(costs, 600, alloc.workers))
    steady = (balanced.makespan_s - balanced.first_latency_s) / 599  # type: ignore[operator]
    assert 1 / steady == pytest.approx(alloc.throughput)


def test_a_real_run_names_its_bottleneck_and_its_counts() -> None:
    # c costs five times a or b: no load on the machine can make another stage limit.
    n = 30
    run = chain({"a": 2, "b": 2, "c": 10}).run(range(n))
    report = run.report()
    m = report.measure
    assert report.bottleneck is not None and report.bottleneck.stage == "c"
    assert "limiting stage: c" in report.render()
    assert m.done == m.items == n and all(s.units == n for s in m.stages.values())
    assert report.model.demands["c"] >= 0.010  # each of its units slept 10 ms
    assert m.first_latency_s is not None and m.first_latency_s >= 0.014  # slept in all three
    assert min(s.service.p50 for s in m.stages.values()) >= 0.002


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
