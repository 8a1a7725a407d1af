"""Pipelines over streams: sources read on their own thread, time-bounded batches,
class stages, joins, folds and bytes-bounded queues, on every executor."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import conveyor as cv
import streamfns as sf
from conftest import wait_until

TIMEOUT = 60.0  # only catches hangs: a loaded machine is slow, never this slow


# --- sources ------------------------------------------------------------------------


def gated(ready: int, gate: threading.Event, log: list[str]) -> Iterator[int]:
    """``ready`` items at once, then one more only after ``gate`` opens."""
    try:
        yield from range(ready)
        assert gate.wait(TIMEOUT)
        yield ready
    finally:
        log.append("closed")


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_items_ready_at_once_are_processed_while_the_source_blocks(executor: str) -> None:
    # The source hands over five items, then blocks. Read on the scheduler's thread in
    # one burst, none would be processed until the sixth came; read on its own thread,
    # every ready item comes out while the source still blocks.
    gate, log = threading.Event(), []
    pipe = cv.Pipeline("p", [cv.Stage(sf.plus_100, executor=executor)])
    with pipe.stream(gated(5, gate, log), record=False) as run:
        got = sorted(next(run) for _ in range(5))
        assert got == [100, 101, 102, 103, 104]
        gate.set()
        assert list(run) == [105]
    assert run.state == "succeeded"
    assert log == ["closed"]


def test_a_closed_run_closes_its_generator_in_the_reader_thread() -> None:
    gate, log = threading.Event(), []
    pipe = cv.Pipeline("p", [cv.Stage(sf.plus_100)])
    run = pipe.stream(gated(3, gate, log), record=False)
    assert next(run) >= 100
    run.close()
    gate.set()  # the reader, blocked in the generator, returns and closes it
    assert wait_until(lambda: log == ["closed"], TIMEOUT)


def test_async_iterable_sources_are_read_on_their_own_event_loop(executor: str) -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(50):
            await asyncio.sleep(0)
            yield i

    pipe = cv.Pipeline("p", [cv.Stage(sf.plus_100, executor=executor)], ordered=True)
    assert pipe.run(numbers(), record=False).results == list(range(100, 150))


def test_a_source_that_raises_names_the_item_it_was_reading(executor: str) -> None:
    def source() -> Iterator[int]:
        yield from range(7)
        raise OSError("disk gone")

    pipe = cv.Pipeline("p", [cv.Stage(sf.plus_100, executor=executor)])
    with pytest.raises(cv.StageError, match="source raised OSError while reading item 7") as info:
        pipe.run(source(), record=False)
    assert info.value.stage == "<source>" and info.value.key == (7,)


def test_a_slow_consumer_stops_a_threaded_source_at_the_queue_bound() -> None:
    read = 0

    def counting() -> Iterator[int]:
        nonlocal read
        for i in range(10_000):
            read = i + 1
            yield i

    pipe = cv.Pipeline("p", [cv.Stage(sf.plus_100, capacity=8)], capacity=4)
    with pipe.stream(counting(), record=False) as run:
        next(run)
        # Not consuming: what was read is bounded by the queue and the output buffer
        # (what the reader holds counts against the queue's room), never by the
        # source's length.
        wait_until(lambda: read > 40, 0.5)
        assert read <= 8 + 4 + 2  # the queue, the output buffer, one taken, one being read
    assert read < 10_000


# --- time-bounded batches -------------------------------------------------------------


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_a_partial_batch_goes_after_max_wait_on_an_idle_stream(executor: str) -> None:
    # One item, then the source blocks: without max_wait the batch of 32 would wait
    # for the source's end (here: for the gate, which opens only after the result).
    gate, log = threading.Event(), []
    batch = cv.Stage(sf.batch_sizes, kind="batch", size=32, max_wait=0.01, executor=executor)
    pipe = cv.Pipeline("p", [batch])
    with pipe.stream(gated(1, gate, log), record=False) as run:
        assert next(run) == 1
        gate.set()
        assert list(run) == [1]


def test_max_wait_only_flushes_what_has_waited(executor: str) -> None:
    batch = cv.Stage(sf.batch_sizes, kind="batch", size=10, max_wait=30.0, executor=executor)
    # A finite source: full batches go as they fill, the rest at the end, none early.
    assert sorted(cv.Pipeline("p", [batch]).run(range(35), record=False).results) == [
        5,
        10,
        10,
        10,
    ]


def test_max_wait_is_checked_when_the_stage_is_made() -> None:
    with pytest.raises(cv.PipelineError, match="max_wait is only for kind='batch'"):
        cv.Stage(sf.plus_100, max_wait=0.1)
    with pytest.raises(cv.PipelineError, match="max_wait=-1"):
        cv.Stage(sf.batch_sizes, kind="batch", size=2, max_wait=-1)


# --- class stages ---------------------------------------------------------------------


def test_a_class_stage_makes_one_instance_per_worker_and_closes_it(
    executor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "closed.log"
    monkeypatch.setenv("CONVEYOR_TEST_CLOSE_LOG", str(log))
    workers = 1 if executor == "sync" else 2
    pipe = cv.Pipeline("p", [cv.Stage(sf.Tagger, workers=workers, executor=executor)])
    results = pipe.run(range(400), record=False).results
    assert sorted(x for x, _, _ in results) == list(range(400))
    instances = {inst for _, inst, _ in results}
    workers_seen = {w for _, _, w in results}
    # One instance per worker that ran items, never one per item.
    assert 1 <= len(instances) <= workers
    assert len(instances) == len(workers_seen)
    closed = log.read_text().split()
    assert sorted(closed[1::2], key=int) and sum(map(int, closed[1::2])) == 400
    assert len(closed) // 2 == len(instances)


def test_a_class_stage_takes_arguments_through_partial(executor: str) -> None:
    stage = cv.Stage(functools.partial(sf.NeedsArgs, "model.bin"), executor=executor)
    assert stage.name == "NeedsArgs"
    pipe = cv.Pipeline("p", [stage], ordered=True)
    assert pipe.run(range(3), record=False).results == ["model.bin:0", "model.bin:1", "model.bin:2"]


def test_a_class_whose_arguments_are_missing_is_rejected_when_made() -> None:
    with pytest.raises(cv.PipelineError, match=r"functools.partial\(YourClass"):
        cv.Stage(sf.NeedsArgs)


def test_a_class_that_fails_to_set_up_fails_the_run_naming_the_stage(executor: str) -> None:
    pipe = cv.Pipeline("p", [cv.Stage(sf.BrokenInit, executor=executor)])
    with pytest.raises(cv.StageError, match="BrokenInit") as info:
        pipe.run(range(3), record=False)
    assert "model file missing" in str(info.value.__cause__)


def test_an_async_class_stage(executor: str) -> None:
    pipe = cv.Pipeline("p", [cv.Stage(sf.AsyncScaler, executor=executor)], ordered=True)
    assert pipe.run(range(4), record=False).results == [0, 3, 6, 9]


# --- joins ---------------------------------------------------------------------------------


def _join_pipeline(executor: str, left: object, right: object) -> cv.Pipeline:
    split = cv.Stage(sf.plus_100, name="split", executor=executor)
    a = cv.Stage(left, name="a", executor=executor)  # type: ignore[arg-type]
    b = cv.Stage(right, name="b", executor=executor)  # type: ignore[arg-type]
    both = cv.Stage(sf.joined, name="both", join=True, executor=executor)
    return cv.Pipeline(
        "join",
        [split, a, b, both],
        edges=[(split, a), (split, b), (a, both), (b, both)],
        capacity=8,
    )


def test_a_join_sees_each_items_results_from_both_branches(executor: str) -> None:
    pipe = _join_pipeline(executor, sf.plus_100, sf.times_10)
    results = pipe.run(range(300), record=False).results
    assert sorted(results) == sorted((("a", x + 200), ("b", (x + 100) * 10)) for x in range(300))


def test_a_join_releases_items_a_branch_filtered_out(executor: str) -> None:
    split = cv.Stage(sf.plus_100, name="split", executor=executor)
    a = cv.Stage(sf.plus_100, name="a", executor=executor)
    b = cv.Stage(sf.is_even, name="b", kind="filter", executor=executor)
    both = cv.Stage(sf.joined, name="both", join=True, executor=executor)
    pipe = cv.Pipeline(
        "join", [split, a, b, both], edges=[(split, a), (split, b), (a, both), (b, both)]
    )
    results = pipe.run(range(200), record=False).results
    # Odd items never come from b: they go on with a's result alone, nothing waits.
    assert len(results) == 200
    assert sorted(results) == sorted(
        (("a", x + 200), ("b", x + 100)) if x % 2 == 0 else (("a", x + 200),) for x in range(200)
    )


def test_a_join_releases_items_a_branch_dead_lettered(executor: str) -> None:
    # Two entry stages read every source item; b dead-letters item 3.
    pipe = cv.Pipeline(
        "join",
        [
            cv.Stage(sf.plus_100, name="a", executor=executor),
            cv.Stage(sf.fail_on_3, name="b", on_error="skip", executor=executor),
            cv.Stage(sf.joined, name="both", join=True, executor=executor),
        ],
        edges=[("a", "both"), ("b", "both")],
    )
    run = pipe.run(range(6), record=False)
    assert sorted(run.results) == sorted(
        (("a", x + 100), ("b", x)) if x != 3 else (("a", 103),) for x in range(6)
    )
    assert run.statistics().stages["b"].dead_lettered == 1


def test_join_needs_two_predecessors() -> None:
    with pytest.raises(cv.PipelineError, match="join=True but 1 predecessor"):
        cv.Pipeline("p", [cv.Stage(sf.plus_100), cv.Stage(sf.joined, join=True)])


def test_a_filter_keeps_the_items_it_passes_unchanged(executor: str) -> None:
    stage = cv.Stage(sf.is_even, kind="filter", executor=executor, workers=2)
    run = cv.Pipeline("p", [stage], ordered=True).run(range(100))
    assert run.results == list(range(0, 100, 2))
    assert run.statistics().stages["is_even"].items_out == 50


# --- folds ---------------------------------------------------------------------------------


def test_a_fold_sums_over_every_executor(executor: str) -> None:
    workers = 1 if executor == "sync" else 2
    fold = cv.Stage(
        sf.add, kind="fold", initial=0, combine=sf.add_pair, workers=workers, executor=executor
    )
    run = cv.Pipeline("p", [cv.Stage(sf.plus_100, executor=executor), fold]).run(range(5000))
    assert run.results == [sum(range(100, 5100))]
    assert run.statistics().stages["add"].items_in == 5000


def test_a_fold_feeds_the_next_stage_once() -> None:
    fold = cv.Stage(sf.count_words, kind="fold", initial={}, combine=sf.merge_counts, workers=2)
    words = ["a", "b", "a", "c", "a"] * 200
    run = cv.Pipeline("p", [fold, cv.Stage(len, name="distinct")]).run(words)
    assert run.results == [3]


@pytest.mark.slow
def test_a_fold_over_a_million_rows_holds_only_its_state() -> None:
    fold = cv.Stage(sf.add, kind="fold", initial=0, combine=sf.add_pair, workers=2)
    pipe = cv.Pipeline("p", [fold])
    rows = (i for i in range(1_000_000))
    tracemalloc.start()
    try:
        results = pipe.run(rows, record=False).results
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert results == [sum(range(1_000_000))]
    # A collect would hold a million ints (> 36 MB with its list); the fold holds its
    # queues' worth of items and the state.
    assert peak < 8 << 20, peak


def test_a_fold_is_checked_when_made() -> None:
    with pytest.raises(cv.PipelineError, match="needs initial"):
        cv.Stage(sf.add, kind="fold", combine=sf.add_pair)
    with pytest.raises(cv.PipelineError, match="needs combine"):
        cv.Stage(sf.add, kind="fold", initial=0)
    with pytest.raises(cv.PipelineError, match="two arguments"):
        cv.Stage(sf.plus_100, kind="fold", initial=0, combine=sf.add_pair)
    with pytest.raises(cv.PipelineError, match="initial is only for kind='fold'"):
        cv.Stage(sf.plus_100, initial=0)


# --- bytes-bounded queues ------------------------------------------------------------------


def test_a_queue_bounded_in_bytes_holds_about_that_many_bytes() -> None:
    make = cv.Stage(sf.megabyte, workers=2)
    use = cv.Stage(sf.size_of, capacity_bytes=4 << 20)
    run = cv.Pipeline("p", [make, use]).run(range(64), record=False)
    assert sum(run.results) == 64 << 20
    peak = run.statistics().stages["size_of"].queue.peak_depth
    assert peak <= 5, peak  # 4 MiB of 1 MiB items (one more while the size is unknown)


def test_capacity_bytes_is_checked() -> None:
    with pytest.raises(cv.PipelineError, match="capacity_bytes=0"):
        cv.Stage(sf.plus_100, capacity_bytes=0)
    with pytest.raises(cv.PipelineError, match="capacity_bytes"):
        cv.Pipeline("p", [sf.plus_100], capacity_bytes=-5)


def test_no_thread_is_left_after_a_stream(executor: str) -> None:
    pipe = cv.Pipeline("p", [cv.Stage(sf.plus_100, executor=executor)])
    assert len(pipe.run(iter(range(100)), record=False).results) == 100
    assert wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("conveyor-source")]
    )
    assert os.getpid()


def test_setting_up_a_class_stage_shows_as_warm_up_in_the_report() -> None:
    run = cv.Pipeline("p", [cv.Stage(sf.SlowToLoad)]).run(range(50))
    assert run.results and sorted(run.results) == list(range(50))
    text = run.report().render()
    assert "warm-up: the first unit ran slower than the median in SlowToLoad" in text


def test_a_bytes_bound_measures_chunks_of_lines() -> None:
    # Chunks of 20,000 lines (about 1 MB of text each, as lists of strings): a bound of
    # 8 MB holds about 8 of them, where a bound of 128 items would hold 128 MB.
    make = cv.Stage(sf.line_chunk, workers=2)
    count = cv.Stage(sf.chunk_lines, capacity_bytes=8 << 20)
    run = cv.Pipeline("p", [make, count]).run(range(40), record=False)
    assert sum(run.results) == 40 * 20_000
    assert run.statistics().stages["chunk_lines"].queue.peak_depth <= 9


def test_an_abandoned_stream_stops_its_reader_and_workers() -> None:
    import gc

    pipe = cv.Pipeline("p", [cv.Stage(sf.plus_100, workers=2)])
    run = pipe.stream(iter(range(10**9)), record=False)
    assert next(run) >= 100
    del run
    gc.collect()
    assert wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("conveyor-")]
    )


# --- default bounds that grow for small items -------------------------------------------


def test_a_default_queue_of_small_items_grows_to_1024_and_never_past() -> None:
    make = cv.Stage(sf.plus_100, executor="processes", workers=2)
    use = cv.Stage(sf.plus_100, name="plus_100_2")
    run = cv.Pipeline("p", [make, use], fuse=False).run(range(20_000), record=False)
    assert sorted(run.results) == [i + 200 for i in range(20_000)]
    stats = run.statistics().stages
    for name in ("plus_100", "plus_100_2"):
        queue = stats[name].queue
        assert queue.bound == 1024 and queue.peak_depth <= 1024, (name, queue)
    # what grew is the size of a process task: far more than 128 over the free slots
    assert stats["plus_100"].items_in / stats["plus_100"].tasks > 64


def test_large_items_keep_the_default_128_places() -> None:
    make = cv.Stage(sf.megabyte, workers=2)  # 1 MiB each
    use = cv.Stage(sf.size_of)
    run = cv.Pipeline("p", [make, use]).run(range(200), record=False)
    assert sum(run.results) == 200 << 20
    queue = run.statistics().stages["size_of"].queue
    assert queue.bound == 128 and queue.peak_depth <= 128


@pytest.mark.parametrize(
    ("pipeline", "stage"),
    [({"capacity": 128}, {}), ({}, {"capacity": 64}), ({"capacity_bytes": 1 << 30}, {})],
)
def test_a_bound_the_user_gave_never_grows(pipeline: dict, stage: dict) -> None:
    use = cv.Stage(sf.plus_100, **stage)
    run = cv.Pipeline("p", [use], **pipeline).run(range(5_000), record=False)
    assert len(run.results) == 5_000
    queue = run.statistics().stages["plus_100"].queue
    assert queue.bound == stage.get("capacity", 128)
    assert queue.peak_depth <= queue.bound


def test_a_grown_bound_shrinks_back_when_the_items_grow() -> None:
    from conveyor.core.flow import GROWN_BYTES, StageQueue

    q = StageQueue(128, grow_to=1024)
    q.put([((i,), i) for i in range(8)])  # ints: tiny
    assert q.bound == 1024 and q.max_bound == 1024
    q.put([((i,), b"x" * 4096) for i in range(64)])  # 4 KiB each: about 1 MiB of them
    assert 128 <= q.bound < 1024
    assert q.bound == pytest.approx(GROWN_BYTES / q.item_bytes, abs=1)
    for _ in range(20):
        q.put([((0,), b"x" * (1 << 20))])  # 1 MiB each: back to the floor, never under
    assert q.bound == 128
    assert q.room() == 128 - len(q.items)
    fixed = StageQueue(128)
    fixed.put([((i,), i) for i in range(8)])
    assert fixed.bound == 128 and fixed.max_bound == 128
    slow = StageQueue(128, grow_to=1024)
    slow.quick = False  # its stage's units take 100 us or more
    slow.put([((i,), i) for i in range(8)])
    assert slow.bound == 128 and slow.max_bound == 1024


def test_a_grown_bound_is_what_the_recording_and_the_report_show() -> None:
    run = cv.Pipeline("p", [cv.Stage(sf.plus_100)]).run(range(3_000))
    assert run.recording.stages["plus_100"].shape.capacity == 1024
    assert "/ 1024" in run.report().render()


def test_a_slow_stage_s_queue_keeps_128_places_however_small_its_items() -> None:
    """Units of a millisecond dwarf a hand-off already: a longer queue would only make
    items wait longer, so the bound stays."""
    slow = cv.Stage(sf.sleep_ms, workers=2)  # 1 ms per item
    run = cv.Pipeline("p", [slow]).run(range(400), record=False)
    assert len(run.results) == 400
    queue = run.statistics().stages["sleep_ms"].queue
    assert queue.bound == 128 and queue.peak_depth <= 128
