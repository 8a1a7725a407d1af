"""The recorder: every unit at every stage, queue depths, resizes; save and load."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import conveyor as cv
from conveyor.observe.recorder import Recorder, Recording, RecordingError


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


def test_every_unit_at_every_stage_is_recorded(executor: str) -> None:
    pipe = cv.Pipeline(
        "p", [cv.Stage(inc, executor=executor, workers=2), cv.Stage(double)], capacity=16
    )
    run = pipe.run(range(200))
    rec = run.recording
    assert rec.state == "succeeded" and rec.items_read == 200 and rec.items_done == 200
    assert sorted(rec.done_roots) == list(range(200))
    for name in ("inc", "double"):
        s = rec.stages[name]
        assert sorted(s.keys) == [(i,) for i in range(200)]
        assert s.items_in == 200 and s.items_out == 200
        enq = s.enqueued_ns()
        for e, d, a, b in zip(enq, s.dispatched, s.started, s.finished, strict=True):
            assert rec.started_ns <= e <= d <= a <= b <= rec.ended_ns
        assert max(s.depth) <= 16 and min(s.depth) >= 0
        assert len(s.depth) == len(s.depth_t) and s.depth_t == sorted(s.depth_t)
    workers = set(rec.stages["inc"].worker)
    assert workers <= {0, 1}
    read = rec.read_ns()
    assert len(read) == 200 and read == sorted(read)


def test_batch_units_are_batches_keyed_by_their_first_item() -> None:
    pipe = cv.Pipeline("b", [cv.Stage(total, kind="batch", size=8, executor="sync")])
    rec = pipe.run(range(20), ordered=True).recording
    s = rec.stages["total"]
    assert s.keys == [(0,), (8,), (16,)]
    assert s.items_in == 20 and s.units == 3
    assert s.items_enqueued == 20


def test_failed_unit_is_marked() -> None:
    pipe = cv.Pipeline("f", [cv.Stage(boom, executor="sync")])
    run = pipe.stream(range(20))
    with pytest.raises(cv.StageError):
        run.wait()
    rec = run.recording
    s = rec.stages["boom"]
    assert rec.state == "failed"
    assert s.errors == 1 and [s.keys[i] for i in s.failed] == [(7,)]


def test_resize_is_recorded_with_its_time() -> None:
    pipe = cv.Pipeline("r", [cv.Stage(inc, workers=1), cv.Stage(double)])
    run = pipe.stream(range(50))
    next(run)
    run.resize("inc", 3)
    run.wait()
    s = run.recording.stages["inc"]
    assert [w for _, w in s.resizes] == [3]
    t = s.resizes[0][0]
    assert s.workers_at(t - 1) == 1 and s.workers_at(t) == 3


def test_record_false_has_no_recording_and_adds_no_instrument() -> None:
    run = cv.Pipeline("n", [inc]).run(range(3), record=False)
    assert run.results is not None and sorted(run.results) == [1, 2, 3]
    with pytest.raises(RuntimeError, match="record=False"):
        _ = run.recording
    assert not run._scheduler._ins  # no instrument: the engine's fast path


def test_snapshot_while_running() -> None:
    with cv.Pipeline("s", [cv.Stage(inc, executor="sync")]).stream(range(1000)) as run:
        next(run)
        snap = run.recording
        assert snap.state == "running" and snap.ended_ns is None
        assert snap.stages["inc"].units >= 1 and snap.items_read >= 1
        assert snap is not run.recording  # each snapshot is a copy


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    rec = cv.Pipeline("rt", [inc, double]).run(range(30)).recording
    path = rec.save(tmp_path / "run.cvrec")
    loaded = Recording.load(path)
    assert loaded.to_dict() == rec.to_dict()
    assert loaded.stages["inc"].keys == rec.stages["inc"].keys  # tuples again


def test_load_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="not found"):
        Recording.load(tmp_path / "missing.cvrec")
    (tmp_path / "text.cvrec").write_text("hello")
    with pytest.raises(RecordingError, match="is not a conveyor recording"):
        Recording.load(tmp_path / "text.cvrec")
    with gzip.open(tmp_path / "other.cvrec", "wt") as f:
        json.dump({"format": "conveyor-recording", "version": 99}, f)
    with pytest.raises(RecordingError, match="version 99; this conveyor reads version 1"):
        Recording.load(tmp_path / "other.cvrec")
    with gzip.open(tmp_path / "damaged.cvrec", "wt") as f:
        json.dump({"format": "conveyor-recording", "version": 1}, f)
    with pytest.raises(RecordingError, match="damaged"):
        Recording.load(tmp_path / "damaged.cvrec")


def test_recorder_before_start_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="has not started"):
        _ = Recorder().recording
