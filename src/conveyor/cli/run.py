"""``conveyor run TARGET`` and ``conveyor resume RUN``: drive a pipeline to its end,
record it in the run store, and explain it.

Both load the pipeline, start it with the progress display on stderr (a live table
on a terminal, plain lines every ``--progress-every`` seconds otherwise), the run
store's recorder and the instruments asked for, iterate it in the
main thread, and print the report, failed or cancelled runs included. SIGINT and
SIGTERM cancel the run cleanly (see :mod:`conveyor.cli.signals`).

Exit codes: 0 the run succeeded; 1 it failed, or a conveyor error stopped the
command; 2 a usage error; 128 + the signal when SIGINT (130) or SIGTERM (143) came.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from conveyor import (
    ConveyorError,
    InstrumentError,
    Pipeline,
    Rebalancer,
    Recorder,
    Recording,
    Run,
)
from conveyor.cli.cluster import RAY_OPTION, on_ray
from conveyor.cli.errors import describe_error
from conveyor.cli.outputs import (
    BUDGET_OPTION,
    DETAIL_OPTION,
    GANTT_OPTION,
    OUTPUT_OPTION,
    TRACE_FULL_OPTION,
    TRACE_OPTION,
    OutputProblem,
    ResultsFile,
    check_gantt_path,
    results_file,
    write_json,
    write_outputs,
)
from conveyor.cli.printing import consoles, print_report
from conveyor.cli.signals import Interrupted, SignalGuard, signal_name
from conveyor.cli.store import store_option, store_problem
from conveyor.cli.target import fingerprinted_source, load_pipeline, source_file, stored_source
from conveyor.errors import RecordingError, RunNotFoundError, StoreError
from conveyor.observe import ProgressDisplay
from conveyor.sources import FORMATS
from conveyor.store import RunStore, SnapshotRecorder, StoreRecorder, plan_resume, resume_report


@click.command("run")
@click.argument("target")
@click.option(
    "--source",
    "source_path",
    metavar="PATH",
    help="Read the source from this file, glob or URL instead of the pipeline's own "
    "source=; the reader is picked from the name: .jsonl/.ndjson JSON lines, .csv/.tsv "
    "rows as dicts, .parquet and .arrow/.feather rows as dicts, any other one item per "
    "line (newline stripped). Compressed files (.gz, .zst...) are read too.",
)
@click.option(
    "--source-format",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="Read --source in this format, whatever its name says.",
)
@click.option("--ordered", is_flag=True, help="Yield results in source order.")
@click.option("--no-progress", is_flag=True, help="No progress display.")
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="When stderr is not a terminal (a file, a pipe), write the progress as plain "
    "lines this often.",
)
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
@TRACE_FULL_OPTION
@GANTT_OPTION
@DETAIL_OPTION
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
@store_option
@click.option("--no-store", is_flag=True, help="Do not record the run in the run store.")
@OUTPUT_OPTION
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Override stages' policies (workers, executor, size, capacity, retry...) by "
    "name from this TOML file, e.g. one written by `conveyor analyze --write-config`.",
)
@RAY_OPTION
def run_command(
    target: str,
    source_path: str | None,
    source_format: str,
    ordered: bool,
    no_progress: bool,
    progress_every: float,
    json_path: Path | None,
    record_path: Path | None,
    trace_path: Path | None,
    trace_full: bool,
    gantt_path: Path | None,
    detail: int,
    metrics_port: int,
    budget: int | None,
    rebalance: int | None,
    store_path: Path | None,
    no_store: bool,
    output_path: Path | None,
    config_path: Path | None,
    ray_address: str | None,
) -> None:
    """Run the pipeline TARGET to the end and print a per-stage report.

    TARGET is module:attr or path/to/file.py:attr, naming a Pipeline or a
    function of no arguments that returns one.
    """
    check_gantt_path(gantt_path)
    out, err = consoles()
    progress = None if no_progress else _display(progress_every)
    with SignalGuard() as guard, ExitStack() as stack:
        try:
            # the store is opened and checked before any work, so a damaged one is
            # refused before the pipeline runs, not found out once it has
            store = None if no_store else _open_store(store_path, verify=True)
            if store is not None:
                stack.callback(store.close)  # once the run (and its writer) ended
            pipeline = load_pipeline(target)
            if config_path is not None:
                pipeline = pipeline.with_config(config_path)
            if ray_address:
                pipeline = on_ray(pipeline, ray_address)
            if source_path is None and pipeline.source is None:
                raise click.UsageError(
                    f"pipeline {pipeline.name!r} has no source; pass --source FILE (a file of "
                    "lines, JSON lines, CSV, Parquet...) or build it with "
                    "Pipeline(..., source=...)"
                )
            if rebalance is not None and rebalance < len(pipeline.stages):
                raise click.UsageError(
                    f"--rebalance {rebalance}: pipeline {pipeline.name!r} has "
                    f"{len(pipeline.stages)} stages and each needs a worker; give at least "
                    f"{len(pipeline.stages)}"
                )
            fmt = None if source_format == "auto" else source_format
            source = source_file(source_path, fmt) if source_path is not None else None
            write = stack.enter_context(results_file(output_path))
            metrics = _serve_metrics(metrics_port, err) if metrics_port else None
            if metrics is not None:
                stack.callback(metrics.close)
            rebalancer = Rebalancer(rebalance) if rebalance is not None else None
            params: dict[str, Any] = {
                "source": stored_source(source_path) if source_path is not None else None,
                "source_format": fmt,
                "ordered": ordered or pipeline.ordered,
            }
            digest = None
            if store is not None:  # what the run reads, so that resume reads the same
                source, digest, params["source_fingerprint"] = fingerprinted_source(
                    pipeline, source, params["source"]
                )
            recorder = (
                None
                if store is None
                else _recorder(
                    store,
                    pipeline,
                    _stored(target),
                    params,
                    write,
                    at_end=(lambda: {"source_items": digest.state()}) if digest else None,
                )
            )
            timeline = (  # live, stored
                Recorder(detail=detail) if store is None else SnapshotRecorder(store, detail=detail)
            )
            run = pipeline.stream(
                source,
                ordered=True if ordered else None,
                instruments=guard.shield([timeline, progress, metrics, rebalancer, recorder]),
                record=False,
            )
            failure = _execute(run, guard, write)
        except Interrupted as exc:  # came before the run started: nothing to cancel
            _cancelled_before_start(exc, err)
    stats = run.statistics()
    recording = _recording_of(timeline)
    print_report(out, stats, recording, budget)
    if json_path is not None:
        write_json(json_path, stats)
    if recording is not None:
        write_outputs(recording, record_path, trace_path, gantt_path, err, trace_full=trace_full)
    if rebalancer is not None:
        for d in rebalancer.decisions:
            plan = ", ".join(f"{n} {w}" for n, w in d.workers.items())
            err.print(f"rebalanced at {d.t_s:.2f} s: {plan} (predicted {d.predicted_gain:.2f}×)")
    _finish(run, recorder, failure, guard, err)


@click.command("resume")
@click.argument("run_ref", metavar="RUN")
@store_option
@click.option(
    "--force",
    is_flag=True,
    help="Resume even if the run succeeded, was resumed already, or its pipeline's code "
    "or its source changed since.",
)
@click.option("--no-progress", is_flag=True, help="No progress display.")
@OUTPUT_OPTION
def resume_command(
    run_ref: str,
    store_path: Path | None,
    force: bool,
    no_progress: bool,
    output_path: Path | None,
) -> None:
    """Finish the interrupted run RUN (an id or its first characters) over the same
    source (refused if it changed), skipping the source items RUN finished, so no
    sink sees an item twice; cached stages answer from the cache what RUN computed of
    the rest. --output gets the results of the items RUN had not finished."""
    out, err = consoles()
    progress = None if no_progress else _display(10.0)
    with SignalGuard() as guard, ExitStack() as stack:
        try:
            store = _open_store(store_path, create=False, verify=True)
            stack.callback(store.close)
            try:
                plan = plan_resume(store, run_ref, load_pipeline, force=force)
            except RunNotFoundError as exc:
                raise click.UsageError(str(exc)) from None
            source = plan.source()  # a source that can be read twice is checked here
            write = stack.enter_context(results_file(output_path))
            recorder = _recorder(
                store,
                plan.pipeline,
                plan.record.target,
                plan.params(),
                write,
                at_end=lambda: {"source_items": plan.source_items()},
            )
            timeline = SnapshotRecorder(store)  # the dashboard's live view and recording
            run = plan.pipeline.stream(
                source,
                ordered=plan.ordered,
                instruments=guard.shield([timeline, progress, recorder]),
                record=False,
            )
            err.print(f"resuming run {plan.record.id} of {plan.record.pipeline!r} as run {run.id}")
            failure = _execute(run, guard, write)
        except Interrupted as exc:  # came before the run started: nothing to cancel
            _cancelled_before_start(exc, err)
    stats = run.statistics()
    print_report(out, stats, _recording_of(timeline), None)
    for line in resume_report(plan, stats):
        out.print(escape(line))
    _finish(run, recorder, failure, guard, err)


def _execute(
    run: Run, guard: SignalGuard, write: ResultsFile | None
) -> ConveyorError | OutputProblem | None:
    """Drive ``run`` to its end; the error that failed it (the run's, or the results
    file's: one that cannot be written stops the run). The progress display, an
    instrument of the run, shows itself from its start to its end.

    A signal cancels it (``guard.signum`` says which); either way every worker is
    stopped when this returns.
    """
    try:
        with guard.watching(run), run:
            for result in run:
                if write is not None:
                    write.write(result)
    except KeyboardInterrupt:  # Interrupted, or Ctrl-C where no guard could be set
        if guard.signum is None:
            guard.signum = signal.SIGINT  # a KeyboardInterrupt with no handler of ours
    except (ConveyorError, OutputProblem) as exc:
        return exc
    return write.problem if write is not None else None  # its last flush, as the run ended


def _finish(
    run: Run,
    recorder: StoreRecorder | None,
    failure: ConveyorError | OutputProblem | None,
    guard: SignalGuard,
    err: Console,
) -> None:
    """Say where the run is recorded and how to resume it; exit with its status."""
    if recorder is not None and recorder.error is not None:
        # the run could not be recorded: that, in one line, is what went wrong
        if recorder.ended is None:
            kept = f"it could not be marked failed in {recorder.store.path} either"
        else:
            kept = f"it is recorded as {recorder.ended} in {recorder.store.path}"
        if isinstance(failure, InstrumentError) and failure.__cause__ is recorder.error:
            failure = None  # the same failure, in the words of the instrument that stopped
        err.print(
            f"[red]error: run {run.id} could not be recorded in full: "
            f"{escape(str(recorder.error))}; {escape(kept)}[/red]",
            soft_wrap=True,  # one line, however long
        )
    elif recorder is not None:
        where = recorder.store.path
        err.print(f"run {run.id} recorded in {where}")
        if run.state in ("failed", "cancelled") or recorder.ended == "failed":
            err.print(f"finish it with: conveyor resume {run.id[:8]} --store {where}")
    if failure is not None:
        err.print(f"[red]error: {escape(describe_error(failure))}[/red]")
    if guard.signum is not None:
        name = signal_name(guard.signum)
        if guard.draining and not guard.cancelled_drain:
            err.print(f"[yellow]drained on {name}: every item read has finished[/yellow]")
        elif run.state == "cancelled":
            err.print(f"[yellow]cancelled by {name}[/yellow]")
        else:  # it came as the run ended: the run's own state stands
            err.print(f"[yellow]{name} received as the run ended ({run.state})[/yellow]")
        sys.exit(128 + guard.signum)
    if failure is not None or run.state == "failed" or (recorder and recorder.error):
        sys.exit(1)


def _cancelled_before_start(exc: Interrupted, err: Console) -> NoReturn:
    err.print(f"[yellow]cancelled by {signal_name(exc.signum)} before the run started[/yellow]")
    sys.exit(exc.exit_code)


def _display(every: float) -> ProgressDisplay:
    """The progress on stderr: live on a terminal (gone once the report is printed),
    plain lines every ``every`` seconds on a file or a pipe."""
    return ProgressDisplay(file=sys.stderr, every=every, transient=True)


def _stored(target: str) -> str:
    """``target`` as the run store keeps it: a file target with an absolute path, so
    that ``conveyor resume`` finds it from any folder."""
    where, _, attr = target.rpartition(":")
    if where.endswith(".py"):
        return f"{Path(where).resolve()}:{attr}"
    return target


def _open_store(path: Path | None, *, create: bool = True, verify: bool = False) -> RunStore:
    """The run store at ``path`` (default: $CONVEYOR_STORE or the nearest .conveyor/
    upwards); with
    ``verify``, SQLite's quick check of every page first. A missing or damaged store
    is a one-line error, as in `conveyor runs`."""
    try:
        store = RunStore(path, create=create)
    except StoreError as exc:
        raise store_problem(exc) from None
    try:
        if verify:
            store.verify()
    except StoreError as exc:
        store.close()
        raise store_problem(exc) from None
    return store


class _RunRecorder(StoreRecorder):
    """The recorder of `conveyor run` and `resume`: a run that cannot be recorded
    stops (critical), and the results file is flushed before the run's end is
    recorded, so a run whose results could not be written is recorded as failed."""

    critical = True

    def __init__(
        self,
        *args: Any,
        results: ResultsFile | None,
        at_end: Callable[[], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.results = results
        self.at_end = at_end  # params known only at the end (the source's fingerprint)
        if results is not None:
            results.on_error = self.fail

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        if self.results is not None:
            with contextlib.suppress(OutputProblem):  # self.fail has it: recorded failed
                self.results.flush()
        if self.at_end is not None and self.run_id is not None and self.error is None:
            try:
                self.store.update_params(self.run_id, self.at_end())
            except StoreError as exc:
                self.fail(exc)
        super().run_finished(state, error, t_ns)


def _recorder(
    store: RunStore,
    pipeline: Pipeline,
    target: str | None,
    params: dict[str, Any],
    results: ResultsFile | None,
    at_end: Callable[[], dict[str, Any]] | None = None,
) -> StoreRecorder:
    return _RunRecorder(
        store, pipeline=pipeline, params=params, target=target, results=results, at_end=at_end
    )


def _recording_of(timeline: Recorder) -> Recording | None:
    try:
        return timeline.recording
    except RecordingError:  # not started (failed while starting): nothing recorded
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
