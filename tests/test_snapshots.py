"""SnapshotRecorder: stage snapshots and the recording reach the store while the run
goes on (seen by another connection, as the dashboard sees them), a window of them
is kept, and a run the store does not hold writes nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor as cv
from conftest import wait_until
from conveyor.store import (
    RunStore,
    SnapshotRecorder,
    StoreRecorder,
    latest_recording,
    read_snapshots,
)


def double(x: int) -> int:
    return 2 * x


def gated(first: int, gate: threading.Event, rest: int) -> Iterator[int]:
    """``first`` items, then (once ``gate`` is set) ``rest`` more."""
    yield from range(first)
    assert gate.wait(30), "the test never opened the gate"
    yield from range(first, first + rest)


def test_snapshots_and_the_recording_are_written_while_the_run_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    gate = threading.Event()
    pipe = cv.Pipeline("live", [cv.stage(double, workers=2)])
    with RunStore(path) as store, RunStore(path, readonly=True) as reader:
        snaps = SnapshotRecorder(store, every=0.001, recording_every=0.001)
        run = pipe.stream(
            gated(50, gate, 50), instruments=[snaps, StoreRecorder(store)], record=False
        )
        out: list[int] = []
        consumer = threading.Thread(target=lambda: out.extend(run))
        consumer.start()
        try:
            # the first 50 items are done and the run waits on its source: running
            assert wait_until(
                lambda: any(d["emitted"] == 50 for _, d in read_snapshots(reader, run.id)),
                timeout=20,
            )
            assert reader.get_run(run.id).state == "running"
            rec = latest_recording(reader, run.id)
            assert rec is not None and rec[1] is False  # not final yet
            assert rec[0].stages["double"].units >= 1
        finally:
            gate.set()
            consumer.join(timeout=30)
        assert len(out) == 100
        snapshots = read_snapshots(reader, run.id)
        last = snapshots[-1][1]
        assert last["state"] == "succeeded" and last["emitted"] == 100
        # the bound grows for these small items once a unit is timed: 128 or 1,024
        assert last["stages"][0]["bound"] in (128, 1024)
        assert last["stages"][0] | {"busy_s": 0, "bound": 0} == {
            "name": "double", "in": 100, "out": 100, "errors": 0, "dead": 0, "depth": 0,
            "bound": 0, "busy": 0, "workers": 2, "busy_s": 0,
        }  # fmt: skip
        times = [at for at, _ in snapshots]
        assert times == sorted(times)
        rec = latest_recording(reader, run.id)
        assert rec is not None and rec[1] is True
        assert rec[0].state == "succeeded" and rec[0].stages["double"].units == 100
        assert read_snapshots(reader, run.id, after=times[-1]) == []


def test_only_a_window_of_snapshots_is_kept(tmp_path: Path) -> None:
    pipe = cv.Pipeline("window", [cv.stage(double, executor="sync")])
    with RunStore(tmp_path / "runs.db") as store:
        snaps = SnapshotRecorder(store, every=1e-9, keep_seconds=1e-9)
        run = pipe.run(range(2000), instruments=[snaps, StoreRecorder(store)], record=False)
        run.results  # noqa: B018
        assert snaps.snapshots_written > 1
        kept = read_snapshots(store, run.id)
        assert 1 <= len(kept) < snaps.snapshots_written
        assert kept[-1][1]["state"] == "succeeded"


def test_a_run_the_store_does_not_hold_writes_nothing(tmp_path: Path) -> None:
    pipe = cv.Pipeline("alone", [cv.stage(double, executor="sync")])
    with RunStore(tmp_path / "runs.db") as store:
        snaps = SnapshotRecorder(store, every=1e-9)
        run = pipe.run(range(100), instruments=[snaps], record=False)  # no StoreRecorder
        assert run.results is not None
        assert snaps.error is None
        assert read_snapshots(store, run.id) == [] and latest_recording(store, run.id) is None
        assert snaps.recording.stages["double"].units > 0  # still a Recorder


def test_bad_intervals_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every=0"):
        SnapshotRecorder(tmp_path / "runs.db", every=0)


def test_a_store_without_the_tables_reads_as_empty(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.db") as store:
        assert read_snapshots(store, "nope") == [] and latest_recording(store, "nope") is None


def test_conveyor_run_stores_the_recording(tmp_path: Path) -> None:
    import subprocess
    import sys

    target = tmp_path / "pipe.py"
    target.write_text(
        "import conveyor as cv\n"
        "def inc(x):\n    return int(x) + 1\n"
        "pipeline = cv.Pipeline('cli', [cv.stage(inc)])\n"
    )
    store_path = tmp_path / "runs.db"
    out = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", f"{target}:pipeline", "--source",
         str(_numbers(tmp_path)), "--store", str(store_path), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    with RunStore(store_path, readonly=True) as store:
        (run,) = store.runs(1)
        rec = latest_recording(store, run.id)
        assert rec is not None and rec[1] and rec[0].stages["inc"].units == 20
        assert read_snapshots(store, run.id)[-1][1]["emitted"] == 20


def _numbers(folder: Path) -> Path:
    path = folder / "numbers.txt"
    path.write_text("".join(f"{i}\n" for i in range(20)))
    return path


def test_a_store_that_cannot_be_written_stops_the_writing_not_the_run(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    pipe = cv.Pipeline("ro", [cv.stage(double, executor="sync")])
    with RunStore(path) as store, RunStore(path, readonly=True) as readonly:
        snaps = SnapshotRecorder(readonly, every=1e-9, recording_every=1e-9)
        run = pipe.run(range(500), instruments=[snaps, StoreRecorder(store)], record=False)
        assert run.results == [2 * i for i in range(500)]
        assert snaps.error is not None and "read-only" in str(snaps.error)
        assert store.get_run(run.id).state == "succeeded"
        assert read_snapshots(store, run.id) == []
