"""A run's timeline as the browser draws it: lanes per worker, queue depths per stage.

The browser never sees a unit. The server folds the recording's per-unit detail
into ``width`` time buckets per lane (one lane per stage and worker): each bucket
holds the share of its time that the worker was busy. However many units the run
had (100,000 or ten), the browser gets lanes × ``width`` numbers, which a chart draws
in milliseconds, where a node per unit freezes a page at a few thousand.

The queue depths come from the recording's series (fixed buckets over the whole
run): the mean depth of each stage's input queue per bucket, and its peak. GPUs
sampled during the run (nvidia-ml-py) come as they were sampled: utilisation and
memory per device, with the stages that used it.
"""

from __future__ import annotations

from typing import Any

from conveyor.observe import Recording

__all__ = ["timeline_data"]

MIN_WIDTH, MAX_WIDTH = 50, 4000


def timeline_data(rec: Recording, *, width: int = 1000) -> dict[str, Any]:
    """The timeline of ``rec`` as JSON-ready data (see the module docstring).

    ``x`` are the buckets' starts in seconds since the run started; ``lanes`` are
    ``{"stage", "worker", "busy": [share per bucket], "units"}``; ``depth`` is
    ``{"x": [...], "stages": [{"stage", "mean": [...], "peak": [...], "bound"}]}``;
    ``gpus`` are ``{"device", "node", "name", "stages", "x", "utilisation", "memory_gib"}``.
    """
    width = max(MIN_WIDTH, min(int(width), MAX_WIDTH))
    start = rec.started_ns
    end = max(rec.end_ns, start + 1)
    span = end - start
    step = span / width
    lanes: list[dict[str, Any]] = []
    for s in rec.stages.values():
        d = s.detail
        per_worker: dict[int, list[float]] = {}
        counts: dict[int, int] = {}
        for w, a, b in zip(d.worker, d.started, d.finished, strict=True):
            busy = per_worker.get(w)
            if busy is None:
                busy = per_worker[w] = [0.0] * width
                counts[w] = 0
            counts[w] += 1
            _spread(busy, a - start, b - start, step, width)
        places = rec.places.get(s.name, {})
        for w in sorted(per_worker, key=lambda w: (places.get(w, ""), w)):
            lanes.append(
                {
                    "stage": s.name,
                    "worker": w,
                    "node": places.get(w),  # a cluster's node (None: this machine)
                    "units": counts[w],
                    "busy": [round(min(1.0, v / step), 3) for v in per_worker[w]],
                }
            )
    return {
        "run": rec.run_id,
        "seconds": span / 1e9,
        "x": [round(i * step / 1e9, 9) for i in range(width)],
        "lanes": lanes,
        "detail_units": rec.detail_units,
        "units": rec.units,
        "detail_end": None if rec.detail_end_ns is None else (rec.detail_end_ns - start) / 1e9,
        "depth": _depths(rec),
        "gpus": [
            {
                "device": g.device,
                "node": g.node,
                "name": g.name,
                "stages": g.stages,
                "x": [round((t - start) / 1e9, 6) for t in g.t_ns],
                "utilisation": [round(u, 1) for u in g.utilisation],
                "memory_gib": [round(m / (1 << 30), 3) for m in g.memory],
            }
            for g in rec.gpus
        ],
    }


def _spread(busy: list[float], a: int, b: int, step: float, width: int) -> None:
    """Add the interval [a, b) (ns since the start) to the buckets it covers."""
    if b <= a:
        return
    i = int(a / step)
    j = int(b / step)
    if i >= width:
        return
    if i == j:
        busy[i] += b - a
        return
    busy[i] += (i + 1) * step - a
    last = min(j, width)
    for k in range(i + 1, last):
        busy[k] += step
    if j < width:
        busy[j] += b - j * step


def _depths(rec: Recording) -> dict[str, Any]:
    width = rec.bucket_ns
    n = max((len(s.series.depth_area) for s in rec.stages.values()), default=0)
    stages = []
    for s in rec.stages.values():
        ser = s.series
        stages.append(
            {
                "stage": s.name,
                "bound": s.shape.capacity,
                "mean": [round(a / width, 2) for a in ser.depth_area]
                + [None] * (n - len(ser.depth_area)),
                "peak": list(ser.depth_peak) + [None] * (n - len(ser.depth_peak)),
            }
        )
    return {"x": [round(i * width / 1e9, 9) for i in range(n)], "stages": stages}
