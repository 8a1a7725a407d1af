"""Draw a timeline as the papers do: one row per rank, time to the right, a box per action.

Pure: builds SVG text by hand, for simulated and measured timelines alike.

    rank 0 |F0|F1|F2|        |B0|B1|B2|
    rank 1    |F0|F1|F2|B0|B1|B2|
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from conveyor.train._simulate import Interval, bubble_of

__all__ = ["COLORS", "draw_svg"]

#: fill colour per action kind: forward blue, full backward green, I light green, W purple
COLORS = {"F": "#4c78a8", "B": "#54a24b", "I": "#88d27a", "W": "#b279a2"}


def draw_svg(
    intervals: Sequence[Interval],
    ranks: int,
    *,
    title: str = "",
    width: int = 960,
    row_height: int = 28,
) -> str:
    """An SVG picture of ``intervals`` on ``ranks`` rows, with a time axis and the bubble.

    Boxes are coloured by kind (:data:`COLORS`) and labelled with the micro-batch;
    interleaved stages other than a rank's first are drawn with a darker edge.
    """
    left, top, bottom = 64, 34 if title else 12, 30
    start = min((iv.start for iv in intervals), default=0.0)
    end = max((iv.end for iv in intervals), default=1.0)
    span = float(end - start) or 1.0
    scale = (width - left - 12) / span
    height = top + ranks * row_height + bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        bubble = bubble_of(intervals, ranks)
        out.append(
            f'<text x="{left}" y="20" font-size="13">{escape(title)} '
            f"(makespan {span * 1e3:.3g} ms, bubble {float(bubble):.1%})</text>"
        )
    for r in range(ranks):
        y = top + r * row_height
        out.append(f'<text x="6" y="{y + row_height * 0.65:.1f}">rank {r}</text>')
        out.append(
            f'<rect x="{left}" y="{y + 2}" width="{span * scale:.2f}" '
            f'height="{row_height - 4}" fill="#eeeeee"/>'
        )
    for iv in intervals:
        x = left + float(iv.start - start) * scale
        w = max(float(iv.end - iv.start) * scale, 0.5)
        y = top + iv.rank * row_height
        chunk = iv.action.stage // ranks if ranks else 0
        edge = "#222222" if chunk else "#ffffff"
        out.append(
            f'<rect x="{x:.2f}" y="{y + 2}" width="{w:.2f}" height="{row_height - 4}" '
            f'fill="{COLORS[iv.action.kind]}" stroke="{edge}" stroke-width="0.6">'
            f"<title>{iv.action} {float(iv.start) * 1e3:.3f}-{float(iv.end) * 1e3:.3f} ms</title></rect>"
        )
        if w >= 12:
            out.append(
                f'<text x="{x + w / 2:.2f}" y="{y + row_height * 0.65:.1f}" fill="white" '
                f'text-anchor="middle">{iv.action.microbatch}</text>'
            )
    axis_y = top + ranks * row_height + 14
    for k in range(6):
        t = span * k / 5
        x = left + t * scale
        out.append(f'<text x="{x:.1f}" y="{axis_y}" text-anchor="middle">{t * 1e3:.3g} ms</text>')
    legend_x = width - 190
    for i, (kind, color) in enumerate(COLORS.items()):
        out.append(
            f'<rect x="{legend_x + i * 46}" y="{axis_y + 4}" width="10" height="10" fill="{color}"/>'
            f'<text x="{legend_x + i * 46 + 13}" y="{axis_y + 13}">{kind}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
