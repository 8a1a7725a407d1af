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

A trace stays bounded: past ``max_events`` unit events (:data:`TRACE_EVENTS`,
200,000 by default, about 20 MB of JSON) each event merges the next ``k``
consecutive units of one worker, ``k`` the smallest that fits the bound: the
event spans the first unit's start to the last one's end, is named ``"k units"``
and holds in ``args`` the count, the first and last keys, the units' summed
service time (``busy_ms``) and how many raised. ``otherData`` says so
(``aggregated``, ``units_per_event``, ``max_events`` and the ``note``), and
:func:`trace_summary` gives the one line to show the user. ``max_events=None``
writes one event per unit whatever their number (``conveyor ... --trace-full``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from conveyor.observe.recording import Recording, UnitDetail

__all__ = ["TRACE_EVENTS", "chrome_trace", "trace_summary", "units_per_event", "write_chrome_trace"]

TRACE_EVENTS = 200_000  # unit events a trace holds before it merges units (docstring)


def _key(key: tuple[Any, ...]) -> str:
    return str(key[0]) if len(key) == 1 else ".".join(map(str, key))


def units_per_event(rec: Recording, max_events: int | None = TRACE_EVENTS) -> int:
    """How many consecutive units of a worker each unit event of the trace merges: 1
    up to ``max_events`` units with detail (or ``max_events=None``), else the fewest
    that keep the trace within the bound."""
    if max_events is not None and max_events < 1:
        raise ValueError(f"max_events={max_events!r}; give a number of events, 1 or more")
    shown = rec.detail_units
    if max_events is None or shown <= max_events:
        return 1
    # A worker's last event may hold fewer units: one event per lane to spare.
    lanes = sum(len(set(s.detail.worker)) for s in rec.stages.values())
    return math.ceil(shown / max(1, max_events - lanes))


def chrome_trace(rec: Recording, *, max_events: int | None = TRACE_EVENTS) -> dict[str, Any]:
    """The recording as a Trace Event Format object (module docstring), with at most
    ``max_events`` unit events (None: one per unit, however many)."""
    k = units_per_event(rec, max_events)
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
        if k > 1:
            events.extend(_merged_events(d, k, pid, s.name, t0))
        for i, (key, w, a, b) in enumerate(
            zip(d.keys, d.worker, d.started, d.finished, strict=True) if k == 1 else ()
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
    if k > 1:
        note += (
            f"; past the bound of {max_events} events, each event merges up to {k} "
            "consecutive units of one worker (write one event per unit with --trace-full, "
            "or chrome_trace(recording, max_events=None))"
        )
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
            "aggregated": k > 1,
            "units_per_event": k,
            "max_events": max_events,
            "note": f"unit events: {note}",
        },
    }


def write_chrome_trace(
    rec: Recording, path: str | Path, *, max_events: int | None = TRACE_EVENTS
) -> Path:
    """Write :func:`chrome_trace` of ``rec`` to ``path`` as JSON; returns the path."""
    path = Path(path)
    doc = chrome_trace(rec, max_events=max_events)
    path.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
    return path


def trace_summary(rec: Recording, *, max_events: int | None = TRACE_EVENTS) -> str | None:
    """One line for the user when the trace does not hold one event per unit of the
    run (merged past the bound, or the recording kept detail for its first units
    only), saying how to get them all; None when it does."""
    k = units_per_event(rec, max_events)
    shown, units = rec.detail_units, rec.units
    parts = []
    if shown < units:
        parts.append(
            f"unit events for the first {shown:,} of {units:,} units (the recording's detail "
            "window; `conveyor run --detail all` keeps every unit)"
        )
    if k > 1:
        parts.append(
            f"{shown:,} units past the bound of {max_events:,} events, so each event merges up "
            f"to {k} consecutive units of one worker (--trace-full for one event per unit)"
        )
    return None if not parts else "trace: " + "; ".join(parts)


def _merged_events(d: UnitDetail, k: int, pid: int, cat: str, t0: int) -> list[dict[str, Any]]:
    """Each worker's units, ``k`` consecutive ones to an event (module docstring)."""
    by_worker: dict[int, list[int]] = {}
    for i, w in enumerate(d.worker):
        by_worker.setdefault(w, []).append(i)
    failed = set(d.failed)
    events = []
    for w, idx in by_worker.items():
        for j in range(0, len(idx), k):
            group = idx[j : j + k]
            a = min(d.started[i] for i in group)
            b = max(d.finished[i] for i in group)
            busy = sum(max(0, d.finished[i] - d.started[i]) for i in group)
            events.append(
                {
                    "ph": "X",
                    "name": f"{len(group)} units",
                    "cat": cat,
                    "pid": pid,
                    "tid": w,
                    "ts": (a - t0) / 1e3,
                    "dur": max(0, b - a) / 1e3,
                    "args": {
                        "units": len(group),
                        "first": _key(d.keys[group[0]]),
                        "last": _key(d.keys[group[-1]]),
                        "busy_ms": busy / 1e6,
                        "errors": len(failed.intersection(group)),
                    },
                }
            )
    return events
