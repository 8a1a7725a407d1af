"""Observers of a run: the recorder, the live progress display, Prometheus metrics,
live rebalancing, and the outputs drawn from a recording (Chrome trace, SVG Gantt).

Each observer is an :class:`~conveyor.Instrument`; the core only calls hooks.
Names are loaded when first used, so ``import conveyor`` stays light (no rich, no
prometheus_client)::

    from conveyor.observe import Progress, write_chrome_trace, write_gantt
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.observe.display import ProgressDisplay
    from conveyor.observe.gantt import gantt_svg, write_gantt
    from conveyor.observe.gpu import GpuSeries
    from conveyor.observe.histogram import Histogram
    from conveyor.observe.metrics import Metrics
    from conveyor.observe.progress import Progress
    from conveyor.observe.rebalance import Decision, Rebalancer
    from conveyor.observe.recorder import Recorder
    from conveyor.observe.recording import Recording, StageRecording
    from conveyor.observe.summary import limiting_line, run_summary, stage_table
    from conveyor.observe.trace import TRACE_EVENTS, chrome_trace, trace_summary, write_chrome_trace

_WHERE = {
    "Recorder": "recorder",
    "Recording": "recording",
    "StageRecording": "recording",
    "GpuSeries": "gpu",
    "Histogram": "histogram",
    "Progress": "progress",
    "ProgressDisplay": "display",
    "Metrics": "metrics",
    "Rebalancer": "rebalance",
    "Decision": "rebalance",
    "chrome_trace": "trace",
    "trace_summary": "trace",
    "TRACE_EVENTS": "trace",
    "write_chrome_trace": "trace",
    "gantt_svg": "gantt",
    "write_gantt": "gantt",
    "stage_table": "summary",
    "run_summary": "summary",
    "limiting_line": "summary",
}

__all__ = [
    "TRACE_EVENTS",
    "Decision",
    "GpuSeries",
    "Histogram",
    "Metrics",
    "Progress",
    "ProgressDisplay",
    "Rebalancer",
    "Recorder",
    "Recording",
    "StageRecording",
    "chrome_trace",
    "gantt_svg",
    "limiting_line",
    "run_summary",
    "stage_table",
    "trace_summary",
    "write_chrome_trace",
    "write_gantt",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'conveyor.observe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"conveyor.observe.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
