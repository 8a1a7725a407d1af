"""The Chrome trace and the SVG Gantt chart of a run."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import conveyor as cv
from conveyor.observe.gantt import gantt_svg, write_gantt
from conveyor.observe.recorder import Recorder
from conveyor.observe.recording import Recording
from conveyor.observe.trace import chrome_trace, write_chrome_trace

SVG = "{http://www.w3.org/2000/svg}"


def slow(x: int) -> int:
    time.sleep(0.003)
    return x


def fast(x: int) -> int:
    return x


@pytest.fixture(scope="module")
def recording() -> Recording:
    pipe = cv.Pipeline("tr", [cv.Stage(slow, workers=2), cv.Stage(fast)], capacity=8)
    return pipe.run(range(40)).recording


def check_chrome_trace(doc: dict) -> None:  # type: ignore[type-arg]
    """The Trace Event Format's rules for the phases we write (JSON object form)."""
    assert set(doc) >= {"traceEvents"}
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    for ev in doc["traceEvents"]:
        assert isinstance(ev["name"], str) and ev["ph"] in ("X", "C", "M")
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        if ev["ph"] == "X":
            assert isinstance(ev["ts"], int | float) and ev["ts"] >= 0
            assert isinstance(ev["dur"], int | float) and ev["dur"] >= 0
        elif ev["ph"] == "C":
            assert isinstance(ev["ts"], int | float)
            assert ev["args"] and all(isinstance(v, int | float) for v in ev["args"].values())
        else:
            assert ev["name"] in ("process_name", "thread_name", "process_sort_index")
            assert isinstance(ev["args"], dict)


def test_trace_validates_and_holds_every_unit(recording: Recording, tmp_path: Path) -> None:
    path = write_chrome_trace(recording, tmp_path / "t.json")
    doc = json.loads(path.read_text())  # valid JSON
    check_chrome_trace(doc)
    events = doc["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {1: "slow", 2: "fast"}
    units = [e for e in events if e["ph"] == "X"]
    assert len(units) == recording.stages["slow"].units + recording.stages["fast"].units
    slow_units = [e for e in units if e["pid"] == 1]
    assert sorted(int(e["name"]) for e in slow_units) == list(range(40))
    assert {e["tid"] for e in slow_units} <= {0, 1}
    assert all(e["dur"] >= 2900 for e in slow_units)  # µs: each slept 3 ms
    counters = [e for e in events if e["ph"] == "C"]
    assert len(counters) == sum(len(s.series.depth_peak) for s in recording.stages.values())
    assert max(e["args"]["depth"] for e in counters) == max(
        s.peak_depth for s in recording.stages.values()
    )
    assert max(e["args"]["depth"] for e in counters) <= 8
    other = doc["otherData"]
    assert other["units"] == other["units_shown"] == 80
    assert other["note"] == "unit events: every unit of the run (80)"


def test_trace_marks_failed_units() -> None:
    def bad(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    run = cv.Pipeline("bad", [cv.Stage(bad, executor="sync")]).stream(range(10))
    with pytest.raises(cv.StageError):
        run.wait()
    failed = [
        e for e in chrome_trace(run.recording)["traceEvents"] if e.get("args", {}).get("error")
    ]
    assert [e["name"] for e in failed] == ["3"]


def test_gantt_draws_lanes_boxes_and_queues(recording: Recording, tmp_path: Path) -> None:
    path = write_gantt(recording, tmp_path / "g.svg")
    root = ET.fromstring(path.read_text())  # well-formed XML
    assert root.tag == f"{SVG}svg"
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert {"slow", "fast"} <= set(texts)
    assert {"worker 0", "worker 1"} <= set(texts)
    assert "input queue depth" in texts
    assert any(t.endswith(" ms") for t in texts)  # a readable time axis
    boxes = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(boxes) == recording.stages["slow"].units + recording.stages["fast"].units
    assert len(list(root.iter(f"{SVG}polygon"))) == 2  # one queue chart per stage
    widths = [float(r.get("width", 0)) for r in boxes]
    assert max(widths) > 5  # boxes are visible, not hairlines
    with pytest.raises(ValueError, match=r"ending in \.svg"):
        write_gantt(recording, tmp_path / "g.png")


def test_gantt_merges_boxes_of_a_large_run() -> None:
    run = cv.Pipeline("big", [cv.Stage(fast, executor="sync")]).stream(
        range(20_000), record=False, instruments=[r := Recorder(detail=20_000)]
    )
    run.wait()
    rec = r.recording
    assert rec.detail_complete
    svg = gantt_svg(rec)
    assert len(svg) < 200_000  # merged: far fewer boxes than 20,000 units
    ET.fromstring(svg)


def test_a_run_longer_than_the_detail_window_says_what_it_shows(tmp_path: Path) -> None:
    pipe = cv.Pipeline("long", [cv.Stage(fast, executor="sync"), cv.Stage(fast, name="f2")])
    r = Recorder(detail=300)
    pipe.run(range(2000), record=False, instruments=[r])
    rec = r.recording
    assert rec.detail_units == 300 and rec.units == 4000 and rec.detail_end_ns is not None
    doc = chrome_trace(rec)
    check_chrome_trace(doc)
    assert len([e for e in doc["traceEvents"] if e["ph"] == "X"]) == 300
    other = doc["otherData"]
    assert (other["units"], other["units_shown"]) == (4000, 300)
    assert other["detail_until_s"] == pytest.approx((rec.detail_end_ns - rec.started_ns) / 1e9)
    assert other["note"].startswith("unit events: the first 300 of 4000 units (to ")
    assert "queue depths cover the whole run" in other["note"]
    root = ET.fromstring(write_gantt(rec, tmp_path / "g.svg").read_text())
    notes = [t.text or "" for t in root.iter(f"{SVG}text") if t.get("class") == "note"]
    assert any(n.startswith("unit boxes: the first 300 of 4000 units to ") for n in notes)
    assert [ln for ln in root.iter(f"{SVG}line") if ln.get("class") == "cut"]
