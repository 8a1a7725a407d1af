"""Service mode: a run in the background, pushed items answered by future, control
from any thread, drain, and the commit watermark."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import conveyor as cv
import streamfns as sf
from conftest import wait_until

TIMEOUT = 60.0  # only catches hangs


def endless(read: list[int]) -> Iterator[int]:
    """An endless source that counts what it handed over."""
    i = 0
    while True:
        read[0] = i + 1
        yield i
        i += 1


def test_submit_answers_each_caller_with_its_own_result(executor: str) -> None:
    pipe = cv.Pipeline(
        "svc", [cv.Stage(sf.plus_100, executor=executor), cv.Stage(sf.times_10, executor=executor)]
    )
    with pipe.start() as service:
        with ThreadPoolExecutor(8) as callers:
            futures = list(callers.map(service.submit, range(500)))
        assert [f.result(TIMEOUT) for f in futures] == [(x + 100) * 10 for x in range(500)]
    assert service.state == "succeeded"
    stats = service.statistics()
    assert stats.items_read == 500 and stats.items_emitted == 0  # answered, not emitted


def test_a_pushed_item_that_is_filtered_out_or_dead_lettered_says_so() -> None:
    pipe = cv.Pipeline(
        "svc",
        [
            cv.Stage(sf.fail_on_3, on_error="skip"),
            cv.Stage(sf.is_even, kind="filter"),
        ],
    )
    with pipe.start() as service:
        assert service.submit(2).result(TIMEOUT) == 2
        assert service.submit(5).result(TIMEOUT) is None  # filtered out
        with pytest.raises(cv.StageError, match="dead-lettered this item: ValueError: three"):
            service.submit(3).result(TIMEOUT)


def test_a_failed_run_fails_every_waiting_caller_with_its_error() -> None:
    pipe = cv.Pipeline("svc", [cv.Stage(sf.fail_on_3)])
    service = pipe.start()
    futures = [service.submit(x) for x in (1, 3)]
    with pytest.raises(cv.StageError, match="three"):
        futures[1].result(TIMEOUT)
    assert service.stop(timeout=TIMEOUT) == "failed"
    with pytest.raises(cv.RunError, match="takes no more items"):
        service.submit(4)


def test_drain_finishes_every_item_read_and_balances(executor: str) -> None:
    read = [0]
    results: list[int] = []
    pipe = cv.Pipeline(
        "svc",
        [cv.Stage(sf.plus_100, executor=executor, workers=2), cv.Stage(sf.times_10)],
        capacity=16,
    )
    service = pipe.start(endless(read), on_result=results.append)
    assert wait_until(lambda: len(results) >= 200, TIMEOUT)
    assert service.stop(drain=True, timeout=TIMEOUT) == "cancelled"  # the source had more
    stats = service.statistics()
    # Every item read was finished, in order of reading: nothing in flight was dropped.
    assert stats.items_read == len(results) == service.watermark
    assert sorted(results) == [(x + 100) * 10 for x in range(stats.items_read)]
    assert read[0] <= stats.items_read + 1  # at most the item the reader held when closed


def test_stop_without_drain_ends_at_once_from_another_thread() -> None:
    gate = threading.Event()
    pipe = cv.Pipeline("svc", [cv.Stage(sf.plus_100)])
    service = pipe.start(endless([0]), on_result=lambda _: gate.set())
    assert gate.wait(TIMEOUT)
    stopper = threading.Thread(target=service.stop, kwargs={"drain": False})
    stopper.start()
    stopper.join(TIMEOUT)
    assert service.state == "cancelled"


def test_a_service_over_a_finite_source_ends_by_itself_and_can_be_iterated(executor: str) -> None:
    pipe = cv.Pipeline("svc", [cv.Stage(sf.plus_100, executor=executor)])
    service = pipe.start(iter(range(300)), buffer=8)
    assert sorted(service) == list(range(100, 400))
    assert service.wait(TIMEOUT) == "succeeded"


def test_resize_and_watermark_are_safe_from_another_thread() -> None:
    pipe = cv.Pipeline("svc", [cv.Stage(sf.plus_100, name="work")], ordered=True)
    seen: list[int] = []
    service = pipe.start(endless([0]), on_result=seen.append)
    assert wait_until(lambda: len(seen) > 50, TIMEOUT)
    service.resize("work", 3)
    assert wait_until(lambda: service.statistics().stages["work"].live_workers == 3, TIMEOUT)
    with pytest.raises(cv.PipelineError, match="no such stage"):
        service.resize("nope", 2)
    assert service.watermark >= 50
    service.stop(timeout=TIMEOUT)
    assert seen == list(range(100, 100 + len(seen)))  # ordered
    assert service.watermark == service.statistics().items_read == len(seen)


def test_an_on_result_that_raises_fails_the_run() -> None:
    def boom(_: int) -> None:
        raise RuntimeError("sink down")

    service = cv.Pipeline("svc", [cv.Stage(sf.plus_100)]).start(iter(range(10)), on_result=boom)
    with pytest.raises(RuntimeError, match="sink down"):
        service.wait(TIMEOUT)
    assert service.state == "failed"


def test_submit_needs_a_service() -> None:
    run = cv.Pipeline("p", [cv.Stage(sf.plus_100)]).stream(range(3))
    with pytest.raises(cv.RunError, match=r"Pipeline\.start"):
        run.submit(1)
    run.close()


def test_watermark_of_an_unordered_stream_counts_only_finished_prefixes() -> None:
    gate = threading.Event()

    def held(x: int) -> int:
        if x == 5:
            assert gate.wait(TIMEOUT)
        return x

    pipe = cv.Pipeline("p", [cv.Stage(held, workers=4)])
    with pipe.stream(range(40), record=False) as run:
        got = [next(run) for _ in range(30)]
        assert 5 not in got
        assert run.watermark == 5  # item 5 holds it, whatever finished after it
        gate.set()
        rest = list(run)
    assert sorted(got + rest) == list(range(40))
    assert run.watermark == 40


def test_the_store_of_a_long_run_keeps_one_row_per_contiguous_range(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from conveyor.store import RunStore, StoreRecorder

    store = RunStore(tmp_path / "runs.db")
    pipe = cv.Pipeline("long", [cv.Stage(sf.jitter_id, workers=4), cv.Stage(sf.plus_100)])
    # Small flushes and out-of-order finishes: hundreds of batches, each leaving gaps
    # that later batches fill.
    recorder = StoreRecorder(store, pipeline=pipe, flush_rows=50, flush_seconds=0.01)
    run = pipe.run(iter(range(20_000)), instruments=[recorder], record=False)
    assert len(run.results) == 20_000
    store.close()
    db = sqlite3.connect(tmp_path / "runs.db")
    try:
        ranges = db.execute(
            "SELECT stage, first, last FROM item_ranges WHERE run_id = ? ORDER BY stage", (run.id,)
        ).fetchall()
        roots = db.execute("SELECT first, last, state FROM roots WHERE run_id = ?", (run.id,))
        assert ranges == [("jitter_id", 0, 19_999), ("plus_100", 0, 19_999)]
        assert roots.fetchall() == [(0, 19_999, "done")]
    finally:
        db.close()


def test_a_service_whose_results_nobody_reads_can_still_be_stopped() -> None:
    # The result buffer fills and holds the run back; stop(drain=False) from another
    # thread must still end it (the controls run while the buffer is full).
    service = cv.Pipeline("svc", [cv.Stage(sf.plus_100)]).start(endless([0]), buffer=4)
    assert wait_until(lambda: service.statistics().items_read >= 4, TIMEOUT)
    assert service.stop(drain=False, timeout=TIMEOUT) == "cancelled"
    assert service.error is None
    assert len(list(service)) <= 4  # what was buffered can still be read


def test_a_service_with_progress_writes_its_figures_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = cv.Pipeline("shown", [cv.Stage(sf.plus_100)]).start(iter(range(20)), progress=True)
    assert sorted(service) == list(range(100, 120))
    assert service.wait(TIMEOUT) == "succeeded"
    err = capsys.readouterr().err  # not a terminal: plain lines, the last at the end
    assert "shown: succeeded" in err and "20 read" in err
