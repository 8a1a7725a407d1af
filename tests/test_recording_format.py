"""A recording's file: version 3 (compact detail columns) and version 2, which still loads.

``tests/data/recording-v2.cvrec`` was saved by the conveyor of version 2 (a flat_map
stage of 2 workers and a stage of 3 that raises on some items, a detail window of 300
of its 1,200 units), with the report it printed then beside it
(``recording-v2.report.txt``): the known figures every encoding must give.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
from conveyor.analysis import build_report
from conveyor.observe import Recorder
from conveyor.observe.columns import encode_detail
from conveyor.observe.gantt import gantt_svg
from conveyor.observe.recording import VERSION, LazyDetail, Recording, RecordingError, UnitDetail
from conveyor.observe.trace import chrome_trace
from conveyor.store import RunStore, SnapshotRecorder, StoreRecorder, latest_recording

DATA = Path(__file__).with_name("data")


@pytest.fixture
def old() -> Recording:
    return Recording.load(DATA / "recording-v2.cvrec")


def test_a_version_2_file_loads_and_reports_what_it_reported_then(old: Recording) -> None:
    with gzip.open(DATA / "recording-v2.cvrec", "rt") as f:
        assert json.load(f)["version"] == 2
    assert old.units == 1200 and old.detail_units == 300
    assert old.stages["picky"].detail.failed  # a unit that raised, in the window
    # Every figure as it printed then: the table, the limit, the model against the
    # measurement. (The advice's wording below them is the report's own, and moves.)
    known = (DATA / "recording-v2.report.txt").read_text()
    figures = known[: known.index("recommendations:")]
    assert len(figures.splitlines()) > 10
    assert build_report(old).render(width=120).startswith(figures)


def test_the_same_recording_saved_in_version_3_reports_the_same(
    old: Recording, tmp_path: Path
) -> None:
    path = old.save(tmp_path / "again.cvrec")
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    assert data["version"] == VERSION == 3
    assert isinstance(data["stages"][0]["detail"]["duration"], str)  # a compact column
    new = Recording.load(path)
    assert new == old  # every field, the detail's keys as tuples again
    assert build_report(new).render(width=120) == build_report(old).render(width=120)
    assert build_report(new).to_dict() == build_report(old).to_dict()
    assert chrome_trace(new) == chrome_trace(old)
    assert gantt_svg(new) == gantt_svg(old)


@pytest.mark.parametrize(
    "keys",
    [
        [(1,), (5,), (3,), (1 << 62,), (-4,), (0,), (9,)],  # one int each: a binary column
        [(1, 0), (1, 1), (0, 0), (7, 2), (-1, 0), (3, 5), (2, 1)],  # two ints: two columns
        [(), (), (), (), (), (), ()],
        [(1,), (2, 0), (2, (3, 1)), ("a",), (True,), (), (1 << 70,)],  # any other: JSON
        [(1,), (2,), (3,), (4,), (5,), (6,), (1 << 70,)],  # past 64 bits: JSON
    ],
)
def test_columns_give_back_every_kind_of_key_and_stamp(keys: list) -> None:  # type: ignore[type-arg]
    worker = [0, 1, 0, 2, 1, 0, 3]
    started = [100, 90, 5_000_000_000, 0, 7, 7, 8]  # out of order, 0 (never started)
    finished = [150, 90, 5_000_000_001, 0, 9, 8, 10]
    cols = encode_detail(keys, worker, started, finished, [3], base=50)
    assert isinstance(cols["worker"], str) and isinstance(cols["started"], str)
    lazy = LazyDetail(json.loads(json.dumps(cols)), base=50)
    assert len(lazy) == 7 and not lazy._decoded  # nothing decoded to know its length
    assert lazy.started == started and list(lazy._decoded) == ["started"]
    assert (lazy.keys, lazy.worker, lazy.finished, lazy.failed) == (keys, worker, finished, [3])
    assert [type(k[0]) for k in lazy.keys if k] == [type(k[0]) for k in keys if k]
    assert lazy == UnitDetail(keys, worker, started, finished, [3])
    assert UnitDetail(keys, worker, started, finished, [3]) == lazy
    assert lazy != UnitDetail(keys, worker, started, finished, [])


@pytest.mark.parametrize(
    "damage",
    [
        {"keys": [1, 2]},  # not lists
        {"worker": "not base64!"},
        {"started": base64.b64encode(b"not zlib").decode()},
        {"duration": base64.b64encode(zlib.compress(b"\0" * 8)).decode()},  # one unit, not 3
        {"duration": None},
        {"worker": base64.b64encode(zlib.compress(bytes(8_000_000))).decode()},  # a bomb
    ],
)
def test_damaged_columns_are_a_clear_error(damage: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    rec = cv.Pipeline("d", [cv.Stage(lambda x: x, name="f")]).run(range(3)).recording
    data = rec.to_dict()
    data["stages"][0]["detail"].update(damage)
    path = tmp_path / "d.cvrec"
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    loaded = Recording.load(path)  # the report needs no per-unit detail
    assert build_report(loaded).render() == build_report(rec).render()
    with pytest.raises(RecordingError, match=r"per-unit detail is damaged.*record the run again"):
        chrome_trace(loaded)
    data["stages"][0]["detail"]["units"] = "three"
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(RecordingError, match=r"damaged conveyor recording.*record the run again"):
        Recording.load(path)


def test_garbage_is_not_a_recording(tmp_path: Path) -> None:
    (tmp_path / "z.cvrec").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)  # a broken gzip
    with pytest.raises(RecordingError, match="is not a conveyor recording"):
        Recording.load(tmp_path / "z.cvrec")
    with pytest.raises(RecordingError, match="not a conveyor recording"):
        Recording.from_bytes(b"not gzip", where="the blob")


def test_a_large_detail_window_round_trips(tmp_path: Path) -> None:
    recorder = Recorder(detail=30_000)
    pipe = cv.Pipeline(
        "big", [cv.Stage(lambda x: x, name="a", workers=2), cv.Stage(lambda x: -x, name="b")]
    )
    pipe.run(range(15_000), instruments=[recorder], record=False).wait()
    rec = recorder.recording
    assert rec.detail_complete and rec.detail_units == 30_000
    path = rec.save(tmp_path / "big.cvrec")
    loaded = Recording.load(path)
    again = loaded.save(tmp_path / "again.cvrec")  # columns never decoded: copied as read
    assert all(not s.detail._decoded for s in loaded.stages.values())  # type: ignore[attr-defined]
    assert Recording.load(again) == loaded == rec
    assert path.stat().st_size < 30_000 * 6  # under 6 bytes a unit, stamps and keys


def test_the_run_store_reads_a_recording_stored_in_version_2(
    tmp_path: Path, old: Recording
) -> None:
    store = RunStore(tmp_path / "store")
    pipe = cv.Pipeline("st", [cv.Stage(lambda x: x + 1, name="inc")])
    snap = SnapshotRecorder(store)
    pipe.run(
        range(50), instruments=[StoreRecorder(store, pipeline=pipe), snap], record=False
    ).wait()
    run_id = snap.recording.run_id
    found = latest_recording(store, run_id)
    assert found is not None and found[0] == snap.recording and found[1]
    # A row written by the conveyor of version 2 (gzipped JSON of version 2) still loads.
    v2 = (DATA / "recording-v2.cvrec").read_bytes()
    store._write(
        lambda c: c.execute("UPDATE run_recordings SET data = ? WHERE run_id = ?", (v2, run_id))
    )
    found = latest_recording(store, run_id)
    assert found is not None and found[0] == old
    store.close()


def test_a_large_recording_is_written_less_often_while_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding the recording (every unit's detail) while the run goes on takes at
    most a twentieth of the time between two writes: each encoding here "takes" 0.5 s
    on a fake clock, so the next write waits 10 s, not recording_every's 1 ms."""
    from conveyor.store import _snapshots

    class Clock:
        now = 0.0

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def perf_counter(self) -> float:
            Clock.now += 0.5
            return Clock.now

    writes = []
    to_bytes = Recording.to_bytes

    def counted(rec: Recording) -> bytes:
        writes.append(rec.state)
        return to_bytes(rec)

    monkeypatch.setattr(_snapshots, "time", Clock())
    monkeypatch.setattr(Recording, "to_bytes", counted)
    store = RunStore(tmp_path / "store")
    snaps = SnapshotRecorder(store, recording_every=0.001, detail=1_000_000)
    pipe = cv.Pipeline("many", [cv.Stage(lambda x: x + 1, name="inc", workers=2)])
    pipe.run(range(5000), instruments=[StoreRecorder(store, pipeline=pipe), snaps], record=False)
    assert snaps._s_rec_gap_ns == 10 * 10**9
    # One while running at most (none taken while one is being encoded), and the final.
    assert len(writes) <= 2 and writes[-1] == "succeeded"
    found = latest_recording(store, snaps.recording.run_id)
    assert found is not None and found[1] and found[0].detail_units == 5000
    store.close()
