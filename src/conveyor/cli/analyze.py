"""``conveyor analyze RECORDING``: explain a run saved by ``conveyor run --record``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from conveyor import Recording, RecordingError
from conveyor.cli.outputs import (
    BUDGET_OPTION,
    GANTT_OPTION,
    TRACE_FULL_OPTION,
    TRACE_OPTION,
    check_gantt_path,
    write_outputs,
    write_text,
)


@click.command("analyze")
@click.argument("recording_path", metavar="RECORDING", type=click.Path(path_type=Path))
@BUDGET_OPTION
@TRACE_OPTION
@TRACE_FULL_OPTION
@GANTT_OPTION
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write every figure of the report to this file as JSON.",
)
@click.option(
    "--write-config",
    "config_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the advised workers per stage as a config file (TOML); apply it with "
    "`conveyor run TARGET --config FILE`.",
)
def analyze_command(
    recording_path: Path,
    budget: int | None,
    trace_path: Path | None,
    trace_full: bool,
    gantt_path: Path | None,
    json_path: Path | None,
    config_path: Path | None,
) -> None:
    """Explain a recorded run: RECORDING is a file saved by `conveyor run --record`."""
    from conveyor.analysis import build_report

    check_gantt_path(gantt_path)
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() else 120
    out = Console(width=None if sys.stdout.isatty() else width)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    try:
        recording = Recording.load(recording_path)
    except RecordingError as exc:
        raise click.UsageError(str(exc)) from None
    report = build_report(recording, budget=budget)
    out.print(report)
    if json_path is not None:
        write_text(json_path, json.dumps(report.to_dict(), indent=2) + "\n", "--json")
    if config_path is not None:
        write_text(config_path, report.to_config(), "--write-config")
        verdict = "the advice" if report.advised_workers else "no change advised: the run's workers"
        err.print(f"config ({verdict}) written to {config_path}; apply it with --config")
    write_outputs(recording, None, trace_path, gantt_path, err, trace_full=trace_full)
