"""A trace stays bounded: past its bound of unit events it merges a worker's
consecutive units, says so in the trace and in one line, and --trace-full lifts it."""

from __future__ import annotations

import gzip
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import conveyor as cv
from conveyor.cli import cli
from conveyor.observe.recorder import Recorder
from conveyor.observe.recording import Recording
from conveyor.observe.trace import TRACE_EVENTS, chrome_trace, trace_summary, units_per_event


def fast(x: int) -> int:
    return x


def picky(x: int) -> int:
    if x % 500 == 7:
        raise ValueError("seven")
    return x


@pytest.fixture(scope="module")
def big() -> Recording:
    """12,000 units, every one kept: one stage on 3 threads, one in the caller."""
    pipe = cv.Pipeline(
        "big", [cv.Stage(fast, workers=3), cv.Stage(picky, executor="sync", on_error="skip")]
    )
    r = Recorder(detail=1_000_000)
    pipe.run(range(6000), record=False, instruments=[r]).wait()
    return r.recording


def unit_events(doc: dict) -> list[dict]:  # type: ignore[type-arg]
    return [e for e in doc["traceEvents"] if e["ph"] == "X"]


def test_under_the_bound_nothing_changes(big: Recording) -> None:
    doc = chrome_trace(big)
    assert big.detail_units == big.units == 12_000 < TRACE_EVENTS
    for other in (chrome_trace(big, max_events=None), chrome_trace(big, max_events=12_000)):
        assert other["traceEvents"] == doc["traceEvents"]
        assert other["otherData"]["note"] == doc["otherData"]["note"]
    assert len(unit_events(doc)) == 12_000
    other = doc["otherData"]
    assert (other["aggregated"], other["units_per_event"]) == (False, 1)
    assert other["note"] == "unit events: every unit of the run (12000)"
    assert trace_summary(big) is None  # nothing to say


@pytest.mark.parametrize("bound", [1000, 4000, 11_999])
def test_past_the_bound_units_merge_and_the_trace_says_so(big: Recording, bound: int) -> None:
    doc = chrome_trace(big, max_events=bound)
    events = unit_events(doc)
    k = units_per_event(big, bound)
    assert k > 1 and len(events) <= bound
    # Every unit is in exactly one event; an event holds a worker's consecutive units.
    assert sum(e["args"]["units"] for e in events) == 12_000
    assert max(e["args"]["units"] for e in events) == k
    lanes: dict[tuple[str, int], list[int]] = {}  # (stage, worker) -> its units in order
    for s in big.stages.values():
        for i, w in enumerate(s.detail.worker):
            lanes.setdefault((s.name, w), []).append(i)
    at = {lane: {str(big.stages[lane[0]].detail.keys[i][0]): j for j, i in enumerate(units)}
          for lane, units in lanes.items()}  # fmt: skip
    for e in events:
        d = big.stages[e["cat"]].detail
        lane = (e["cat"], e["tid"])
        j = at[lane][e["args"]["first"]]
        group = lanes[lane][j : j + e["args"]["units"]]
        assert str(d.keys[group[-1]][0]) == e["args"]["last"]
        start = min(d.started[i] for i in group)
        assert e["ts"] == pytest.approx((start - big.started_ns) / 1e3)
        assert e["dur"] == pytest.approx((max(d.finished[i] for i in group) - start) / 1e3)
        busy = sum(d.finished[i] - d.started[i] for i in group)
        assert e["args"]["busy_ms"] == pytest.approx(busy / 1e6)
    # The units that raised are counted where they fell.
    assert sum(e["args"]["errors"] for e in events) == len(big.stages["picky"].detail.failed) > 0
    other = doc["otherData"]
    assert other["aggregated"] is True and other["units_per_event"] == k
    assert other["max_events"] == bound
    assert f"past the bound of {bound} events, each event merges up to {k}" in other["note"]
    assert "--trace-full" in other["note"]
    line = trace_summary(big, max_events=bound)
    assert line is not None and "\n" not in line
    assert line.startswith(f"trace: 12,000 units past the bound of {bound:,} events")
    assert "--trace-full" in line


def test_a_bound_below_one_is_refused(big: Recording) -> None:
    with pytest.raises(ValueError, match="max_events=0"):
        chrome_trace(big, max_events=0)


PIPELINE = """
import conveyor as cv

def one(x):
    return x

pipeline = cv.Pipeline("many", [cv.Stage(one, executor="sync")], source=lambda: range({n}))
"""


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    path, modules = sys.path[:], set(sys.modules)
    yield tmp_path
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def run_cli(tmp_path: Path, n: int, *args: str, store: bool = False) -> tuple[str, dict]:  # type: ignore[type-arg]
    (tmp_path / "manyp.py").write_text(textwrap.dedent(PIPELINE.format(n=n)))
    trace = tmp_path / "t.json"
    target = f"{tmp_path}/manyp.py:pipeline"
    options = ["--no-progress", "--trace", str(trace), *args]
    if not store:
        options.append("--no-store")
    result = CliRunner().invoke(cli, ["run", target, *options])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(trace.read_text())


@pytest.mark.slow
def test_a_run_past_the_bound_writes_a_bounded_trace_that_says_so(target: Path) -> None:
    n = TRACE_EVENTS + 10_000
    output, doc = run_cli(target, n, "--detail", "all")
    assert len(unit_events(doc)) <= TRACE_EVENTS
    assert sum(e["args"]["units"] for e in unit_events(doc)) == n
    assert doc["otherData"]["aggregated"] is True
    lines = [ln for ln in output.splitlines() if ln.startswith("trace: ")]
    assert len(lines) == 1 and "--trace-full" in lines[0], output
    # --trace-full: one event per unit, and nothing to say.
    output, doc = run_cli(target, n, "--detail", "all", "--trace-full")
    assert len(unit_events(doc)) == n and doc["otherData"]["aggregated"] is False
    assert not [ln for ln in output.splitlines() if ln.startswith("trace: ")]


def test_the_default_detail_window_is_named_with_the_option_that_widens_it(
    target: Path,
) -> None:
    output, doc = run_cli(target, 12_000)
    assert len(unit_events(doc)) == 10_000 and doc["otherData"]["units"] == 12_000
    lines = [ln for ln in output.splitlines() if ln.startswith("trace: ")]
    assert len(lines) == 1
    assert "first 10,000 of 12,000 units" in lines[0] and "--detail all" in lines[0]
    output, doc = run_cli(target, 12_000, "--detail", "all", store=True)  # stored too
    assert len(unit_events(doc)) == 12_000
    assert not [ln for ln in output.splitlines() if ln.startswith("trace: ")]


def test_detail_must_be_a_number_or_all(target: Path) -> None:
    (target / "manyp.py").write_text(textwrap.dedent(PIPELINE.format(n=3)))
    result = CliRunner().invoke(
        cli, ["run", f"{target}/manyp.py:pipeline", "--no-store", "--detail", "lots"]
    )
    assert result.exit_code == 2 and "give a number of units" in result.output


def test_a_damaged_detail_is_one_line_for_trace_and_gantt(tmp_path: Path) -> None:
    rec = cv.Pipeline("d", [cv.Stage(fast, executor="sync")]).run(range(5)).recording
    data = rec.to_dict()
    data["stages"][0]["detail"]["worker"] = "q:not base64!"
    path = tmp_path / "d.cvrec"
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    args = ["analyze", str(path), "--trace", str(tmp_path / "t.json")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "per-unit detail is damaged" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["analyze", str(path)])  # the report alone still holds
    assert result.exit_code == 0 and "d: succeeded" in result.output
