"""Stage fusion: which chains fuse, and that a fused run is the unfused run in every
way a user can see (results, keys, the ledger, per-stage counts and times, dead
letters, errors, retries), only with one hand-off per item instead of one per stage.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
import stagefns as f


def where(x: Any) -> tuple[Any, int, int]:
    """x, with the process and thread that called this."""
    return x, os.getpid(), threading.get_ident()


def same_worker(t: tuple[Any, int, int]) -> bool:
    """Whether this call runs in the worker that ran ``where`` on this item."""
    return t[1:] == (os.getpid(), threading.get_ident())


def even(x: int) -> bool:
    return x % 2 == 0


def pair(x: int) -> list[int]:
    return [x, -x]


SHAPES = {
    # every kind that fuses, each one's values read by the next
    "map-filter-flat_map-map": [
        (f.inc, "map"),
        (even, "filter"),
        (pair, "flat_map"),
        (f.double, "map"),
    ],
    # the first stage's values replaced downstream (they travel as counts), a filter last
    "flat_map-map-filter": [(pair, "flat_map"), (f.inc, "map"), (even, "filter")],
}


def chain(executor: str, shape: str = "map-filter-flat_map-map", **options: Any) -> cv.Pipeline:
    stages = [cv.stage(fn, kind=kind, executor=executor, workers=2) for fn, kind in SHAPES[shape]]
    return cv.Pipeline("chain", stages, **{"fuse": True, **options})


class Ledger(cv.Instrument):
    """Each source item's terminal state, and each stage's recorded calls."""

    def __init__(self) -> None:
        self.states: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.workers: dict[str, set[int]] = collections.defaultdict(set)

    def roots_finished(self, roots: Any, state: str, t_ns: int) -> None:
        self.states[state] += len(roots)

    def task_finished(self, stage: str, task: int, worker: int, keys: Any, *rest: Any) -> None:
        self.calls[stage] += len(keys)
        self.workers[stage].add(worker)


# --- which chains fuse ------------------------------------------------------------------


def test_a_chain_of_map_filter_and_flat_map_on_one_executor_fuses_whole() -> None:
    pipe = chain("threads")
    assert pipe.fused == (("inc", "even", "pair", "double"),)
    plan = pipe.plan()
    assert "inc -> even -> pair -> double" in plan and "fused" in plan
    assert "fused=" in repr(pipe)


@pytest.mark.parametrize(
    "second, why",
    [
        (dict(executor="processes"), "another executor"),
        (dict(workers=3), "another pool size"),
        (dict(retry=2), "a retry on a later stage would rerun the calls before it"),
        (dict(timeout=5.0), "a timeout is per call"),
        (dict(cache=True), "a cache is per stage"),
        (dict(kind="batch", size=4), "a batch gathers many tasks' items"),
        (dict(init=lambda: None), "per-worker set-up"),
        (dict(cpus=2), "other resources"),
    ],
)
def test_stages_that_differ_in_how_they_run_stay_apart(second: dict[str, Any], why: str) -> None:
    fn = f.batch_len if second.get("kind") == "batch" else f.double
    pipe = cv.Pipeline("apart", [cv.stage(f.inc), cv.stage(fn, **second)], fuse=True)
    assert pipe.fused == (), why


def test_a_retry_on_the_first_stage_still_fuses() -> None:
    pipe = cv.Pipeline("head-retry", [cv.stage(f.inc, retry=3), cv.stage(f.double)], fuse=True)
    assert pipe.fused == (("inc", "double"),)


def test_fan_out_fan_in_async_and_class_stages_break_the_chain() -> None:
    a, b, c, d = (cv.stage(f.inc, name=n) for n in "abcd")
    diamond = cv.Pipeline(
        "diamond", [a, b, c, d], edges=[(a, b), (a, c), (b, d), (c, d)], fuse=True
    )
    assert diamond.fused == ()
    asynchronous = cv.Pipeline("async", [cv.stage(f.inc), cv.stage(f.async_double)], fuse=True)
    assert asynchronous.fused == ()
    stateful = cv.Pipeline("class", [cv.stage(f.inc), cv.stage(f.ConcurrencyProbe)], fuse=True)
    assert stateful.fused == ()


def test_by_default_only_stages_on_processes_fuse() -> None:
    # Between threads a hand-off is cheap: fusing costs about what it saves there.
    assert chain("threads", fuse="auto").fused == ()
    assert chain("sync", fuse="auto").fused == ()
    assert chain("processes", fuse="auto").fused == (("inc", "even", "pair", "double"),)
    assert cv.Pipeline("p", [cv.stage(f.inc, executor="processes")]).fuse == "auto"
    with pytest.raises(cv.PipelineError, match="fuse='sometimes'"):
        cv.Pipeline("p", [f.inc], fuse="sometimes")


def test_fuse_false_and_the_config_key_keep_every_stage_apart() -> None:
    assert chain("threads", fuse=False).fused == ()
    assert chain("threads").with_config({"pipeline": {"fuse": False}}).fused == ()
    with pytest.raises(cv.ConfigError, match="fuse"):
        chain("threads").with_config({"pipeline": {"fuse": "no"}})


# --- a fused run is the unfused run ---------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "ordered"), [(s, False) for s in SHAPES] + [(next(iter(SHAPES)), True)]
)
def test_a_fused_run_gives_the_unfused_run_s_results_counts_and_ledger(
    executor: str, shape: str, ordered: bool
) -> None:
    n = 300
    runs = {}
    for fuse in (True, False):
        ledger = Ledger()
        with chain(executor, shape, fuse=fuse).stream(
            range(n), ordered=ordered, instruments=[ledger]
        ) as run:
            results = list(run)
        runs[fuse] = (results, run.statistics().stages, ledger, run.report())
    (fused, stats, ledger, report), (plain, stats0, ledger0, report0) = runs[True], runs[False]
    assert (fused if ordered else sorted(fused)) == (plain if ordered else sorted(plain))
    assert len(fused) == len(plain) > 0
    assert ledger.states == ledger0.states and sum(ledger.states.values()) == n
    names = [fn.__name__ for fn, _ in SHAPES[shape]]
    for name in names:
        counts = (stats[name].items_in, stats[name].items_out, stats[name].calls)
        assert counts == (stats0[name].items_in, stats0[name].items_out, stats0[name].calls)
        assert ledger.calls[name] == ledger0.calls[name]  # every call recorded, per stage
        assert report.measure.stages[name].units == report0.measure.stages[name].units
        assert stats[name].busy_seconds > 0
        assert stats[name].queue.items_in == stats0[name].queue.items_in
    # Only the head's tasks were dispatched: one hand-off per item, not one per stage.
    assert [stats[name].tasks for name in names[1:]] == [0] * (len(names) - 1)


def test_each_item_runs_the_whole_chain_in_one_worker(executor: str) -> None:
    pipe = cv.Pipeline(
        "one-worker",
        [
            cv.stage(where, executor=executor, workers=2),
            cv.stage(same_worker, executor=executor, workers=2),
        ],
        fuse=True,
    )
    assert pipe.fused
    assert pipe.run(range(200)).results == [True] * 200
    unfused = cv.Pipeline("apart", list(pipe.stages.values()), fuse=False)
    if executor == "processes":  # two pools of processes: never the same process
        assert not any(unfused.run(range(50)).results)


# --- faults, policies and the contract ----------------------------------------------------


def test_a_later_stage_s_failure_is_dead_lettered_there_with_the_value_it_got(
    executor: str,
) -> None:
    pipe = cv.Pipeline(
        "skip",
        [
            cv.stage(f.inc, executor=executor),
            cv.stage(f.bad_on_multiples_of_10, executor=executor, on_error="skip"),
            cv.stage(f.double, executor=executor),
        ],
        fuse=True,
    )
    assert pipe.fused
    letters: list[tuple[str, Any, Any]] = []

    class Letters(cv.Instrument):
        def dead_lettered(self, stage: str, key: Any, value: Any, *rest: Any) -> None:
            letters.append((stage, key, value))

    ledger = Ledger()
    run = pipe.run(range(100), instruments=[Letters(), ledger])
    assert sorted(run.results) == [2 * (x + 1) for x in range(100) if (x + 1) % 10]
    assert sorted(letters) == [("bad_on_multiples_of_10", (x,), x + 1) for x in range(9, 100, 10)]
    assert ledger.states == {"done": 90, "dead_lettered": 10}
    stats = run.statistics().stages
    assert (
        stats["bad_on_multiples_of_10"].errors
        == stats["bad_on_multiples_of_10"].dead_lettered
        == 10
    )
    assert stats["inc"].errors == 0 and stats["inc"].calls == 100  # its calls never repeat


def test_a_later_stage_s_failure_fails_the_run_naming_it(executor: str) -> None:
    pipe = cv.Pipeline(
        "fail",
        [cv.stage(f.inc, executor=executor), cv.stage(f.fail_on_13, executor=executor)],
        fuse=True,
    )
    assert pipe.fused
    with pytest.raises(cv.StageError) as info:
        pipe.run(range(40))
    assert info.value.stage == "fail_on_13" and info.value.key == (12,)


def test_an_unpicklable_exception_of_a_later_process_stage_still_names_it() -> None:
    pipe = cv.Pipeline(
        "unpicklable",
        [
            cv.stage(f.inc, executor="processes"),
            cv.stage(f.raise_unpicklable, executor="processes"),
        ],
        fuse=True,
    )
    assert pipe.fused
    with pytest.raises(cv.StageError, match="Unpicklable") as info:
        pipe.run(range(5))
    assert info.value.stage == "raise_unpicklable"


def test_a_retried_first_stage_never_repeats_the_later_stages_calls(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.log")
    pipe = cv.Pipeline(
        "retry",
        [
            cv.stage(f.flaky, retry=cv.Retry(attempts=50, backoff=0.0)),
            cv.stage(functools.partial(f.logged_square, log)),
        ],
        fuse=True,
    )
    assert pipe.fused
    assert sorted(pipe.run(range(200)).results) == [x * x for x in range(200)]
    assert sorted(f.calls(log)) == list(range(200))  # once each: never rerun


def test_a_worker_killed_mid_chain_loses_and_repeats_nothing_downstream(tmp_path: Path) -> None:
    marker = str(tmp_path / "killed")
    pipe = cv.Pipeline(
        "killed",
        [
            cv.stage(f.inc, executor="processes", workers=2, retry=2),
            cv.stage(functools.partial(f.kill_once, marker), executor="processes", workers=2),
        ],
        fuse=True,
    )
    assert pipe.fused
    ledger = Ledger()
    run = pipe.run(range(60), instruments=[ledger])
    assert os.path.exists(marker)  # the worker did die, in the later stage
    assert sorted(run.results) == [x + 1 for x in range(60)]  # none lost, none twice
    assert ledger.states == {"done": 60}


def test_ctrl_c_in_a_later_sync_stage_reaches_the_caller() -> None:
    def interrupt(x: int) -> int:
        if x == 3:
            raise KeyboardInterrupt
        return x

    pipe = cv.Pipeline(
        "sync", [cv.stage(f.inc, executor="sync"), cv.stage(interrupt, executor="sync")], fuse=True
    )
    assert pipe.fused
    with pytest.raises(KeyboardInterrupt):
        pipe.run(range(10))


def test_resizing_any_stage_of_a_chain_resizes_the_chain() -> None:
    pipe = chain("threads")
    with pipe.stream(range(50)) as run:
        run.resize("pair", 3)
        results = list(run)
        stats = run.statistics().stages
    assert len(results) == 50
    assert {stats[n].workers for n in ("inc", "even", "pair", "double")} == {3}


# --- the report knows fused stages share their workers ---------------------------------------


def test_the_recording_keeps_which_stages_ran_fused(tmp_path: Path) -> None:
    run = chain("threads").run(range(50))
    path = tmp_path / "run.cvrec"
    run.recording.save(path)
    loaded = type(run.recording).load(path)
    group = ("inc", "even", "pair", "double")
    assert {s.name: s.shape.fused for s in loaded.stages.values()} == dict.fromkeys(group, group)
    assert run.report().measure.stages["pair"].fused == group
    table = run.report().render()
    row = next(line for line in table.splitlines() if line.split()[:1] == ["pair"])
    assert "threads×8 fused" in row  # one pool with the 4 stages' 2 workers each


def test_the_model_gives_a_fused_chain_one_pool_and_resizes_it_whole() -> None:
    from conveyor.analysis import Model, StageModel, predict

    ab = ("a", "b")
    model = Model(
        (
            StageModel("a", demand_s=0.010, unit_s=0.010, workers=2, fused=ab),
            StageModel("b", demand_s=0.030, unit_s=0.030, workers=2, predecessors=("a",), fused=ab),
            StageModel("c", demand_s=0.015, unit_s=0.015, workers=1, predecessors=("b",)),
        )
    )
    now = predict(model)
    # a and b share two workers: 0.040 s per item over 2 = 0.020 s, slower than c's 0.015;
    # unfused, b alone (0.030 / 2) would have looked as fast as c.
    assert now.bottleneck == "b" and now.period_s == pytest.approx(0.020)
    more = predict(model, workers={"a": 4})  # resizing either one resizes the pool
    assert more.workers == {"a": 4, "b": 4, "c": 1}
    assert more.bottleneck == "c" and more.period_s == pytest.approx(0.015)


def test_balancing_gives_a_fused_chain_one_pool_counted_once() -> None:
    from conveyor.analysis import balance
    from conveyor.analysis._balance import throughput_of

    demands = {"a": 0.010, "b": 0.030, "c": 0.015}
    # a and b share a pool: 0.040 s per item; 5 workers: the pool 3 (75/s), c 2 (133/s).
    alloc = balance(demands, 5, fused=[("a", "b")])
    assert alloc.workers == {"a": 3, "b": 3, "c": 2}
    assert alloc.throughput == pytest.approx(75.0) and alloc.bottleneck == "b"
    assert throughput_of(demands, {"a": 2, "b": 2, "c": 2}, [("a", "b")]) == pytest.approx(50.0)


def test_a_fused_run_s_report_advises_one_size_for_the_whole_chain() -> None:
    pipe = cv.Pipeline(
        "advice",
        [cv.stage(f.slow, workers=2), cv.stage(f.inc, workers=2), cv.stage(f.double, workers=1)],
        fuse=True,
    )
    assert pipe.fused == (("slow", "inc"),)
    report = pipe.run(range(60)).report()
    model = report.model
    assert model.fused == (("slow", "inc"),)
    assert model.pools(model.workers) == 5  # the chain's pool of 2 + 2, and double's 1
    assert report.allocation is not None  # the sleeping chain limits the run
    assert report.allocation.workers["slow"] == report.allocation.workers["inc"]
    assert model.pools(report.allocation.workers) <= 5


def test_a_result_of_a_fused_process_chain_that_cannot_travel_fails_only_its_item() -> None:
    # Only the chain's output crosses back, whole: a value that cannot be pickled there
    # is blamed on the chain's first stage, whose policy decides (here: skip it).
    pipe = cv.Pipeline(
        "unpicklable-result",
        [
            cv.stage(f.inc, executor="processes", on_error="skip"),
            cv.stage(f.lock_on_3, executor="processes"),
        ],
    )
    assert pipe.fused
    letters: list[tuple[str, Any]] = []

    class Letters(cv.Instrument):
        def dead_lettered(self, stage: str, key: Any, value: Any, error: Any, *rest: Any) -> None:
            letters.append((stage, key))
            assert "cannot be pickled" in str(error)

    run = pipe.run(range(6), instruments=[Letters()])
    assert sorted(run.results) == [1, 2, 4, 5, 6]
    assert letters == [("inc", (2,))]


def never(x: int) -> bool:
    return False


def test_a_stage_that_nothing_reaches_has_no_task_started_or_finished(executor: str) -> None:
    # Every task_finished has its task_started, per stage, as if unfused: a stage after
    # a filter that dropped a whole task gets neither.
    events: dict[str, collections.Counter[str]] = {
        "started": collections.Counter(),
        "finished": collections.Counter(),
    }

    class Checks(cv.Instrument):
        def task_started(self, stage: str, *rest: Any) -> None:
            events["started"][stage] += 1

        def task_finished(self, stage: str, *rest: Any) -> None:
            events["finished"][stage] += 1

    pipe = cv.Pipeline(
        "dropped",
        [
            cv.stage(f.inc, executor=executor),
            cv.stage(never, kind="filter", executor=executor),
            cv.stage(f.double, executor=executor),
        ],
        fuse=True,
    )
    assert pipe.fused and pipe.run(range(50), instruments=[Checks()]).results == []
    assert events["started"] == events["finished"]
    assert events["finished"]["double"] == 0


def test_a_fused_chain_keeps_every_stage_s_workers() -> None:
    # Two stages of one worker each: apart they run at once, on two workers. Fused, the
    # chain's pool has both workers, so the two stages' calls still run two at a time.
    pipe = cv.Pipeline(
        "two", [cv.stage(f.inc, workers=1), cv.stage(f.double, workers=1)], fuse=True
    )
    assert pipe.fused == (("inc", "double"),)
    run = pipe.run(range(20))
    assert sorted(run.results) == sorted(2 * (x + 1) for x in range(20))
    stats = run.statistics().stages
    assert stats["inc"].workers == stats["double"].workers == 2
    assert run.report().model.pools(run.report().model.workers) == 2
