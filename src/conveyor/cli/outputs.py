"""What ``conveyor run`` and ``conveyor analyze`` write besides the report: results
(``--output``), statistics (``--json``), the recording (``--record``), a Chrome trace
(``--trace``) and an SVG timeline (``--gantt``), with the options that ask for them.

A path that cannot be written is a one-line error naming the option (exit 1); so is
a results file that fails while the run goes on (a full disk), which fails the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from conveyor import Recording, RecordingError, ResultsWriter, RunStatistics
from conveyor.cli.errors import OneLineError
from conveyor.errors import OutputError

TRACE_OPTION = click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write a Chrome/Perfetto trace (JSON) of every worker's activity; past "
    "200,000 units each event merges consecutive units of a worker (see --trace-full).",
)
TRACE_FULL_OPTION = click.option(
    "--trace-full",
    is_flag=True,
    help="With --trace: one event per unit however many (the file grows by about 100 "
    "bytes a unit), instead of merging units past 200,000 events.",
)


def _detail_units(ctx: click.Context, param: click.Parameter, value: str) -> int:
    if value == "all":
        return sys.maxsize
    if value.isdigit():
        return int(value)
    raise click.BadParameter(f"{value!r}; give a number of units (0 or more) or 'all'")


DETAIL_OPTION = click.option(
    "--detail",
    default="10000",
    show_default=True,
    metavar="UNITS|all",
    callback=_detail_units,
    help="Keep each unit's worker, start and end for the run's first UNITS units (for "
    "--trace, --gantt and the dashboard's timeline; 'all': every unit, about 200 bytes "
    "of memory a unit while the run goes on).",
)
GANTT_OPTION = click.option(
    "--gantt",
    "gantt_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Draw the workers' timeline and queue depths as an SVG file.",
)
BUDGET_OPTION = click.option(
    "--budget",
    type=click.IntRange(min=1),
    default=None,
    help="Workers to balance over in the advice (default: the run's own total).",
)
OUTPUT_OPTION = click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write every result to this file as it comes: one JSON value per line (NumPy "
    "arrays as lists, dates as ISO text, bytes as base64), or Parquet for a name ending "
    "in .parquet (needs pyarrow: pip install 'conveyor[files]').",
)


class OutputProblem(OneLineError):
    """A results file could not be written: ``error: ...``, exit code 1."""


class ResultsFile:
    """``--output``: every result as a JSON line, or Parquet by the name
    (:class:`conveyor.ResultsWriter`; a value it cannot hold is an OutputError that
    fails the run). A write, flush or close that fails
    (a full disk, a file too large) raises :class:`OutputProblem` once, after calling
    ``on_error`` with it (``conveyor run`` fails the run's record with it); the file
    is then let go (what was buffered is lost with the write that failed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: OutputProblem | None = None
        self.on_error: Callable[[OutputProblem], None] | None = None
        try:
            self._out = ResultsWriter(path)
        except OSError as exc:
            raise _unwritable("--output", path, exc) from exc

    def write(self, result: Any) -> None:
        self._guarded(lambda: self._out.write(result))

    def flush(self) -> None:
        """Write out what is buffered (before the run is recorded as succeeded)."""
        self._guarded(self._out.flush)

    def close(self) -> None:
        self._guarded(self._out.close)

    def _guarded(self, fn: Callable[[], Any]) -> None:
        if self.problem is not None:
            return  # reported once; the file is closed
        try:
            fn()
        except (OSError, OutputError) as exc:
            if isinstance(exc, OutputError):  # a result the file cannot hold: its words
                self.problem = OutputProblem(f"--output {str(self.path)!r}: {exc}")
            else:
                self.problem = OutputProblem(
                    f"cannot write a result to --output {str(self.path)!r}: "
                    f"{exc.strerror or exc}; free some space or choose another path"
                )
            with contextlib.suppress(Exception):
                self._out.close()  # closes the file even when its flush fails
            if self.on_error is not None:
                self.on_error(self.problem)
            raise self.problem from None  # its message has the OSError's own words


@contextmanager
def results_file(path: Path | None) -> Iterator[ResultsFile | None]:
    """``--output``'s file (None: no file), closed at the end; a close that fails is an
    :class:`OutputProblem` unless a write already reported one."""
    if path is None:
        yield None
        return
    results = ResultsFile(path)
    try:
        yield results
    finally:
        results.close()


def write_outputs(
    recording: Recording,
    record_path: Path | None,
    trace_path: Path | None,
    gantt_path: Path | None,
    err: Console,
    *,
    trace_full: bool = False,
) -> None:
    """Write the recording, the trace and the timeline that were asked for; a trace
    that does not hold one event per unit says so in one line."""
    from conveyor.observe import TRACE_EVENTS, chrome_trace, gantt_svg, trace_summary

    if record_path is not None:
        try:
            recording.save(record_path)
        except OSError as exc:
            raise _unwritable("--record", record_path, exc, what="the recording") from exc
    bound = None if trace_full else TRACE_EVENTS
    try:
        if trace_path is not None:
            doc = chrome_trace(recording, max_events=bound)
            write_text(trace_path, json.dumps(doc, separators=(",", ":")), "--trace")
        if gantt_path is not None:
            write_text(gantt_path, gantt_svg(recording), "--gantt")
    except RecordingError as exc:  # a damaged file's per-unit detail
        raise OutputProblem(f"--trace/--gantt: {exc}") from None
    for what, path in (("recording", record_path), ("trace", trace_path), ("timeline", gantt_path)):
        if path is not None:
            err.print(f"{what} written to {escape(str(path))}")
    summary = None if trace_path is None else trace_summary(recording, max_events=bound)
    if summary is not None:
        err.print(escape(summary), soft_wrap=True)  # one line, however narrow the screen


def write_json(path: Path, stats: RunStatistics) -> None:
    """The run's statistics as JSON (``--json``)."""
    text = json.dumps(dataclasses.asdict(stats), indent=2) + "\n"
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _unwritable("--json", path, exc, what="the statistics") from exc


def write_text(path: Path, text: str, option: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _unwritable(option, path, exc) from exc


def check_gantt_path(path: Path | None) -> None:
    if path is not None and path.suffix.lower() != ".svg":
        raise click.UsageError(
            f"--gantt {str(path)!r}: the timeline is drawn as SVG; give a path ending in .svg"
        )


def _unwritable(
    option: str, path: Path, exc: OSError, *, what: str | None = None
) -> click.ClickException:
    target = f"{what} to {option}" if what else option
    return click.ClickException(
        f"cannot write {target} {str(path)!r}: {exc.strerror}; "
        "check that its directory exists and is writable"
    )
