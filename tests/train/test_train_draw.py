"""The timeline picture: well-formed SVG with one box per action and one row per rank."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from conveyor.train import StageCosts, draw_svg, simulate, zb_h1

NS = "{http://www.w3.org/2000/svg}"


def test_svg_has_a_box_per_action_and_a_row_per_rank():
    sim = simulate(zb_h1(4, 8), StageCosts.uniform(4, 1e-3, 1e-3, 1e-3))
    svg = draw_svg(sim.intervals, 4, title="ZB-H1")
    root = ET.fromstring(svg)
    boxes = [r for r in root.iter(f"{NS}rect") if r.find(f"{NS}title") is not None]
    assert len(boxes) == 4 * 8 * 3
    labels = [t.text for t in root.iter(f"{NS}text")]
    assert [x for x in labels if x and x.startswith("rank")] == [
        "rank 0",
        "rank 1",
        "rank 2",
        "rank 3",
    ]
    assert any(x and "bubble 11.1%" in x for x in labels)  # (p-1)/(3m+p-1) = 3/27
    assert {r.get("fill") for r in boxes} == {"#4c78a8", "#88d27a", "#b279a2"}
