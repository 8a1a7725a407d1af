"""The live rebalancer: its policy on scripted events, and on a real run."""

from __future__ import annotations

import time

import pytest

import conveyor as cv
from conveyor.core.events import RunInfo, StageInfo
from conveyor.observe.rebalance import Rebalancer

MS = 1_000_000


class FakeRun:
    """Records resizes the way Run.resize would apply them."""

    def __init__(self, rebalancer: Rebalancer) -> None:
        self.calls: list[tuple[str, int]] = []
        self.rebalancer = rebalancer

    def resize(self, stage: str, workers: int) -> None:
        self.calls.append((stage, workers))
        self.rebalancer.stage_resized(stage, workers, 0)

    def statistics(self) -> None:  # pragma: no cover - not used by the rebalancer
        raise AssertionError


def chain(workers: tuple[int, ...], control: FakeRun, kinds: tuple[str, ...] = ()) -> RunInfo:
    names = [f"s{i}" for i in range(len(workers))]
    return RunInfo(
        run_id="r",
        pipeline="p",
        stages=tuple(
            StageInfo(
                n,
                (kinds[i] if kinds else "map"),
                "threads",
                w,
                16,
                tuple(names[i - 1 : i]),
                tuple(names[i + 1 : i + 2]),
            )
            for i, (n, w) in enumerate(zip(names, workers, strict=True))
        ),
        ordered=False,
        started_ns=0,
        control=control,
    )


def feed(rb: Rebalancer, costs_ms: tuple[int, ...], items: int, start_ms: int = 0) -> None:
    """Every stage runs ``items`` one-item tasks of its cost, all stamped in order."""
    rb.items_read([(i,) for i in range(items)], start_ms * MS)
    t = start_ms
    for i in range(items):
        for k, cost in enumerate(costs_ms):
            name = f"s{k}"
            rb.items_enqueued(name, [(i,)], 1, t * MS)
            rb.task_started(name, i, [(i,)], 0, t * MS)
            rb.task_finished(name, i, 0, [(i,)], [t * MS], [(t + cost) * MS], None)
            t += 1  # scripted time moves on a little between events


def test_moves_workers_to_the_bottleneck_within_the_budget() -> None:
    rb = Rebalancer(8, interval_s=0.05, min_units=5)
    run = FakeRun(rb)
    rb.run_started(chain((3, 3, 2), run))
    feed(rb, (10, 25, 40), items=10)
    assert run.calls == [("s0", 1), ("s2", 4)]  # shrink first, then grow
    (d,) = rb.decisions
    assert d.before == {"s0": 3, "s1": 3, "s2": 2}
    assert d.workers == {"s0": 1, "s1": 3, "s2": 4}
    assert d.demands_s == pytest.approx({"s0": 0.010, "s1": 0.025, "s2": 0.040})
    assert d.predicted_gain == pytest.approx(2.0)
    feed(rb, (10, 25, 40), items=10, start_ms=1000)
    assert len(rb.decisions) == 1  # balanced now: nothing more to do


def test_waits_for_every_stage_to_be_measured() -> None:
    rb = Rebalancer(8, interval_s=0.0, min_units=50)
    run = FakeRun(rb)
    rb.run_started(chain((3, 3, 2), run))
    feed(rb, (10, 25, 40), items=20)
    assert rb.demands() is None and run.calls == []


def test_collect_stages_keep_their_worker_and_budget_is_checked() -> None:
    rb = Rebalancer(6, interval_s=0.01, min_units=5)
    run = FakeRun(rb)
    rb.run_started(chain((2, 2, 1), run, kinds=("map", "map", "collect")))
    feed(rb, (5, 20, 1), items=10)
    assert ("s2", 4) not in run.calls and all(name != "s2" for name, _ in run.calls)
    assert rb.decisions[-1].workers == {"s0": 1, "s1": 4, "s2": 1}
    with pytest.raises(ValueError, match="budget of 2 workers cannot give each of 3 stages"):
        Rebalancer(2).run_started(chain((1, 1, 1), FakeRun(rb)))
    with pytest.raises(ValueError, match="at least 1"):
        Rebalancer(0)


def sleeper(ms: float):  # type: ignore[no-untyped-def]
    def fn(x: int) -> int:
        time.sleep(ms / 1000)
        return x

    fn.__name__ = f"sleep{int(ms)}"
    return fn


@pytest.mark.slow
def test_live_rebalancing_reaches_the_balanced_throughput() -> None:
    def pipe(w: tuple[int, int, int]) -> cv.Pipeline:
        return cv.Pipeline(
            "unb",
            [cv.Stage(sleeper(c), workers=n) for c, n in zip((10, 25, 40), w, strict=True)],
        )

    n = 200
    t = time.perf_counter()
    pipe((3, 3, 2)).run(range(n), record=False)
    equal = n / (time.perf_counter() - t)
    rb = Rebalancer(8, interval_s=0.2)
    t = time.perf_counter()
    run = pipe((3, 3, 2)).run(range(n), instruments=[rb])
    live = n / (time.perf_counter() - t)
    assert rb.decisions and rb.decisions[0].workers == {"sleep10": 1, "sleep25": 3, "sleep40": 4}
    assert run.statistics().stages["sleep40"].workers == 4
    assert sum(s.workers for s in run.statistics().stages.values()) <= 8
    # Equal split: 2 workers on the 40 ms stage, 50 items/s; balanced: 100 items/s.
    assert equal == pytest.approx(50, rel=0.15)
    assert live > 1.5 * equal
