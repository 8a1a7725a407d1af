"""The Chrome trace and the SVG Gantt chart of a run."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import conveyor as cv
from conveyor.observe.gantt import gantt_svg, write_gantt
from conveyor.observe.recorder import Recording
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
    assert len(counters) == sum(len(s.depth) for s in recording.stages.values())
    assert max(e["args"]["depth"] for e in counters) <= 8


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
    rec = cv.Pipeline("big", [cv.Stage(fast, executor="sync")]).run(range(20_000)).recording
    svg = gantt_svg(rec)
    assert len(svg) < 200_000  # merged: far fewer boxes than 20,000 units
    ET.fromstring(svg)
