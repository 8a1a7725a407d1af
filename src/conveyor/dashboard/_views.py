"""What each page shows, as plain data read from the run store (no HTML here).

Every function takes an open, read-only :class:`~conveyor.store.RunStore` and
returns dicts and lists for a template; what the user wrote (pipeline and stage
names, errors, item values) stays text until the template engine escapes it.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections import OrderedDict
from typing import Any

from conveyor.analysis import build_report
from conveyor.errors import ConveyorError
from conveyor.observe import Recording
from conveyor.store import (
    RunRecord,
    RunStore,
    dead_letter_page,
    find_runs,
    latest_recording,
    pipeline_names,
    read_snapshots,
)

__all__ = ["RecordingCache", "pipeline_view", "run_view", "runs_view", "snapshot_view"]

DEAD_LETTERS_SHOWN = 100
PIPELINE_RUNS = 100  # a pipeline's page: its latest runs
TERMINAL = ("succeeded", "failed", "cancelled")


class RecordingCache:
    """Recordings read from the store, kept while they are final (they never change
    then); at most ``size`` of them, the least recently used dropped first."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Recording] = OrderedDict()
        self._summaries: dict[str, dict[str, Any] | None] = {}

    def get(self, store: RunStore, run_id: str) -> Recording | None:
        with self._lock:
            rec = self._items.get(run_id)
            if rec is not None:
                self._items.move_to_end(run_id)
                return rec
        found = _read_recording(store, run_id)
        if found is None:
            return None
        rec, final = found
        if final:
            with self._lock:
                self._items[run_id] = rec
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return rec

    def summary(self, store: RunStore, run_id: str) -> dict[str, Any] | None:
        """Latency and the limiting stage of a finished run (kept: they never change)."""
        with self._lock:
            if run_id in self._summaries:
                return self._summaries[run_id]
        found = _read_recording(store, run_id)
        if found is None or not found[1]:
            return None
        rec = found[0]
        try:
            report = build_report(rec)
        except (ArithmeticError, ValueError, KeyError):
            out = None
        else:
            m = report.measure
            out = {
                "p50": _finite(m.latency.p50),
                "p95": _finite(m.latency.p95),
                "limiting": report.bottleneck.stage if report.bottleneck else None,
            }
        with self._lock:
            self._summaries[run_id] = out
        return out


def _read_recording(store: RunStore, run_id: str) -> tuple[Recording, bool] | None:
    try:
        return latest_recording(store, run_id)
    except (ConveyorError, OSError, ValueError):  # damaged: the page says it has none
        return None


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def when(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def parse_day(text: str | None, *, name: str) -> float | None:
    """A ``YYYY-MM-DD`` date (local time) as Unix seconds; ValueError naming ``name``."""
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").timestamp()
    except ValueError:
        raise ValueError(f"{name}={text!r}: give a date as YYYY-MM-DD, e.g. 2026-01-31") from None


def runs_view(
    store: RunStore,
    *,
    pipeline: str | None,
    state: str | None,
    since: str | None,
    until: str | None,
    page: int,
    per_page: int = 50,
) -> dict[str, Any]:
    start = parse_day(since, name="since")
    end = parse_day(until, name="until")
    if end is not None:
        end += 86400  # "until" a day includes that day
    found = find_runs(
        store,
        pipeline=pipeline or None,
        state=state or None,
        since=start,
        until=end,
        limit=per_page,
        offset=max(0, page - 1) * per_page,
    )
    rows = [
        {
            "id": r.id,
            "pipeline": r.pipeline,
            "state": r.state,
            "started": when(r.started_at or r.created_at),
            "seconds": r.seconds,
            "read": r.items_read,
            "emitted": r.items_emitted,
            "throughput": r.throughput,
        }
        for r in found.runs
    ]
    pages = max(1, math.ceil(found.total / per_page))
    return {
        "rows": rows,
        "total": found.total,
        "page": page,
        "pages": pages,
        "pipelines": pipeline_names(store),
        "filters": {"pipeline": pipeline or "", "state": state or "", "since": since or "",
                    "until": until or ""},
    }  # fmt: skip


def run_view(store: RunStore, run: RunRecord, cache: RecordingCache) -> dict[str, Any]:
    rec = cache.get(store, run.id)
    view: dict[str, Any] = {
        "run": run,
        "started": when(run.started_at or run.created_at),
        "finished": when(run.finished_at),
        "live": run.state not in TERMINAL,
        "ledger": store.ledger(run.id),
        "has_recording": rec is not None,
        "report": None,
        "report_problem": None,
        "stages": [],
    }
    view["dead_letters"], view["dead_letter_count"] = dead_letter_page(
        store, run.id, limit=DEAD_LETTERS_SHOWN
    )
    if rec is not None:
        try:
            report = build_report(rec)
        except (ArithmeticError, ValueError, KeyError) as exc:
            view["report_problem"] = f"{type(exc).__name__}: {exc}"
        else:
            view["report"] = _report_view(report)
            view["stages"] = view["report"]["stages"]
    if not view["stages"]:
        view["stages"] = [
            {
                "name": s.stage,
                "executor": f"{s.executor}×{s.workers}",
                "in": s.items_in,
                "out": s.items_out,
                "rate": None,
                "ms": None,
                "p95": None,
                "wait": None,
                "busy": None,
                "starved": None,
                "blocked": None,
                "peak": f"{s.queue_peak} / {'∞' if s.queue_bound is None else s.queue_bound}",
                "limiting": False,
            }
            for s in store.stage_statistics(run.id)
        ]
    return view


def _report_view(report: Any) -> dict[str, Any]:
    m = report.measure
    limiting = report.bottleneck.stage if report.bottleneck else None
    stages = []
    for s in m.stages.values():
        workers = (
            f"{s.workers}" if s.final_workers == s.workers else f"{s.workers}→{s.final_workers}"
        )
        stages.append(
            {
                "name": s.name,
                "executor": f"{s.executor}×{workers}",
                "in": s.items_in,
                "out": s.items_out,
                "rate": (s.items_out or s.items_in) / m.makespan_s if m.makespan_s > 0 else None,
                "ms": _ms(s.service.mean),
                "p95": _ms(s.service.p95),
                "wait": _ms(s.queue_wait.mean),
                "busy": s.utilisation,
                "starved": s.starved_share,
                "blocked": s.blocked_share,
                "peak": f"{s.peak_queue_depth} / {'∞' if s.bound is None else s.bound}",
                "limiting": s.name == limiting,
            }
        )
    b = report.bottleneck
    return {
        "summary": report.lines()[0],
        "limiting": report.limiting_line(),
        "evidence": b.evidence() if b is not None else [],
        "comparisons": [
            {
                "name": c.name,
                "formula": c.formula,
                "predicted": c.predicted,
                "measured": c.measured,
                "unit": c.unit,
                "error": None if math.isnan(c.error) else c.error,
            }
            for c in report.comparisons
        ],
        "little": report.little,
        "recommendations": list(report.recommendations),
        "stages": stages,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or not math.isfinite(seconds) else seconds * 1000


def snapshot_view(store: RunStore, run_id: str, after: float | None) -> list[dict[str, Any]]:
    """Snapshots after ``after`` as the live page takes them: each with its time."""
    return [{"at": at, **data} for at, data in read_snapshots(store, run_id, after=after)]


def pipeline_view(store: RunStore, name: str, cache: RecordingCache) -> dict[str, Any]:
    found = find_runs(store, pipeline=name, limit=PIPELINE_RUNS)
    points = []
    for r in reversed(found.runs):  # oldest first
        s = cache.summary(store, r.id) if r.state in TERMINAL else None
        points.append(
            {
                "id": r.id,
                "t": r.started_at or r.created_at,
                "started": when(r.started_at or r.created_at),
                "state": r.state,
                "seconds": r.seconds,
                "throughput": r.throughput,
                "p50": s["p50"] if s else None,
                "p95": s["p95"] if s else None,
                "limiting": s["limiting"] if s else None,
            }
        )
    return {"name": name, "total": found.total, "points": points}
