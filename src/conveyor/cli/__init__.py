"""The ``conveyor`` command: run a pipeline from a file or module and explain the run.

::

    $ conveyor run examples/science.py:pipeline
    $ conveyor run mypackage.jobs:build_pipeline --source events.txt --json stats.json
    $ conveyor run examples/science.py:pipeline --record run.cvrec --gantt run.svg --trace run.json
    $ conveyor analyze run.cvrec --budget 8
    $ conveyor --version

``TARGET`` is ``module:attr`` or ``path/to/file.py:attr``; ``attr`` names a
:class:`~conveyor.Pipeline`, or a function of no arguments that returns one. While
the run goes on a live table (stderr, terminals only) shows each stage's progress;
afterwards a report explains it: per-stage throughput, service time, queue wait,
busy, starved and blocked shares, peak queue; the stage that limits throughput and
the evidence; the model's prediction beside the measurement; and advice. ``--record``
saves the run's recording for ``conveyor analyze``; ``--trace`` writes a Chrome /
Perfetto trace, ``--gantt`` an SVG timeline; ``--metrics-port`` serves Prometheus
metrics on 127.0.0.1 while the run goes on.

Exit codes: 0 success; 1 the run failed (or the target raised while loading);
2 a usage error (bad TARGET, missing file or attribute); 130 cancelled by Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape

import conveyor
from conveyor import Pipeline, Rebalancer, Recording, RunStatistics
from conveyor.cli.target import load_pipeline, read_lines
from conveyor.errors import ConveyorError, RecordingError, StageError
from conveyor.observe import Progress, limiting_line, run_summary, stage_table

STORE_OPTION = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The SQLite run store (default: $CONVEYOR_STORE or .conveyor/runs.db).",
)
TRACE_OPTION = click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write a Chrome/Perfetto trace (JSON) of every worker's activity.",
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
    help="Write every result to this file, one JSON value per line.",
)


@click.group()
@click.version_option(conveyor.__version__, prog_name="conveyor")
def cli() -> None:
    """conveyor: streaming compute pipelines that explain themselves."""


@cli.command("run")
@click.argument("target")
@click.option(
    "--source",
    "source_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Stream this file's lines (newline stripped) as the source, "
    "instead of the pipeline's own source=.",
)
@click.option("--ordered", is_flag=True, help="Yield results in source order.")
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the run's statistics to this file as JSON.",
)
@click.option(
    "--record",
    "record_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Save the run's recording here (gzipped JSON) for `conveyor analyze`.",
)
@TRACE_OPTION
@GANTT_OPTION
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=0,
    show_default=True,
    help="Serve Prometheus metrics on 127.0.0.1:PORT while the run goes on (0: off).",
)
@BUDGET_OPTION
@click.option(
    "--rebalance",
    type=click.IntRange(min=1),
    default=None,
    metavar="BUDGET",
    help="While the run goes on, move workers to the bottleneck, BUDGET workers in all.",
)
@STORE_OPTION
@click.option("--no-store", is_flag=True, help="Do not record the run in the run store.")
@OUTPUT_OPTION
def run_command(
    target: str,
    source_file: Path | None,
    ordered: bool,
    no_progress: bool,
    json_path: Path | None,
    record_path: Path | None,
    trace_path: Path | None,
    gantt_path: Path | None,
    metrics_port: int,
    budget: int | None,
    rebalance: int | None,
    store_path: Path | None,
    no_store: bool,
    output_path: Path | None,
) -> None:
    """Run the pipeline TARGET to the end and print a per-stage report.

    TARGET is module:attr or path/to/file.py:attr, naming a Pipeline or a
    function of no arguments that returns one.
    """
    _check_gantt_path(gantt_path)
    out = Console(width=None if sys.stdout.isatty() else 120)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    progress = Progress() if sys.stderr.isatty() and not no_progress else None
    try:
        pipeline = load_pipeline(target)
        if source_file is None and pipeline.source is None:
            raise click.UsageError(
                f"pipeline {pipeline.name!r} has no source; pass --source FILE (one item per "
                "line) or build it with Pipeline(..., source=...)"
            )
        source = read_lines(source_file) if source_file is not None else None
        metrics = _serve_metrics(metrics_port, err) if metrics_port else None
        if rebalance is not None and rebalance < len(pipeline.stages):
            raise click.UsageError(
                f"--rebalance {rebalance}: pipeline {pipeline.name!r} has "
                f"{len(pipeline.stages)} stages and each needs a worker; give at least "
                f"{len(pipeline.stages)}"
            )
        rebalancer = Rebalancer(rebalance) if rebalance is not None else None
        params = {
            "source": str(source_file.resolve()) if source_file is not None else None,
            "ordered": ordered or pipeline.ordered,
        }
        recorder = None if no_store else _recorder(store_path, pipeline, _stored(target), params)
        instruments: list[Any] = [
            i for i in (progress, metrics, rebalancer, recorder) if i is not None
        ]
        run = pipeline.stream(source, ordered=True if ordered else None, instruments=instruments)
    except ConveyorError as exc:  # the pipeline is built wrong: no run to report on
        err.print(f"[red]error: {escape(_describe_error(exc))}[/red]")
        sys.exit(1)
    try:
        failure, cancelled = _execute(run, progress, err, output_path)
    finally:
        if metrics is not None:
            metrics.close()
    stats = run.statistics()
    recording = _recording_of(run)
    _report(out, stats, recording, budget)
    if json_path is not None:
        _write_json(json_path, stats)
    if recording is not None:
        _write_outputs(recording, record_path, trace_path, gantt_path, err)
    if rebalancer is not None:
        for d in rebalancer.decisions:
            plan = ", ".join(f"{n} {w}" for n, w in d.workers.items())
            err.print(f"rebalanced at {d.t_s:.2f} s: {plan} (predicted {d.predicted_gain:.2f}×)")
    _finish(run, recorder, failure, cancelled, err)


@cli.command("resume")
@click.argument("run_ref", metavar="RUN")
@STORE_OPTION
@click.option(
    "--force",
    is_flag=True,
    help="Resume even if the run succeeded or its pipeline's code changed since.",
)
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@OUTPUT_OPTION
def resume_command(
    run_ref: str,
    store_path: Path | None,
    force: bool,
    no_progress: bool,
    output_path: Path | None,
) -> None:
    """Finish the interrupted run RUN (an id or its first characters), computing only
    what is missing: cached stages answer the items the run finished from the cache."""
    from conveyor.store import RunNotFoundError, StoreError, plan_resume, resume_report

    out = Console(width=None if sys.stdout.isatty() else 120)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    progress = Progress() if sys.stderr.isatty() and not no_progress else None
    store = _open_store(store_path, create=False)
    try:
        plan = plan_resume(store, run_ref, load_pipeline, force=force)
        recorder = _recorder(store, plan.pipeline, plan.record.target, plan.params())
        instruments = [i for i in (progress, recorder) if i is not None]
        run = plan.pipeline.stream(plan.source(), ordered=plan.ordered, instruments=instruments)
    except RunNotFoundError as exc:
        raise click.UsageError(str(exc)) from None
    except (StoreError, ConveyorError) as exc:
        err.print(f"[red]error: {escape(_describe_error(exc))}[/red]")
        sys.exit(1)
    err.print(f"resuming run {plan.record.id} of {plan.record.pipeline!r} as run {run.id}")
    failure, cancelled = _execute(run, progress, err, output_path)
    stats = run.statistics()
    _report(out, stats, _recording_of(run), None)
    for line in resume_report(plan, stats):
        out.print(escape(line))
    _finish(run, recorder, failure, cancelled, err)


def _execute(
    run: conveyor.Run, progress: Progress | None, err: Console, output_path: Path | None
) -> tuple[ConveyorError | None, bool]:
    """Drive ``run`` to its end with the live display; (failure, cancelled)."""
    live = (
        Live(progress, console=err, refresh_per_second=4, transient=True)
        if progress is not None
        else nullcontext()
    )
    output = output_path.open("w", encoding="utf-8") if output_path is not None else None
    try:
        with run, live:
            for result in run:
                if output is not None:
                    output.write(json.dumps(result, default=repr) + "\n")
    except KeyboardInterrupt:  # the run has cancelled itself: workers are stopped
        return None, True
    except ConveyorError as exc:
        return exc, False
    finally:
        if output is not None:
            output.close()
    return None, False


def _finish(
    run: conveyor.Run,
    recorder: Any,
    failure: ConveyorError | None,
    cancelled: bool,
    err: Console,
) -> None:
    """Say where the run is recorded and how to resume it; exit with its status."""
    if recorder is not None:
        where = recorder.store.path
        err.print(f"run {run.id} recorded in {where}")
        if failure is not None or cancelled:
            err.print(f"finish it with: conveyor resume {run.id[:8]} --store {where}")
    if cancelled:
        err.print("[yellow]cancelled[/yellow]")
        sys.exit(130)
    if failure is not None:
        err.print(f"[red]error: {escape(_describe_error(failure))}[/red]")
        sys.exit(1)


def _stored(target: str) -> str:
    """``target`` as the run store keeps it: a file target with an absolute path, so
    that ``conveyor resume`` finds it from any folder."""
    where, _, attr = target.rpartition(":")
    if where.endswith(".py"):
        return f"{Path(where).resolve()}:{attr}"
    return target


def _open_store(path: Path | None, *, create: bool = True) -> Any:
    """The run store at ``path`` (default: $CONVEYOR_STORE or .conveyor/runs.db); a
    missing or damaged store is a one-line error, as in `conveyor runs`."""
    from conveyor.cli.store import store_problem
    from conveyor.store import RunStore, StoreError

    try:
        return RunStore(path, create=create)
    except StoreError as exc:
        raise store_problem(exc) from None


def _recorder(store: Any, pipeline: Pipeline, target: str | None, params: dict[str, Any]) -> Any:
    from conveyor.store import RunStore, StoreRecorder

    if not isinstance(store, RunStore):
        store = _open_store(store)
    return StoreRecorder(store, pipeline=pipeline, params=params, target=target)


@cli.command("analyze")
@click.argument("recording_path", metavar="RECORDING", type=click.Path(path_type=Path))
@BUDGET_OPTION
@TRACE_OPTION
@GANTT_OPTION
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write every figure of the report to this file as JSON.",
)
def analyze_command(
    recording_path: Path,
    budget: int | None,
    trace_path: Path | None,
    gantt_path: Path | None,
    json_path: Path | None,
) -> None:
    """Explain a recorded run: RECORDING is a file saved by `conveyor run --record`."""
    from conveyor.analysis import build_report

    _check_gantt_path(gantt_path)
    width = (
        int(os.environ.get("COLUMNS", "120")) if os.environ.get("COLUMNS", "").isdigit() else 120
    )
    out = Console(width=None if sys.stdout.isatty() else width)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    try:
        recording = Recording.load(recording_path)
    except RecordingError as exc:
        raise click.UsageError(str(exc)) from None
    report = build_report(recording, budget=budget)
    out.print(report)
    if json_path is not None:
        _write_text(json_path, json.dumps(report.to_dict(), indent=2) + "\n", "--json")
    _write_outputs(recording, None, trace_path, gantt_path, err)


# --- run history and cache: conveyor runs | show | deadletters | cache ---------------------
from conveyor.cli.cache import cache as _cache  # noqa: E402
from conveyor.cli.store import deadletters as _deadletters  # noqa: E402
from conveyor.cli.store import runs as _runs  # noqa: E402
from conveyor.cli.store import show as _show  # noqa: E402

for _command in (_runs, _show, _deadletters, _cache):
    cli.add_command(_command)

# --- conveyor train: registered from the train extra -----------------------------------
try:
    from conveyor.train.cli import train as _train
except ImportError as exc:
    if not (exc.name or "").startswith("conveyor.train"):  # the module is there, torch is not
        _missing = exc.name

        @cli.command("train", context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def _train_missing(args: tuple[str, ...]) -> None:
            """Pipeline-parallel training (needs the train extra)."""
            raise click.ClickException(
                f"conveyor train needs the train extra ({_missing} is not installed): "
                "pip install torch, then pip install 'conveyor[train]'"
            )
else:
    cli.add_command(_train)
# -----------------------------------------------------------------------------------------


def main() -> None:
    """Entry point of the ``conveyor`` command."""
    cli()


def _report(
    console: Console, stats: RunStatistics, recording: Recording | None, budget: int | None
) -> None:
    if recording is None or not recording.stages:
        console.print(stage_table(stats))
        console.print(escape(run_summary(stats)))
        line = limiting_line(stats)
        if line is not None:
            console.print(escape(line))
        return
    from conveyor.analysis import build_report

    report = build_report(recording, budget=budget)
    console.print(report.table())
    console.print(escape(run_summary(stats)))
    for line in report.lines()[1:]:  # the first repeats the summary, in the report's words
        console.print(escape(line))


def _recording_of(run: conveyor.Run) -> Recording | None:
    try:
        return run.recording
    except RuntimeError:  # not started (failed while starting): nothing recorded
        return None


def _serve_metrics(port: int, err: Console) -> Any:
    try:
        from conveyor.observe import Metrics

        metrics = Metrics()
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        bound = metrics.serve(port)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    err.print(f"metrics at http://127.0.0.1:{bound}/metrics")
    return metrics


def _write_outputs(
    recording: Recording,
    record_path: Path | None,
    trace_path: Path | None,
    gantt_path: Path | None,
    err: Console,
) -> None:
    from conveyor.observe import chrome_trace, gantt_svg

    if record_path is not None:
        try:
            recording.save(record_path)
        except OSError as exc:
            raise click.ClickException(
                f"cannot write the recording to --record {str(record_path)!r}: {exc.strerror}; "
                "check that its directory exists and is writable"
            ) from exc
    if trace_path is not None:
        _write_text(trace_path, json.dumps(chrome_trace(recording)), "--trace")
    if gantt_path is not None:
        _write_text(gantt_path, gantt_svg(recording), "--gantt")
    for what, path in (("recording", record_path), ("trace", trace_path), ("timeline", gantt_path)):
        if path is not None:
            err.print(f"{what} written to {escape(str(path))}")


def _check_gantt_path(path: Path | None) -> None:
    if path is not None and path.suffix.lower() != ".svg":
        raise click.UsageError(
            f"--gantt {str(path)!r}: the timeline is drawn as SVG; give a path ending in .svg"
        )


def _write_text(path: Path, text: str, option: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(
            f"cannot write {option} {str(path)!r}: {exc.strerror}; "
            "check that its directory exists and is writable"
        ) from exc


def _write_json(path: Path, stats: RunStatistics) -> None:
    try:
        path.write_text(json.dumps(dataclasses.asdict(stats), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the statistics to --json {str(path)!r}: {exc.strerror}; "
            "check that its directory exists and is writable"
        ) from exc


def _describe_error(exc: ConveyorError) -> str:
    message = str(exc)
    cause = exc.__cause__
    if isinstance(exc, StageError) and cause is not None:
        what = f"{type(cause).__name__}: {cause}"
        if what not in message:
            message += f"\n  caused by {what}"
    return message


if __name__ == "__main__":
    main()
