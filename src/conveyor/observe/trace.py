"""A run's timeline as a Chrome trace: open it in https://ui.perfetto.dev or chrome://tracing.

One process per stage (``pid`` = its position in topological order, from 1), one
thread per worker (``tid`` = the worker index), one ``"X"`` (complete) event per
unit of the recording's detail window (its first ``detail_limit`` units), named by
its key, with ``ts``/``dur`` in microseconds since the run's start; a ``"C"``
(counter) event per time bucket of the whole run with the stage's input-queue depth
(the bucket's peak); ``"M"`` (metadata) events naming the processes and threads.
``otherData`` says what the unit events cover (``units_shown``, ``units``,
``detail_until_s``, and a ``note`` in words). Format: the Trace Event Format (JSON
object form, ``{"traceEvents": [...]}``)::

    from conveyor.observe.trace import write_chrome_trace
    write_chrome_trace(run.recording, "run.trace.json")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conveyor.observe.recording import Recording

__all__ = ["chrome_trace", "write_chrome_trace"]


def _key(key: tuple[Any, ...]) -> str:
    return str(key[0]) if len(key) == 1 else ".".join(map(str, key))


def chrome_trace(rec: Recording) -> dict[str, Any]:
    """The recording as a Trace Event Format object (module docstring)."""
    t0 = rec.started_ns
    events: list[dict[str, Any]] = []
    for pid, s in enumerate(rec.stages.values(), start=1):
        events.append(
            {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": s.name}}
        )
        events.append(
            {
                "ph": "M",
                "name": "process_sort_index",
                "pid": pid,
                "tid": 0,
                "args": {"sort_index": pid},
            }
        )
        d = s.detail
        failed = set(d.failed)
        for w in sorted(set(d.worker)):
            events.append(
                {
                    "ph": "M",
                    "name": "thread_name",
                    "pid": pid,
                    "tid": w,
                    "args": {"name": f"{s.name} worker {w}"},
                }
            )
        for i, (key, w, a, b) in enumerate(
            zip(d.keys, d.worker, d.started, d.finished, strict=True)
        ):
            ev: dict[str, Any] = {
                "ph": "X",
                "name": _key(key),
                "cat": s.name,
                "pid": pid,
                "tid": w,
                "ts": (a - t0) / 1e3,
                "dur": max(0, b - a) / 1e3,
            }
            if i in failed:
                ev["args"] = {"error": True}
            events.append(ev)
        for b, peak in enumerate(s.series.depth_peak):
            events.append(
                {
                    "ph": "C",
                    "name": "queue depth",
                    "pid": pid,
                    "tid": 0,
                    "ts": b * rec.bucket_ns / 1e3,
                    "args": {"depth": peak},
                }
            )
    shown, units = rec.detail_units, rec.units
    until = None if rec.detail_end_ns is None else (rec.detail_end_ns - t0) / 1e9
    if shown == units:
        note = f"every unit of the run ({units})"
    else:
        note = f"the first {shown} of {units} units" + (
            f" (to {until:.3f} s)" if until is not None else ""
        )
        note += f"; queue depths cover the whole run in buckets of {rec.bucket_ns / 1e6:.3g} ms"
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "pipeline": rec.pipeline,
            "run_id": rec.run_id,
            "state": rec.state,
            "units": units,
            "units_shown": shown,
            "detail_until_s": until,
            "note": f"unit events: {note}",
        },
    }


def write_chrome_trace(rec: Recording, path: str | Path) -> Path:
    """Write :func:`chrome_trace` of ``rec`` to ``path`` as JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(rec), separators=(",", ":")), encoding="utf-8")
    return path
