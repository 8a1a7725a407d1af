"""A run's timeline as a picture: an SVG Gantt chart, with queue depths below it.

One lane per worker, grouped by stage (topological order, top to bottom), and on a
cluster by node within a stage (lanes labelled "node · actor"); one
box per unit of the recording's detail window (its first ``detail_limit`` units),
from its start to its end; then one small chart per stage of its input queue's
depth over the whole run (the peak of each of the recording's time buckets). Gaps
in a lane are bubbles: a worker with nothing to do. When the detail window does not
cover the whole run, a note under the title says so and a dashed line marks where
it ends. Written by hand (no plotting library)::

    from conveyor.observe.gantt import write_gantt
    write_gantt(run.recording, "run.svg")

Boxes closer than half a pixel merge, so a run of 100,000 units stays a small file.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from conveyor.observe.places import lane_label, lanes
from conveyor.observe.recording import Recording

__all__ = ["gantt_svg", "write_gantt"]

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#bab0ac")
FAILED = "#e15759"
LANE = 14
LANE_GAP = 3
GROUP_GAP = 10
QUEUE_H = 44
LEFT = 150
PLACED_EXTRA = 110  # more room on the left for lanes labelled by node and actor
RIGHT = 24
TOP = 40
TOOLTIPS_UP_TO = 3000  # units; above, boxes carry no <title> to keep the file small


def _nice_step(span_s: float, target: int = 10) -> float:
    raw = span_s / target if span_s > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _label(t: float, step: float) -> str:
    if step >= 1:
        return f"{t:g} s"
    return f"{t * 1e3:.0f} ms" if step >= 1e-3 else f"{t * 1e6:.0f} µs"


def gantt_svg(rec: Recording, *, width: int = 1200, startup: bool = False) -> str:
    """The SVG text of the chart (module docstring). Time starts at the first unit's
    start; ``startup=True`` starts it at the run's start, showing the workers' start-up."""
    t0 = rec.t0_ns if rec.t0_ns is not None and not startup else rec.started_ns
    startup_s = (t0 - rec.started_ns) / 1e9
    t1 = max(rec.t1_ns if rec.t1_ns is not None else rec.end_ns, t0 + 1)
    span = t1 - t0
    left = LEFT + (PLACED_EXTRA if rec.places else 0)  # room for "node · actor" labels
    plot_w = width - left - RIGHT

    def x(t: int) -> float:
        return left + (t - t0) / span * plot_w

    body: list[str] = []
    y = TOP
    tips = rec.detail_units <= TOOLTIPS_UP_TO
    for i, s in enumerate(rec.stages.values()):
        colour = PALETTE[i % len(PALETTE)]
        det = s.detail
        places = rec.places.get(s.name, {})
        top = y
        failed = set(det.failed)
        for w in lanes(s, places):  # by node, then worker: "node · actor 3" on a cluster
            label = escape(lane_label(w, places))
            body.append(
                f'<text x="{left - 6}" y="{y + LANE - 3}" class="lane">{label}</text>'
                f'<rect x="{left}" y="{y}" width="{plot_w}" height="{LANE}" class="bg"/>'
            )
            run_a = run_b = None
            for k, (wk, a, b) in enumerate(zip(det.worker, det.started, det.finished, strict=True)):
                if wk != w:
                    continue
                xa, xb = x(a), x(b)
                if tips or k in failed:
                    fill = FAILED if k in failed else colour
                    title = f"<title>{escape(s.name)} {escape(str(det.keys[k]))}: {(b - a) / 1e6:.2f} ms</title>"
                    body.append(
                        f'<rect x="{xa:.2f}" y="{y + 1}" width="{max(xb - xa, 0.6):.2f}" '
                        f'height="{LANE - 2}" fill="{fill}">{title}</rect>'
                    )
                    continue
                if run_a is not None and run_b is not None and xa - run_b < 0.5:
                    run_b = max(run_b, xb)
                    continue
                if run_a is not None and run_b is not None:
                    body.append(_box(run_a, run_b, y, colour))
                run_a, run_b = xa, xb
            if run_a is not None and run_b is not None:
                body.append(_box(run_a, run_b, y, colour))
            y += LANE + LANE_GAP
        mid = (top + y - LANE_GAP) / 2 + 4
        body.append(
            f'<text x="8" y="{mid:.1f}" class="stage" fill="{colour}">{escape(s.name)}</text>'
        )
        y += GROUP_GAP
    lanes_bottom = y
    # Queue depths: one small step chart per stage, scaled to its bound (or its peak).
    y += 14
    body.append(f'<text x="8" y="{y - 2}" class="head">input queue depth</text>')
    for i, s in enumerate(rec.stages.values()):
        colour = PALETTE[i % len(PALETTE)]
        peak = s.peak_depth
        scale = max(peak, 1)  # each chart to its own peak; the bound is in the label
        base = y + QUEUE_H
        pts = [f"{left:.1f},{base}"]
        last_d = depth = 0
        col_max: dict[int, int] = {}
        for b, d in enumerate(s.series.depth_peak):
            t = rec.started_ns + b * rec.bucket_ns
            if t > t1:
                break
            px = int(x(max(t, t0)))  # buckets before the chart's start land on its edge
            col_max[px] = max(col_max.get(px, 0), d)
        for px in sorted(col_max):
            d = col_max[px]
            if d == last_d:
                continue
            pts.append(f"{px:.1f},{base - last_d / scale * QUEUE_H:.1f}")
            pts.append(f"{px:.1f},{base - d / scale * QUEUE_H:.1f}")
            last_d = depth = d
        pts.append(f"{left + plot_w:.1f},{base - depth / scale * QUEUE_H:.1f}")
        pts.append(f"{left + plot_w:.1f},{base}")
        body.append(
            f'<rect x="{left}" y="{y}" width="{plot_w}" height="{QUEUE_H}" class="bg"/>'
            f'<polygon points="{" ".join(pts)}" fill="{colour}" fill-opacity="0.55" '
            f'stroke="{colour}"/>'
            f'<text x="8" y="{y + QUEUE_H / 2 + 4:.1f}" class="stage" fill="{colour}">'
            f"{escape(s.name)}</text>"
            f'<text x="{left - 6}" y="{y + 10}" class="lane">{scale}</text>'
            f'<text x="{left - 6}" y="{base}" class="lane">0</text>'
            f'<text x="{left + 4}" y="{y + 11}" class="note">peak {peak}'
            f"{'' if s.shape.capacity is None else f' of {s.shape.capacity}'}</text>"
        )
        y += QUEUE_H + 8
    # Time axis: grid lines through the lanes and labels at the bottom.
    step = _nice_step(span / 1e9)
    axis: list[str] = []
    k = 0
    while k * step <= span / 1e9 + 1e-12:
        gx = left + k * step * 1e9 / span * plot_w
        axis.append(
            f'<line x1="{gx:.1f}" y1="{TOP - 4}" x2="{gx:.1f}" y2="{y}" class="grid"/>'
            f'<text x="{gx:.1f}" y="{y + 14}" class="tick">{_label(k * step, step)}</text>'
        )
        k += 1
    height = y + 40
    if not rec.detail_complete:
        until = rec.detail_end_ns if rec.detail_end_ns is not None else t0
        shown = f" to {(until - t0) / 1e9:.3g} s" if rec.detail_end_ns is not None else ""
        notes = (
            f'<text x="8" y="{TOP - 8}" class="note">unit boxes: the first {rec.detail_units} '
            f"of {rec.units} units{shown} (Recorder(detail=...)); queue depths: the whole run"
            "</text>"
        )
        if t0 <= until <= t1:
            notes += (
                f'<line x1="{x(until):.1f}" y1="{TOP - 4}" x2="{x(until):.1f}" '
                f'y2="{lanes_bottom}" class="cut"/>'
            )
        body.append(notes)
    skipped = f", after {startup_s:.2f} s of start-up" if startup_s >= 0.001 else ""
    title = (
        f"{escape(rec.pipeline)}: {rec.items_done} items in {span / 1e9:.2f} s{skipped} "
        f"({rec.state}); one lane per worker, gaps are idle time"
    )
    style = (
        "text{font-family:Helvetica,Arial,sans-serif;font-size:11px;fill:#333}"
        ".lane{text-anchor:end;font-size:10px;fill:#666}.stage{font-weight:bold;font-size:12px}"
        ".head{font-weight:bold}.tick{text-anchor:middle;font-size:10px;fill:#555}"
        ".note{font-size:10px;fill:#555}.bg{fill:#f5f5f5}.grid{stroke:#ddd;stroke-width:1}"
        ".title{font-size:14px;font-weight:bold}"
        ".cut{stroke:#999;stroke-width:1;stroke-dasharray:4 3}"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f"<style>{style}</style>"
        f'<rect width="{width}" height="{height}" fill="white"/>'
        f'<text x="8" y="22" class="title">{title}</text>'
        + "".join(axis)
        + "".join(body)
        + f'<text x="{left + plot_w / 2:.1f}" y="{y + 30}" class="tick">time since the '
        f"{'run started' if startup else 'first unit started'}</text>"
        f"<!-- lanes end at y={lanes_bottom} -->"
        "</svg>\n"
    )


def _box(a: float, b: float, y: int, colour: str) -> str:
    return (
        f'<rect x="{a:.2f}" y="{y + 1}" width="{max(b - a, 0.6):.2f}" height="{LANE - 2}" '
        f'fill="{colour}"/>'
    )


def write_gantt(
    rec: Recording, path: str | Path, *, width: int = 1200, startup: bool = False
) -> Path:
    """Write :func:`gantt_svg` of ``rec`` to ``path`` (an .svg file); returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".svg":
        raise ValueError(
            f"the Gantt chart is drawn as SVG; give a path ending in .svg, not {str(path)!r}"
        )
    path.write_text(gantt_svg(rec, width=width, startup=startup), encoding="utf-8")
    return path
