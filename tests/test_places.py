"""Lanes per node and actor: a synthetic recording of a stage whose four workers ran
on two cluster nodes (what the Ray executor reports), and one with no places."""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.analysis import build_report
from conveyor.dashboard._timeline import timeline_data
from conveyor.observe.gantt import gantt_svg
from conveyor.observe.places import lane_label, lanes, node_groups
from conveyor.observe.recorder import Recorder
from conveyor.observe.recording import Recording
from pipesim import SimStage, simulate

A, B = "10.0.0.1 aaaaaaaa", "10.0.0.2 bbbbbbbb"
PLACES = {0: B, 1: A, 2: B, 3: A}  # workers 1 and 3 on A, 0 and 2 on B


def placed() -> Recording:
    rec = simulate([SimStage("load", 1), SimStage("embed", 4, workers=4)], items=80)
    rec.places = {"embed": dict(PLACES)}
    return rec


def test_the_recorder_notes_each_workers_node() -> None:
    r = Recorder()
    r.worker_placed("embed", 3, A, 0)
    r.worker_placed("embed", 0, B, 0)
    r.worker_placed("embed", 3, B, 1)  # replaced on another node: the last one holds
    assert r.places() == {"embed": {3: B, 0: B}}


def test_workers_are_grouped_by_node_with_their_units_and_busy_time() -> None:
    rec = placed()
    s = rec.stages["embed"]
    groups = node_groups(s, rec.places["embed"])
    assert {g.node: g.workers for g in groups} == {A: (1, 3), B: (0, 2)}
    assert sum(g.units for g in groups) == len(s.detail) == 80
    busy = sum(b - a for a, b in zip(s.detail.started, s.detail.finished, strict=True))
    assert abs(sum(g.busy_s for g in groups) - busy / 1e9) < 1e-9
    assert node_groups(rec.stages["load"], {}) == ()  # this machine: no groups


def test_the_report_names_each_node_and_its_actors() -> None:
    text = build_report(placed()).render(width=200)
    line = next(ln for ln in text.splitlines() if ln.startswith("nodes of embed:"))
    assert f"{A}: actors 1, 3 (" in line and f"{B}: actors 0, 2 (" in line
    assert "nodes of load" not in text


def test_the_gantt_lanes_are_labelled_node_and_actor_in_node_order() -> None:
    rec = placed()
    assert lanes(rec.stages["embed"], PLACES) == [1, 3, 0, 2]  # A's, then B's
    assert lane_label(3, PLACES) == f"{A} · actor 3" and lane_label(3, {}) == "worker 3"
    svg = gantt_svg(rec)
    labels = re.findall(r'class="lane">([^<]*)</text>', svg)
    assert labels[:5] == ["worker 0", *(f"{PLACES[w]} · actor {w}" for w in (1, 3, 0, 2))]


def test_without_places_the_chart_is_as_before() -> None:
    rec = simulate([SimStage("a", 1, workers=2)], items=10)
    assert rec.places == {}
    svg = gantt_svg(rec)
    assert re.findall(r'class="lane">(worker \d)</text>', svg) == ["worker 0", "worker 1"]
    assert 'x="144"' in svg  # the usual left margin: labels end at 150 - 6


def test_the_dashboard_timeline_lanes_carry_their_node() -> None:
    lanes_ = [ln for ln in timeline_data(placed())["lanes"] if ln["stage"] == "embed"]
    assert [(ln["worker"], ln["node"]) for ln in lanes_] == [(1, A), (3, A), (0, B), (2, B)]


def test_places_survive_saving_and_loading(tmp_path: Path) -> None:
    rec = placed()
    back = Recording.load(rec.save(tmp_path / "run.json.gz"))
    assert back.places == {"embed": PLACES}
