"""Analysis: pure functions against literal expectations and brute force."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from conveyor.analysis import (
    Distribution,
    balance,
    build_report,
    equal_split,
    find_bottleneck,
    little,
    measure,
    model_of,
    predict,
    quantile,
    throughput_of,
)
from conveyor.analysis._batching import BatchPoint, recommend, sweep_batch_sizes
from conveyor.analysis._model import Model, StageModel
from conveyor.core.events import RunInfo, StageInfo
from conveyor.observe.histogram import RELATIVE_ERROR
from conveyor.observe.recorder import Recorder
from conveyor.observe.recording import Recording, full_depth
from pipesim import SimLog, SimStage, simulate

MS = 1_000_000


def info(*stages: tuple[str, int, int | None], kind: str = "map") -> RunInfo:
    """A chain of (name, workers, capacity) stages starting at t=0."""
    names = [s[0] for s in stages]
    return RunInfo(
        run_id="r1",
        pipeline="p",
        stages=tuple(
            StageInfo(
                name=n,
                kind=kind,
                executor="threads",
                workers=w,
                capacity=c,
                predecessors=tuple(names[i - 1 : i]),
                successors=tuple(names[i + 1 : i + 2]),
            )
            for i, (n, w, c) in enumerate(stages)
        ),
        ordered=False,
        started_ns=0,
    )


def unit(
    r: Recorder,
    stage: str,
    task: int,
    key: int,
    dispatched: int,
    start: int,
    end: int,
    depth: int,
    worker: int = 0,
) -> None:
    r.task_started(stage, task, [(key,)], depth, dispatched * MS)
    r.task_finished(stage, task, worker, [(key,)], [start * MS], [end * MS], None)


def two_stage() -> Recording:
    """a (10 ms, 1 worker, capacity 3) -> b (5 ms, 1 worker): three items read at 0.

    a runs items 0, 1, 2 over [0,10), [10,20), [20,30); b over [10,15), [20,25), [30,35).
    """
    r = Recorder()
    r.run_started(info(("a", 1, 3), ("b", 1, 8)))
    r.items_read([(0,), (1,), (2,)], 0)
    r.items_enqueued("a", [(0,), (1,), (2,)], 3, 0)
    for i in range(3):
        unit(r, "a", i + 1, i, 10 * i, 10 * i, 10 * i + 10, depth=2 - i)
        r.items_enqueued("b", [(i,)], 1, (10 * i + 10) * MS)
        unit(r, "b", 10 + i, i, 10 * i + 10, 10 * i + 10, 10 * i + 15, depth=0)
        r.roots_finished([i], "done", (10 * i + 15) * MS)
    r.run_finished("succeeded", None, 36 * MS)
    return r.recording


def test_quantile_and_distribution() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    d = Distribution.of([0.004, 0.001, 0.003, 0.002])
    assert (d.count, d.mean, d.p50, d.max) == (4, pytest.approx(0.0025), 0.0025, 0.004)
    assert math.isnan(Distribution.of([]).mean)


def test_measure_two_stages_exactly() -> None:
    m = measure(two_stage())
    assert m.makespan_s == pytest.approx(0.035)
    assert m.items == m.done == 3
    assert m.throughput == pytest.approx(3 / 0.035)
    assert m.latency.mean == pytest.approx(0.025)
    assert m.first_latency_s == pytest.approx(0.015)
    a, b = m.stages["a"], m.stages["b"]
    assert a.service.mean == pytest.approx(0.010) and b.service.mean == pytest.approx(0.005)
    assert a.queue_wait.mean == pytest.approx(0.010)  # waits of 0, 10 and 20 ms
    assert b.queue_wait.mean == 0
    assert a.utilisation == pytest.approx(30 / 35)
    assert b.utilisation == pytest.approx(15 / 35)
    assert a.demand_s == pytest.approx(0.010) and b.demand_s == pytest.approx(0.005)
    assert a.capacity == pytest.approx(100.0)
    assert b.starved_share == pytest.approx(20 / 35)  # idle over [0,10), [15,20), [25,30)
    assert a.starved_share == pytest.approx(5 / 35)  # idle over [30, 35)
    assert a.full_share == pytest.approx(10 / 35)  # depth 2 of capacity 3 over [0, 10)
    assert a.blocked_share == 0 and b.full_share == 0
    assert m.bubble == pytest.approx(1 - 45 / 70)


def test_model_prediction_matches_the_formula() -> None:
    m = measure(two_stage())
    pred = predict(model_of(m), items=3)
    assert pred.bottleneck == "a"
    assert pred.period_s == pytest.approx(0.010)
    assert pred.latency_s == pytest.approx(0.015)
    assert pred.makespan_s == pytest.approx(0.035)  # L + (N - 1) P, as measured
    assert pred.barrier_s == pytest.approx(0.045)  # 3·10 + 3·5 ms


def test_little_counts_queues_and_workers() -> None:
    lt = little(two_stage())
    assert lt is not None
    # queues: a holds 2 items for 10 ms and 1 for 10 ms; workers: 30 + 15 ms
    assert lt.items_in_system == pytest.approx(75 / 35)
    assert lt.throughput == pytest.approx(3 / 0.035)
    assert lt.mean_latency_s == pytest.approx(0.025)
    assert lt.error == pytest.approx(0.0, abs=1e-9)


def test_bottleneck_with_evidence() -> None:
    rec = two_stage()
    b = find_bottleneck(rec, measure(rec))
    assert b is not None
    assert (b.stage, b.runner_up, b.margin) == ("a", "b", pytest.approx(2.0))
    assert b.downstream_starved == {"b": pytest.approx(20 / 35)}
    assert b.upstream_blocked == {}
    assert not b.drifted
    assert b.evidence()[0] == "busy 86% of its workers' time"


def test_bottleneck_drift_is_seen_in_windows() -> None:
    # a takes 10 ms then 2 ms per item; b takes 4 ms throughout: the bottleneck moves.
    r = Recorder()
    r.run_started(info(("a", 1, 100), ("b", 1, 100)))
    n = 40
    r.items_read([(i,) for i in range(n)], 0)
    r.items_enqueued("a", [(i,) for i in range(n)], n, 0)
    t, tb = 0, 0
    for i in range(n):
        cost = 10 if i < n // 2 else 2
        unit(r, "a", i, i, t, t, t + cost, depth=n - i - 1)
        t += cost
        tb = max(tb, t)
        unit(r, "b", 1000 + i, i, tb, tb, tb + 4, depth=0)
        tb += 4
        r.roots_finished([i], "done", tb * MS)
    r.run_finished("succeeded", None, tb * MS)
    rec = r.recording
    bn = find_bottleneck(rec, measure(rec), windows=4)
    assert bn is not None
    first, last = bn.windows[0], bn.windows[-1]
    assert first.bottleneck == "a" and last.bottleneck == "b"
    assert bn.drifted
    report = build_report(rec)
    assert "the bottleneck moved during the run" in report.render()


def seed_model() -> Model:
    # The seed's workflow: simulation 4 s, analysis 3 s, visualisation 5 s per frame.
    return Model(
        (
            StageModel("simulate", 4.0, 4.0, 1),
            StageModel("analyse", 3.0, 3.0, 1, ("simulate",)),
            StageModel("render", 5.0, 5.0, 1, ("analyse",)),
        )
    )


def test_seed_numbers_and_the_lesson_of_the_bottleneck() -> None:
    model = seed_model()
    p = predict(model, items=100)
    assert (p.period_s, p.throughput, p.latency_s) == (5.0, 0.2, 12.0)
    assert p.makespan_s == 12.0 + 99 * 5.0
    assert p.barrier_s == 100 * 12.0
    # Analysis twice as fast: nothing changes. Rendering twice as fast: simulate limits.
    assert predict(model, faster={"analyse": 2.0}).throughput == 0.2
    assert predict(model, faster={"render": 2.0}).period_s == 4.0
    assert predict(model, faster={"render": 2.0}).bottleneck == "simulate"
    assert predict(model, workers={"render": 2}).period_s == 4.0


def test_predict_rejects_unknown_stages_and_bad_values() -> None:
    with pytest.raises(KeyError, match=r"no stage 'nope'.*simulate, analyse, render"):
        predict(seed_model(), workers={"nope": 2})
    with pytest.raises(ValueError, match="above 0"):
        predict(seed_model(), faster={"render": 0})
    with pytest.raises(ValueError, match="at least 1"):
        predict(seed_model(), workers={"render": 0})


def test_balance_the_issue_example() -> None:
    alloc = balance({"a": 0.010, "b": 0.025, "c": 0.040}, 8)
    assert alloc.workers == {"a": 1, "b": 3, "c": 4}
    assert alloc.throughput == pytest.approx(100.0)
    assert throughput_of({"a": 0.010, "b": 0.025, "c": 0.040}, equal_split(["a", "b", "c"], 8)) == (
        pytest.approx(50.0)
    )
    assert equal_split(["a", "b", "c"], 8) == {"a": 3, "b": 3, "c": 2}


def brute_force(demands: dict[str, float], budget: int) -> float:
    names = list(demands)
    best = 0.0
    for ws in itertools.product(range(1, budget + 1), repeat=len(names)):
        if sum(ws) <= budget:
            best = max(best, throughput_of(demands, dict(zip(names, ws, strict=True))))
    return best


def test_balance_equals_brute_force_on_small_cases() -> None:
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 4)
        demands = {
            f"s{i}": rng.choice([0.001, 0.003, 0.005, 0.01]) * rng.randint(1, 9) for i in range(n)
        }
        budget = rng.randint(n, n + 7)
        alloc = balance(demands, budget)
        assert sum(alloc.workers.values()) <= budget
        assert all(w >= 1 for w in alloc.workers.values())
        assert alloc.throughput == pytest.approx(brute_force(demands, budget), rel=1e-12)
        spent = balance(demands, budget, spend_all=True)
        assert sum(spent.workers.values()) == budget
        assert spent.throughput == pytest.approx(alloc.throughput, rel=1e-12)


def test_balance_keeps_fixed_stages_and_explains_a_small_budget() -> None:
    alloc = balance({"a": 0.01, "gather": 0.001, "c": 0.02}, 6, fixed={"gather": 1})
    assert alloc.workers == {"a": 2, "gather": 1, "c": 3}
    with pytest.raises(ValueError, match="budget of 2 workers cannot give each of 3 stages"):
        balance({"a": 1.0, "b": 1.0, "c": 1.0}, 2)


def test_batch_recommendation_is_the_knee() -> None:
    points = [
        BatchPoint(1, 0.010, 100.0, 0.010, 1_000),
        BatchPoint(8, 0.020, 400.0, 0.020, 8_000),
        BatchPoint(32, 0.060, 533.0, 0.060, 32_000),
        BatchPoint(64, 0.115, 556.0, 0.115, 64_000),
    ]
    assert recommend(points).recommended == 32  # 533 >= 0.9 * 556; 400 is not
    assert recommend(points, latency_budget_s=0.05).recommended == 8
    assert recommend(points, memory_budget_bytes=500).recommended is None


def test_batch_sweep_measures_memory_and_time() -> None:
    def embed(batch: list[int]) -> list[bytes]:
        return [bytes(10_000) for _ in batch]

    sweep = sweep_batch_sizes(embed, [1, 2, 3], sizes=(1, 4, 16), repeats=2)
    assert [p.size for p in sweep.points] == [1, 4, 16]
    peaks = [p.peak_bytes for p in sweep.points]
    assert peaks[0] >= 10_000 and peaks[2] >= 16 * 10_000 > peaks[1] >= 4 * 10_000
    assert sweep.recommended in (1, 4, 16)
    assert "recommended batch size" in sweep.render()
    with pytest.raises(ValueError, match="non-empty sample"):
        sweep_batch_sizes(embed, [])


def test_report_words_and_json() -> None:
    report = build_report(two_stage(), budget=4)
    text = report.render()
    assert "limiting stage: a (busy 86% of its workers' time" in text
    assert "period P" in text and "L + (N-1)·P" in text
    # a 10 ms, b 5 ms, 4 workers: a 2 + b 1 gives 200 items/s, or a 3 + b 1 the same:
    assert report.allocation is not None
    assert report.allocation.workers == {"a": 2, "b": 1}
    assert report.recommendations[0].startswith("give `a` 2 workers of the 4 (b 1): predicted 2.0")
    assert any("making `b` 2× faster changes nothing" in r for r in report.recommendations)
    data = report.to_dict()
    assert data["measure"]["stages"]["a"]["utilisation"] == pytest.approx(30 / 35)


def test_report_names_the_stages_that_raised() -> None:
    r = Recorder()
    r.run_started(info(("a", 1, 8)))
    r.items_read([(0,), (1,)], 0)
    r.items_enqueued("a", [(0,), (1,)], 2, 0)
    unit(r, "a", 1, 0, 0, 0, 5, depth=1)
    r.roots_finished([0], "done", 5 * MS)
    r.task_started("a", 2, [(1,)], 0, 5 * MS)
    r.task_finished("a", 2, 0, [(1,)], [5 * MS], [7 * MS], ValueError("bad"))
    r.run_finished("failed", ValueError("bad"), 8 * MS)
    report = build_report(r.recording)
    assert report.measure.stages["a"].errors == 1
    assert "errors (units that raised): a 1" in report.render()
    assert report.measure.state == "failed" and report.measure.done == 1


def test_a_run_too_short_for_a_period_still_reports() -> None:
    # Every item in one sync task: they all finish in the same pass.
    import conveyor as cv

    def up(x: str) -> str:
        return x.upper()

    run = cv.Pipeline("p", [cv.stage(up, executor="sync")]).run(["a", "b"])
    report = run.report()
    assert report.comparisons == ()
    assert "p" in report.render()


# --- the figures from bounded aggregates against the same figures computed exactly ---


def step_share(
    steps: list[tuple[int, tuple[int, ...]]], t0: int, t1: int, value: Callable[..., float]
) -> float:
    """∫ value(state) dt over [t0, t1] of a step function given as (time, state) changes
    (several at one time: the last holds); every value is 0 before the first change."""
    total = 0.0
    state = tuple(0 for _ in steps[0][1])
    prev = t0
    for t, st in steps:
        if t > prev and t > t0:
            a, b = max(prev, t0), min(t, t1)
            if b > a:
                total += value(*state) * (b - a)
            prev = t
        state = st
    if t1 > prev:
        total += value(*state) * (t1 - max(prev, t0))
    return total


def close_to(measured: float, exact: float, rel: float = 1e-9) -> bool:
    return abs(measured - exact) <= rel * abs(exact) + 1e-12


def test_figures_from_the_aggregates_match_exact_figures_of_the_same_events() -> None:
    rng = random.Random(5)
    stages = [
        SimStage(
            "parse",
            workers=2,
            capacity=16,
            units_per_task=3,
            service=lambda r: int(rng.lognormvariate(14, 0.8)),
        ),
        SimStage(
            "embed",
            workers=3,
            capacity=8,
            units_per_task=2,
            service=lambda r: int(rng.lognormvariate(15, 0.5)),
        ),
        SimStage(
            "write",
            workers=1,
            capacity=4,
            service=lambda r: rng.choice([500_000, 2_000_000, 700_000]),
        ),
    ]
    log = SimLog()
    rec = simulate(stages, items=3000, log=log, dispatch_ns=20_000, read_burst=5)
    m = measure(rec)
    t0 = min(min(v) for v in log.starts.values())
    t1 = max(max(max(v) for v in log.ends.values()), max(log.done.values()))
    assert (m.t0_ns, m.t1_ns) == (t0, t1)
    span = t1 - t0
    within = RELATIVE_ERROR
    for st in stages:
        s, name = m.stages[st.name], st.name
        service = [(b - a) / 1e9 for a, b in zip(log.starts[name], log.ends[name], strict=True)]
        for got, want in (
            (s.service, Distribution.of(service)),
            (s.queue_wait, Distribution.of([w / 1e9 for w in log.waits[name]])),
        ):
            assert got.count == want.count and close_to(got.mean, want.mean)
            assert close_to(got.max, want.max)
            for q in ("p50", "p95", "p99"):
                assert close_to(getattr(got, q), getattr(want, q), within), (name, q)
        assert close_to(s.busy_s, sum(service))
        assert close_to(s.utilisation, sum(service) * 1e9 / (st.workers * span))
        depth = [(t, (d,)) for t, d in log.depth[name]]
        assert close_to(s.mean_queue_depth, step_share(depth, t0, t1, lambda d: d) / span)
        level = full_depth(st.capacity)
        assert close_to(s.full_share, step_share(depth, t0, t1, lambda d, x=level: d >= x) / span)
        both: list[tuple[int, tuple[int, ...]]] = []
        d = f = 0
        changes = [(t, 0, v) for t, v in log.depth[name]]
        changes += [(t, 1, v) for t, v in log.inflight[name]]
        for t, kind, v in sorted(changes, key=lambda c: c[:2]):  # stable: in log order
            d, f = (v, f) if kind == 0 else (d, v)
            both.append((t, (d, f)))
        starved = step_share(both, t0, t1, lambda d, f, w=st.workers: d == 0 and f < w) / span
        assert close_to(s.starved_share, starved), name
    latency = Distribution.of([(log.done[r] - log.read[r]) / 1e9 for r in sorted(log.done)])
    got = m.latency
    assert got.count == latency.count == 3000 and close_to(got.mean, latency.mean)
    for q in ("p50", "p95", "p99"):
        assert close_to(getattr(got, q), getattr(latency, q), within)
    first = min(log.done, key=lambda r: (log.done[r], r))
    assert close_to(m.first_latency_s, (log.done[first] - max(log.read[first], t0)) / 1e9)  # type: ignore[arg-type]
    # Little's law, from the run's start: queues' depths plus the tasks in workers' hands.
    lt = little(rec)
    assert lt is not None
    start = log.started_ns
    queued = sum(
        step_share([(t, (d,)) for t, d in log.depth[st.name]], start, t1, lambda d: d)
        for st in stages
    )
    occupancy = sum(log.dispatch_to_end.values())
    assert close_to(lt.items_in_system, (queued + occupancy) / (t1 - start))
    assert close_to(lt.throughput, 3000 / ((t1 - start) / 1e9))
    assert close_to(lt.mean_latency_s, latency.mean)
    # Every item is in a queue or in a task until its task comes back: L = λ·W exactly.
    assert lt.error == pytest.approx(0, abs=1e-9)
