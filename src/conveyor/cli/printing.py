"""How ``conveyor run`` and ``conveyor resume`` print: consoles sized for a terminal
or a file, tables printed whole, and the run's report."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement

from conveyor import Recording, RunStatistics
from conveyor.observe import limiting_line, run_summary, stage_table


def consoles() -> tuple[Console, Console]:
    """stdout's and stderr's consoles: a terminal's width, or $COLUMNS, or 120 columns
    when the output is a file or a pipe (a table wider than that is printed wider,
    never cut: see :func:`print_table`)."""
    return console_for(sys.stdout, stderr=False), console_for(sys.stderr, stderr=True)


def console_for(stream: Any, *, stderr: bool) -> Console:
    if stream.isatty():
        return Console(stderr=stderr)
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) > 0 else 120
    return Console(stderr=stderr, width=width)


def print_table(console: Console, table: Any) -> None:
    """Print ``table`` whole: where the output is no terminal, widen it to fit rather
    than cut a number short (a terminal wraps its cells instead)."""
    if console.is_terminal:
        console.print(table)
        return
    unbounded = console.options.update_width(1_000_000)
    need = Measurement.get(console, unbounded, table).maximum
    width = console.width
    console.width = max(width, need)  # print() caps its width= at the console's
    try:
        console.print(table)
    finally:
        console.width = width


def print_report(
    console: Console, stats: RunStatistics, recording: Recording | None, budget: int | None
) -> None:
    # sentences are printed as one line each (soft_wrap): the terminal wraps them at
    # its edge, a file keeps them whole, and none is broken mid-sentence
    if recording is None or not recording.stages:
        print_table(console, stage_table(stats))
        console.print(escape(run_summary(stats)), soft_wrap=True)
        line = limiting_line(stats)
        if line is not None:
            console.print(escape(line), soft_wrap=True)
        return
    from conveyor.analysis import build_report

    report = build_report(recording, budget=budget, source_seconds=stats.source_seconds)
    print_table(console, report.table())
    console.print(escape(run_summary(stats)), soft_wrap=True)
    for line in report.lines()[1:]:  # the first repeats the summary, in the report's words
        console.print(escape(line), soft_wrap=True)
