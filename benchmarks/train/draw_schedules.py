"""Draw the four schedules, simulated with equal costs, as SVG pictures for the docs.

python benchmarks/train/draw_schedules.py     # writes docs/train/schedule-*.svg
"""

from __future__ import annotations

from pathlib import Path

from conveyor.train import StageCosts, build_schedule, draw_svg, simulate

OUT = Path(__file__).resolve().parents[2] / "docs" / "train"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    p, m = 4, 8
    for name, v in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("zbh1", 1)):
        schedule = build_schedule(name, p, m, v)
        # a rank's micro-batch: F = I = W = 1 ms, split over its v chunks
        costs = StageCosts.uniform(p * v, 1e-3 / v, 1e-3 / v, 1e-3 / v)
        sim = simulate(schedule, costs)
        svg = draw_svg(
            sim.intervals, p, title=f"{name}, p={p}, m={m}" + (f", v={v}" if v > 1 else "")
        )
        (OUT / f"schedule-{name}.svg").write_text(svg)
        print(
            f"{name:<12} makespan {float(sim.makespan) * 1e3:5.1f} ms  bubble {float(sim.bubble):.3f}"
        )


if __name__ == "__main__":
    main()
