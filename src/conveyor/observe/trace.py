"""A run's timeline as a Chrome trace: open it in https://ui.perfetto.dev or chrome://tracing.

One process per stage (``pid`` = its position in topological order, from 1), one
thread per worker (``tid`` = the worker index), one ``"X"`` (complete) event per
unit, named by its key, with ``ts``/``dur`` in microseconds since the run's start;
a ``"C"`` (counter) event per change of the stage's input-queue depth; ``"M"``
(metadata) events naming the processes and threads. Format: the Trace Event Format
(JSON object form, ``{"traceEvents": [...]}``)::

    from conveyor.observe.trace import write_chrome_trace
    write_chrome_trace(run.recording, "run.trace.json")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conveyor.observe.recorder import Recording

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
        failed = set(s.failed)
        for w in sorted(set(s.worker)):
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
            zip(s.keys, s.worker, s.started, s.finished, strict=True)
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
        for t, d in zip(s.depth_t, s.depth, strict=True):
            events.append(
                {
                    "ph": "C",
                    "name": "queue depth",
                    "pid": pid,
                    "tid": 0,
                    "ts": (t - t0) / 1e3,
                    "args": {"depth": d},
                }
            )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"pipeline": rec.pipeline, "run_id": rec.run_id, "state": rec.state},
    }


def write_chrome_trace(rec: Recording, path: str | Path) -> Path:
    """Write :func:`chrome_trace` of ``rec`` to ``path`` as JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(rec), separators=(",", ":")), encoding="utf-8")
    return path
