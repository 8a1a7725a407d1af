"""The run store's writer: coalescing batches, bounded memory, backpressure, failures."""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from conftest import wait_until
from conveyor.core.events import RunInfo
from conveyor.store import RunStore, StoreError, StoreRecorder
from conveyor.store._rows import Batch, Ranges, join_ranges


class StalledStore(RunStore):
    """A run store on a disk that stalls: every batch write waits until released."""

    def __init__(self, path: Path, *, fail: bool = False) -> None:
        super().__init__(path)
        self.writing = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def _write_batch(self, run_id: str, batch: Batch) -> None:
        self.writing.set()
        assert self.release.wait(timeout=60), "the test never released the writer"
        if self.fail:
            raise StoreError("disk full (a test's stalled store)")
        super()._write_batch(run_id, batch)


def start(recorder: StoreRecorder, run_id: str = "r1") -> None:
    recorder.run_started(RunInfo(run_id, "synthetic", (), False, time.monotonic_ns()))


def feed_done(recorder: StoreRecorder, first: int, n: int) -> None:
    """``n`` source items read, run at stage ``s`` and finished ``done``, in order."""
    t = time.monotonic_ns()
    for i in range(first, first + n):
        key = (i,)
        recorder.items_read([key], t)
        recorder.task_finished("s", i, 0, [key], [t], [t], None)
        recorder.roots_finished([i], "done", t)


def retained_bytes(recorder: StoreRecorder) -> int:
    """Python memory traced now, the hooks' own buffers (at most ``flush_rows`` rows)
    handed over first: what stays is what waits for the writer."""
    recorder._flush()
    return tracemalloc.get_traced_memory()[0]


def test_memory_does_not_grow_with_items_while_the_writer_lags(tmp_path: Path) -> None:
    store = StalledStore(tmp_path / "runs.db")
    recorder = StoreRecorder(store, flush_rows=1000, flush_seconds=3600)
    start(recorder)
    tracemalloc.start()
    try:
        feed_done(recorder, 0, 1000)  # the first batch: the writer takes it and stalls
        assert store.writing.wait(timeout=30)
        feed_done(recorder, 1000, 10_000)  # warm up: allocators' free lists fill
        base = retained_bytes(recorder)
        feed_done(recorder, 11_000, 10_000)
        small = retained_bytes(recorder) - base
        feed_done(recorder, 21_000, 100_000)
        large = retained_bytes(recorder) - base
    finally:
        tracemalloc.stop()
    stats = recorder.statistics()
    # 100k items waiting for the writer are a few ranges, not 100k of anything. The old
    # unbounded queue held every chunk: about 400 bytes per item, 36 MB more for 1e5
    # than for 1e4. What is left here is CPython's free lists (a few KiB, bounded).
    assert large - small < 64 * 1024, (small, large)
    assert stats.pending_rows <= 4 and stats.waits == 0 and not stats.waiting
    store.release.set()
    recorder.run_finished("succeeded", None, time.monotonic_ns())
    assert recorder.error is None
    ledger = store.ledger("r1")
    assert (ledger.items_read, ledger.done, ledger.pending) == (121_000, 121_000, 0)
    assert store.outcome_counts("r1") == {"s": {"done": 121_000}}
    rows = store._read(lambda c: c.execute("SELECT count(*) FROM item_ranges").fetchone()[0])
    assert rows <= 3  # one range per batch written
    store.close()


def test_a_full_pending_batch_makes_the_hook_wait_for_the_writer(tmp_path: Path) -> None:
    store = StalledStore(tmp_path / "runs.db")
    recorder = StoreRecorder(store, flush_rows=10, flush_seconds=3600, max_pending_rows=50)
    start(recorder)
    fed = 0

    def produce() -> None:  # failures never coalesce: each is a row of its own
        nonlocal fed
        t = time.monotonic_ns()
        for i in range(300):
            recorder.unit_failed("s", (i,), ValueError(f"bad {i}"), "tb", 1, False, t)
            fed += 1

    producer = threading.Thread(target=produce)
    producer.start()
    assert wait_until(lambda: recorder.statistics().waiting, timeout=30)
    assert fed < 300  # the scheduler's thread waits: backpressure, not memory
    store.release.set()
    producer.join(timeout=60)
    assert fed == 300
    recorder.run_finished("failed", None, time.monotonic_ns())
    stats = recorder.statistics()
    assert stats.waits >= 1 and stats.peak_pending_rows <= 50 + 10
    assert store.outcome_counts("r1") == {"s": {"failed": 300}}
    store.close()


def test_a_writer_that_fails_releases_a_waiting_hook(tmp_path: Path) -> None:
    store = StalledStore(tmp_path / "runs.db", fail=True)
    recorder = StoreRecorder(store, flush_rows=5, flush_seconds=3600, max_pending_rows=10)
    start(recorder)
    done = threading.Event()

    def produce() -> None:
        t = time.monotonic_ns()
        for i in range(100):
            recorder.unit_failed("s", (i,), ValueError("x"), None, 1, False, t)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert wait_until(lambda: recorder.statistics().waiting, timeout=30)
    store.release.set()  # the write fails: the run goes on, unrecorded
    assert done.wait(timeout=60)
    producer.join()
    with pytest.warns(RuntimeWarning, match="not fully recorded.*disk full"):
        recorder.run_finished("failed", None, time.monotonic_ns())
    assert isinstance(recorder.error, StoreError)
    assert store.get_run("r1").state == "failed"
    store.close()


def test_items_read_and_never_finished_are_pending_even_with_nothing_else_buffered(
    tmp_path: Path,
) -> None:
    """A run cancelled before any item finished (a source that blocked, a Ctrl-C at
    once): its read items are all pending, so its ledger balances."""
    store = RunStore(tmp_path / "runs.db")
    recorder = StoreRecorder(store)
    start(recorder)
    recorder.items_read([(i,) for i in range(16)], time.monotonic_ns())
    recorder.run_finished("cancelled", KeyboardInterrupt(), time.monotonic_ns())
    ledger = store.ledger("r1")
    assert (ledger.items_read, ledger.pending, ledger.done) == (16, 16, 0) and ledger.balanced
    store.close()


def expand(spans: list[tuple[int, int]]) -> Counter[int]:
    return Counter(i for first, last in spans for i in range(first, last + 1))


@pytest.mark.parametrize("seed", range(5))
def test_ranges_keep_every_integer_and_every_duplicate(seed: int) -> None:
    rng = random.Random(seed)
    values = list(range(3000)) + rng.sample(range(3000), 40)  # 40 duplicates
    # near source order: items finish a little out of order, as workers race
    values.sort(key=lambda v: v + rng.uniform(-20, 20))
    ranges = Ranges()
    for v in values:
        ranges.add(v)
    spans = ranges.ranges()
    assert expand(spans) == Counter(values) and ranges.count == len(values)
    assert len(spans) < 200  # coalesced: 3040 values in few ranges
    assert spans == sorted(spans)


def test_join_ranges_joins_neighbours_and_keeps_overlaps() -> None:
    assert join_ranges([(5, 7), (1, 3), (4, 4)]) == [(1, 7)]
    assert join_ranges([(1, 3), (2, 2), (4, 5)]) == [(1, 3), (2, 2), (4, 5)]
    assert join_ranges([]) == []


def test_batches_merge_without_losing_rows() -> None:
    a, b = Batch(), Batch()
    a.add_done("s", [(0,), (1,), (2, 0)], 1.0)
    a.add_roots([0, 1], "done")
    b.add_done("s", [(2,), (3,)], 2.0)
    b.add_outcome(("s", (9,), "cached", None, None, None, 3.0))
    b.add_outcome(("s", (4,), "failed", 1, "ValueError: x", "tb", 3.0))
    b.add_roots([2, 3, 1], "done")
    a.update(b)
    ranges, outcomes, roots, letters = a.sql_rows("r")
    assert sorted(ranges) == [("r", "s", 0, 3, "done", 2.0), ("r", "s", 9, 9, "cached", 3.0)]
    assert [(o[2], o[3]) for o in outcomes] == [("2.0", "done"), ("4", "failed")]
    assert expand([(r[1], r[2]) for r in roots]) == Counter([0, 1, 1, 2, 3])  # 1 twice, kept
    assert letters == []
    assert a.rows == len(ranges) + len(outcomes) + len(roots)


class FailingStore(RunStore):
    """A run store whose batch writes fail (a full disk) while its run writes work."""

    def _write_batch(self, run_id: str, batch: Batch) -> None:
        raise StoreError("cannot write the run store (database or disk is full)")


def test_a_run_whose_record_failed_is_recorded_failed_not_succeeded(tmp_path: Path) -> None:
    store = FailingStore(tmp_path / "runs.db")
    pipe = cv.Pipeline("p", [cv.stage(f.inc)])
    recorder = StoreRecorder(store, pipeline=pipe, flush_rows=10)
    with pytest.warns(RuntimeWarning, match="not fully recorded.*disk is full"):
        run = pipe.run(range(100), instruments=[recorder], record=False)
    assert run.state == "succeeded" and len(run.results or []) == 100  # it went on
    recorded = store.get_run(run.id)
    assert recorded.state == "failed" and recorder.ended == "failed"
    assert recorded.error == (
        "the run store could not record this run in full: cannot write the run store "
        "(database or disk is full)"
    )
    store.close()


class StoppingRecorder(StoreRecorder):
    critical = True


def test_a_critical_recorder_stops_the_run_it_cannot_record(tmp_path: Path) -> None:
    store = FailingStore(tmp_path / "runs.db")
    pipe = cv.Pipeline("p", [cv.stage(f.inc)])
    recorder = StoppingRecorder(store, pipeline=pipe, flush_rows=10)
    run = pipe.stream(range(100_000), instruments=[recorder], record=False)
    with pytest.raises(cv.InstrumentError) as stopped:
        for _ in run:
            pass
    assert stopped.value.__cause__ is recorder.error
    assert run.state == "failed" and run.statistics().items_read < 100_000  # stopped early
    recorded = store.get_run(run.id)
    assert recorded.state == "failed" and recorded.error is not None
    assert recorded.error.startswith("the run store could not record this run in full")
    assert "InstrumentError" not in recorded.error  # its own words, not the wrapper's
    store.close()


def test_a_run_failed_by_its_caller_is_recorded_failed(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.db") as store:
        pipe = cv.Pipeline("p", [cv.stage(f.inc)])
        recorder = StoreRecorder(store, pipeline=pipe)
        run = pipe.stream(range(1000), instruments=[recorder], record=False)
        with run:
            next(run)
            recorder.fail(OSError(28, "No space left on device"))
        assert run.state == "cancelled"  # the engine's word: its caller stopped it
        recorded = store.get_run(run.id)
        assert recorded.state == "failed" and recorder.ended == "failed"
        assert recorded.error == "OSError: [Errno 28] No space left on device"
        assert store.ledger(run.id).balanced
