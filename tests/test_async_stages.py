"""``async def`` stages keep ``concurrency`` calls in flight per worker at all times,
across tasks: a slow call never holds back the others, a failed call is the only
one made again, and the report counts a worker's places for calls, not its threads.

Engine tests wait on conditions the stage functions set, never on the clock; the
analysis tests run in virtual time (``pipesim``)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest

import conveyor as cv
from conftest import conveyor_threads, wait_until
from conveyor.analysis import build_report, measure
from conveyor.core.statistics import QueueStatistics, StageStatistics
from conveyor.observe.recording import Recording
from pipesim import SimStage, simulate

GIVE_UP = 60.0  # seconds a starved call waits before it fails the test


def test_a_slow_call_never_holds_back_the_others() -> None:
    # Item 0 ends only once the 39 others have: one worker with 4 places must keep
    # serving other tasks while it waits. Before, the worker waited for its task's
    # slowest call, so item 0 starved and failed after GIVE_UP seconds.
    done: list[int] = []

    async def call(x: int) -> int:
        if x == 0:
            for _ in range(int(GIVE_UP * 100)):
                if len(done) == 39:
                    return 0
                await asyncio.sleep(0.01)
            raise AssertionError(f"starved: only {len(done)} of 39 calls ran around item 0")
        done.append(x)
        return x

    pipe = cv.Pipeline("tail", [cv.stage(call, workers=1, concurrency=4)])
    assert sorted(pipe.run(range(40)).results) == list(range(40))


def test_calls_in_flight_never_exceed_concurrency_per_worker() -> None:
    lock = threading.Lock()
    now: Counter[int] = Counter()  # calls in flight per worker thread
    peak: Counter[int] = Counter()

    async def call(x: int) -> int:
        me = threading.get_ident()
        with lock:
            now[me] += 1
            peak[me] = max(peak[me], now[me])
        for _ in range(x % 4):
            await asyncio.sleep(0)
        with lock:
            now[me] -= 1
        return x

    pipe = cv.Pipeline("bound", [cv.stage(call, workers=2, concurrency=3)])
    assert sorted(pipe.run(range(500)).results) == list(range(500))
    assert peak and max(peak.values()) <= 3, peak
    assert len(peak) <= 2


def test_a_failed_call_is_the_only_one_made_again() -> None:
    # Every fifth item fails its first call; the others must be called exactly once.
    lock = threading.Lock()
    calls: Counter[int] = Counter()
    successes: Counter[int] = Counter()

    async def call(x: int) -> int:
        with lock:
            calls[x] += 1
            first = calls[x] == 1
        await asyncio.sleep(0)
        if first and x % 5 == 0:
            raise ConnectionError(f"item {x}: try again")
        with lock:
            successes[x] += 1
        return x * 2

    stage = cv.stage(call, concurrency=8, retry=cv.Retry(attempts=3, backoff=0))
    run = cv.Pipeline("flaky", [stage]).run(range(200))
    assert sorted(run.results) == [x * 2 for x in range(200)]
    assert set(successes.values()) == {1} and len(successes) == 200
    assert sum(calls.values()) == 240
    assert run.statistics().stages["call"].retries == 40


def test_closing_a_run_cancels_calls_in_flight_and_leaves_no_thread() -> None:
    started = threading.Event()

    async def call(x: int) -> int:
        if x >= 3:
            started.set()
            await asyncio.sleep(3600)  # never ends by itself
        return x

    pipe = cv.Pipeline("hang", [cv.stage(call, workers=2, concurrency=4)])
    with pipe.stream(range(50)) as run:
        it = iter(run)
        assert next(it) in (0, 1, 2)  # the run starts as it is read
        assert wait_until(started.is_set, GIVE_UP)
        run.close()
        assert list(it) == []  # nothing comes after the close
    assert run.state == "cancelled"
    assert wait_until(lambda: not conveyor_threads(), GIVE_UP), conveyor_threads()


def test_an_async_stage_shrinks_and_grows_while_it_runs() -> None:
    async def call(x: int) -> int:
        await asyncio.sleep(0)
        return x

    pipe = cv.Pipeline("resize", [cv.stage(call, workers=1, concurrency=4)])
    seen = []
    with pipe.stream(range(400)) as run:
        for i, x in enumerate(run):
            seen.append(x)
            if i == 20:
                run.resize("call", 3)
            if i == 100:
                run.resize("call", 1)
            if i == 200:
                run.resize("call", 2)
    assert sorted(seen) == list(range(400))


# --- the report counts places for calls ---------------------------------------------------


def test_an_async_worker_is_measured_by_its_places_for_calls() -> None:
    # fetch: 1 worker, 4 calls of 40 ms in flight: 100 items/s, busy all the time.
    stages = [SimStage("fetch", 40, concurrency=4, capacity=16), SimStage("write", 5)]
    m = measure(simulate(stages, items=400))
    fetch = m.stages["fetch"]
    assert fetch.utilisation == pytest.approx(1.0, abs=0.03)
    assert fetch.capacity == pytest.approx(100, rel=0.03)
    assert fetch.service.mean == pytest.approx(0.040, rel=0.01)  # a call's own time
    assert m.throughput == pytest.approx(100, rel=0.05)


def test_the_limit_moves_off_an_async_stage_once_it_has_enough_places() -> None:
    narrow = [SimStage("fetch", 40, concurrency=4, capacity=32), SimStage("write", 5)]
    wide = [SimStage("fetch", 40, concurrency=16, capacity=32), SimStage("write", 5)]
    r_narrow = build_report(simulate(narrow, items=400))
    r_wide = build_report(simulate(wide, items=400))
    assert r_narrow.bottleneck is not None and r_narrow.bottleneck.stage == "fetch"
    assert r_wide.bottleneck is not None and r_wide.bottleneck.stage == "write"
    # write at 5 ms limits to 200 items/s; fetch's 16 places could do 400
    assert r_wide.measure.throughput == pytest.approx(200, rel=0.05)
    assert r_wide.measure.stages["fetch"].utilisation == pytest.approx(0.5, abs=0.05)


def test_a_recording_keeps_the_concurrency(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = simulate([SimStage("fetch", 4, concurrency=8)], items=50)
    rec.save(tmp_path / "r.json.gz")
    assert Recording.load(tmp_path / "r.json.gz").stages["fetch"].shape.concurrency == 8


def test_busy_share_counts_places() -> None:
    q = QueueStatistics(bound=8, depth=0, peak_depth=0, items_in=10, items_out=10)
    s = StageStatistics("s", "map", "threads", 2, 10, 10, 0, 10, 0, 8.0, q, concurrency=4)
    assert s.busy_share(2.0) == pytest.approx(0.5)  # 8 s of calls / (2 workers × 4 × 2 s)
