"""The recorder: bounded aggregates of every unit, the detail window, save and load."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import conveyor as cv
from conveyor.observe.histogram import Histogram
from conveyor.observe.recorder import BUCKETS, DETAIL_UNITS, Recorder
from conveyor.observe.recording import Recording, RecordingError
from pipesim import MS, SimStage, run_info, simulate
from retained import walk


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def total(xs: list[int]) -> int:
    return sum(xs)


def boom(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


def test_every_unit_at_every_stage_is_counted(executor: str) -> None:
    pipe = cv.Pipeline(
        "p", [cv.Stage(inc, executor=executor, workers=2), cv.Stage(double)], capacity=16
    )
    run = pipe.run(range(200))
    rec = run.recording
    assert rec.state == "succeeded" and rec.items_read == 200 and rec.items_done == 200
    assert rec.latency.count == 200 and rec.detail_complete and rec.units == 400
    assert rec.started_ns <= rec.t0_ns <= rec.t1_ns <= rec.end_ns  # type: ignore[operator]
    for name in ("inc", "double"):
        s = rec.stages[name]
        assert s.units == s.service.count == 200 and s.wait.count == 200
        assert s.items_in == 200 and s.items_out == 200 and s.items_enqueued == 200
        d = s.detail
        assert sorted(d.keys) == [(i,) for i in range(200)]
        assert all(a <= b for a, b in zip(d.started, d.finished, strict=True))
        # With every unit in the detail window, the aggregates are its exact sums.
        durations = [b - a for a, b in zip(d.started, d.finished, strict=True)]
        assert s.busy_ns == sum(durations)
        exact = Histogram()
        exact.add_many(durations)
        assert s.service == exact
        assert s.first_start_ns == min(d.started)
        assert 0 < s.peak_depth <= 16
        assert len(s.series.depth_peak) <= BUCKETS and max(s.series.depth_peak) == s.peak_depth
        assert sum(s.series.units) == 200 and sum(s.series.busy_ns) == s.busy_ns
    assert set(rec.stages["inc"].detail.worker) <= {0, 1}


def test_batch_units_are_batches_keyed_by_their_first_item() -> None:
    pipe = cv.Pipeline("b", [cv.Stage(total, kind="batch", size=8, executor="sync")])
    rec = pipe.run(range(20), ordered=True).recording
    s = rec.stages["total"]
    assert s.detail.keys == [(0,), (8,), (16,)]
    assert s.items_in == 20 and s.units == 3 and s.service.count == 3
    assert s.items_enqueued == 20 and s.wait.count == 20  # queue waits are per item


def test_failed_unit_is_marked() -> None:
    pipe = cv.Pipeline("f", [cv.Stage(boom, executor="sync")])
    run = pipe.stream(range(20))
    with pytest.raises(cv.StageError):
        run.wait()
    rec = run.recording
    s = rec.stages["boom"]
    assert rec.state == "failed"
    assert s.errors == 1 and [s.detail.keys[i] for i in s.detail.failed] == [(7,)]


def test_resize_is_recorded_with_its_time() -> None:
    pipe = cv.Pipeline("r", [cv.Stage(inc, workers=1), cv.Stage(double)])
    run = pipe.stream(range(50))
    next(run)
    run.resize("inc", 3)
    run.wait()
    s = run.recording.stages["inc"]
    assert [w for _, w in s.resizes] == [3] and s.workers == 3
    t = s.resizes[0][0]
    assert s.workers_at(t - 1) == 1 and s.workers_at(t) == 3


def test_record_false_has_no_recording_and_adds_no_instrument() -> None:
    run = cv.Pipeline("n", [inc]).run(range(3), record=False)
    assert run.results is not None and sorted(run.results) == [1, 2, 3]
    with pytest.raises(cv.RecordingError, match="record=False"):
        _ = run.recording
    assert not run._scheduler._ins  # no instrument: the engine's fast path


def test_snapshot_while_running() -> None:
    with cv.Pipeline("s", [cv.Stage(inc, executor="sync")]).stream(range(1000)) as run:
        next(run)
        snap = run.recording
        assert snap.state == "running" and snap.ended_ns is None
        assert snap.stages["inc"].units >= 1 and snap.items_read >= 1
        assert snap is not run.recording  # each snapshot is a new value
        later = run.recording
        assert later.stages["inc"].service is not snap.stages["inc"].service


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    rec = cv.Pipeline("rt", [inc, double]).run(range(30)).recording
    path = rec.save(tmp_path / "run.cvrec")
    loaded = Recording.load(path)
    assert loaded == rec
    assert loaded.stages["inc"].detail.keys == rec.stages["inc"].detail.keys  # tuples again


def test_load_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="not found"):
        Recording.load(tmp_path / "missing.cvrec")
    (tmp_path / "text.cvrec").write_text("hello")
    with pytest.raises(RecordingError, match="is not a conveyor recording"):
        Recording.load(tmp_path / "text.cvrec")
    with gzip.open(tmp_path / "other.cvrec", "wt") as f:
        json.dump({"format": "conveyor-recording", "version": 99}, f)
    with pytest.raises(RecordingError, match="version 99; this conveyor reads versions 2 and 3"):
        Recording.load(tmp_path / "other.cvrec")
    with gzip.open(tmp_path / "old.cvrec", "wt") as f:
        json.dump({"format": "conveyor-recording", "version": 1, "stages": []}, f)
    with pytest.raises(RecordingError, match=r"version 1, which kept every unit.*record the run"):
        Recording.load(tmp_path / "old.cvrec")
    with gzip.open(tmp_path / "damaged.cvrec", "wt") as f:
        json.dump({"format": "conveyor-recording", "version": 2}, f)
    with pytest.raises(RecordingError, match="damaged"):
        Recording.load(tmp_path / "damaged.cvrec")


def test_recorder_before_start_says_what_to_do() -> None:
    with pytest.raises(cv.RecordingError, match="has not started"):
        _ = Recorder().recording
    with pytest.raises(ValueError, match="detail=-1"):
        Recorder(detail=-1)


# --- a fake clock: hooks fed with chosen timestamps ------------------------------------


def test_the_window_starts_at_the_first_unit_not_at_the_workers_start_up() -> None:
    # The queue (capacity 4: full from depth 3) fills at 0 while the workers start;
    # the first unit starts at 1000 ms. Nothing of the start-up counts in the window.
    rec = simulate(
        [SimStage("a", 10, capacity=4), SimStage("b", 5, capacity=4)],
        items=8,
        startup_ns=1000 * MS,
    )
    a = rec.stages["a"]
    assert rec.t0_ns == 1000 * MS and rec.t1_ns == (1000 + 80 + 5) * MS
    assert a.first_start_ns == 1000 * MS
    # a's queue over [1000, 1085]: the source refills each place a task frees, so
    # 4 items until 1040 (the last read at 1030), then 3, 2, 1 for 10 ms each, then 0.
    window = rec.t1_ns - rec.t0_ns  # type: ignore[operator]
    assert a.window_worker_ns == window
    assert a.window_full_ns == 50 * MS  # depth >= 3 over [1000, 1050)
    assert a.window_depth_ns == (4 * 40 + 3 * 10 + 2 * 10 + 1 * 10) * MS
    assert a.window_starved_ns == 5 * MS  # its worker idle after 1080
    assert a.run_depth_ns == a.window_depth_ns + 4 * 1000 * MS  # full during start-up
    assert a.wait.low == 0 and a.wait.count == 8


def test_the_detail_window_keeps_the_first_units_and_says_where_it_ends() -> None:
    r = Recorder(detail=5)
    rec = simulate([SimStage("a", 1), SimStage("b", 2)], items=10, instrument=r)
    assert rec.detail_limit == 5 and rec.detail_units == 5 and not rec.detail_complete
    kept = [k for s in rec.stages.values() for k in s.detail.keys]
    assert len(kept) == 5 and rec.units == 20
    ends = [t for s in rec.stages.values() for t in s.detail.finished]
    assert rec.detail_end_ns == max(ends)
    assert all(s.service.count == 10 for s in rec.stages.values())  # aggregates: all


def kind_of(path: str) -> str:
    """Which bound a container of the recorder is under."""
    if ".series." in path or path.endswith((".d_area", ".d_low", ".d_peak")):
        return "series"  # time buckets, doubling in width as the run grows
    if ".detail." in path:
        return "detail"  # the first units of the run
    if "._rb_" in path:
        return "reads"  # read bursts with an unfinished root, and at most as many finished
    return "other"


def feed(units: int) -> Recorder:
    r = Recorder()
    simulate(
        [SimStage("a", 1, capacity=8), SimStage("b", 2, capacity=8)],
        items=units // 2,
        instrument=r,
        read_burst=3,
    )
    return r


def test_memory_does_not_grow_with_the_number_of_units() -> None:
    small: dict[str, tuple[int, int]] = {}
    big: dict[str, tuple[int, int]] = {}
    walk(feed(10**4), "recorder", set(), small)
    walk(feed(10**5), "recorder", set(), big)
    assert len(small) > 50 and small.keys() == big.keys()
    # Every container has the same length after 10^4 and 10^5 units, but the series,
    # whose buckets double in width as the run grows: at most BUCKETS each.
    same = [k for k in small if kind_of(k) == "other"]
    assert len(same) > 30
    assert {k: big[k][0] for k in same} == {k: small[k][0] for k in same}
    assert all(big[k][0] <= BUCKETS for k in big if kind_of(k) == "series")
    assert all(big[k][0] <= 2 * 20 + 65 for k in big if kind_of(k) == "reads")
    detail = [k for k in big if kind_of(k) == "detail" and "._stages[" in k]
    assert len([k for k in detail if not k.endswith("[]")]) == 10  # five lists per stage
    assert sum(big[k][0] for k in detail if k.endswith(".started")) == DETAIL_UNITS
    # In bytes: 90,000 more units leave behind a few kB of series, not ~260 bytes per
    # unit (23 MB) as a recorder of every unit's times would.
    size_small = sum(b for _, b in small.values())
    size_big = sum(b for _, b in big.values())
    assert size_small > 50_000 and abs(size_big - size_small) < 100_000


def test_latency_keeps_only_unfinished_reads() -> None:
    r = Recorder()
    r.run_started(run_info([SimStage("a")]))
    for i in range(1000):  # one item at a time, each finished 3 ms after its read
        r.items_enqueued("a", [(i,)], 1, i * MS)
        r.task_started("a", i, [(i,)], 0, i * MS)
        r.task_finished("a", i, 0, [(i,)], [i * MS], [i * MS + 3 * MS], None)
        r.roots_finished([i], "done", i * MS + 3 * MS)
    assert len(r._rb_first) <= 2 * 64 + 1
    rec = r.recording
    assert rec.latency.count == 1000 and rec.latency.low == rec.latency.high == 3 * MS


def test_a_unit_without_times_counts_but_moves_no_clock() -> None:
    # A process worker that cannot start reports its task's unit with stamps [0, 0].
    r = Recorder()
    r.run_started(run_info([SimStage("a")], start=5 * MS))
    r.items_enqueued("a", [(0,)], 1, 6 * MS)
    r.task_started("a", 1, [(0,)], 0, 6 * MS)
    r.task_finished("a", 1, 0, [(0,)], [0], [0], RuntimeError("no worker"))
    r.run_finished("failed", RuntimeError("no worker"), 9 * MS)
    rec = r.recording
    a = rec.stages["a"]
    assert (a.units, a.errors, a.first_start_ns, a.occupancy_ns) == (1, 1, None, 0)
    assert rec.t0_ns == 5 * MS and rec.t1_ns == 9 * MS
