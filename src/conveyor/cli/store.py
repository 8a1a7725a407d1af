"""``conveyor runs``, ``conveyor show RUN``, ``conveyor deadletters RUN``: the run store
from the command line.

::

    $ conveyor runs                      # the latest runs, newest first
    $ conveyor show 7f3a                 # one run: stages, outcomes, and its ledger
    $ conveyor deadletters 7f3a --traceback

RUN is a run id or a unique prefix of one. The store is ``$CONVEYOR_STORE``, else
``.conveyor/runs.db`` in the nearest folder upwards that has a ``.conveyor/``, as git
finds its repository; ``--store PATH`` reads another. These commands only read, and open the store read-only, so
a store in a folder they cannot write (a read-only mount, another user's) can be
listed. Errors are one line: exit 2 for an unknown or ambiguous run or a missing
store, 1 for a store that is corrupt, not a store, or from a newer conveyor; 3 from
``show`` when the run's ledger does not balance.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from conveyor.cli.errors import OneLineError
from conveyor.errors import RunNotFoundError, StoreError
from conveyor.store import DEFAULT_PATH, Ledger, RunRecord, RunStore

T = TypeVar("T")

FAILURES_SHOWN = 10
STAGE_COLUMNS: tuple[str, ...] = ("stage", "kind", "executor", "in", "out", "errors")
STAGE_COLUMNS += ("done", "failed", "skipped", "cached", "busy s")

store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"The SQLite run store (default: $CONVEYOR_STORE, else {DEFAULT_PATH} in the "
    "nearest folder upwards that has a .conveyor/ folder, else ./{DEFAULT_PATH}).",
)


class StoreProblem(OneLineError):
    """A StoreError with the store itself (corrupt, not a store, newer): one line, exit 1."""


class StoreUsageProblem(StoreProblem):
    """An unknown or ambiguous run, or a missing store: one line, exit 2."""

    exit_code = 2


def store_problem(exc: StoreError) -> StoreProblem:
    """The click exception that reports ``exc``: exit 2 for a usage mistake, else 1."""
    missing = exc.path is not None and not exc.path.exists()
    if isinstance(exc, RunNotFoundError) or missing:
        return StoreUsageProblem(str(exc))
    return StoreProblem(str(exc))


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 120)


def _with_store(store_path: Path | None, fn: Callable[[RunStore], T]) -> T:
    try:
        with RunStore(store_path, create=False, readonly=True) as store:
            return fn(store)
    except StoreError as exc:
        raise store_problem(exc) from None


@click.command("runs")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True)
@store_option
def runs(limit: int, store_path: Path | None) -> None:
    """List the latest runs in the run store, newest first; a resumed run or a re-drive
    names the run it continues (column "of")."""
    records = _with_store(store_path, lambda s: s.runs(limit))
    out = _console()
    if not records:
        out.print("no runs recorded yet")
        return
    table = Table(title=None, header_style="bold")
    columns = ("run", "pipeline", "state", "started", "seconds", "read", "emitted", "host", "of")
    for column in columns:
        table.add_column(
            column, justify="right" if column in ("seconds", "read", "emitted") else "left"
        )
    for r in records:
        table.add_row(
            r.id,
            escape(r.pipeline),
            _state(r.state),
            _when(r.started_at or r.created_at),
            _num(r.elapsed_seconds, "{:.2f}"),
            _num(r.items_read),
            _num(r.items_emitted),
            escape(r.host),
            _origin(r),
        )
    out.print(table)


def _origin(run: RunRecord) -> str:
    """What run ``run`` continues: the run it resumed, or whose dead letters it re-drove."""
    if run.params.get("resumed_from"):
        return f"resume of {run.params['resumed_from'][:8]}"
    if run.params.get("redrive_of"):
        return f"redrive of {run.params['redrive_of'][:8]}"
    return ""


@click.command("show")
@click.argument("run_id", metavar="RUN")
@store_option
def show(run_id: str, store_path: Path | None) -> None:
    """Show run RUN: its record, each stage's statistics and item outcomes, and the
    ledger of its source items (done, filtered, dead-lettered, pending)."""

    def gather(store: RunStore) -> tuple[RunRecord, Any, Any, Ledger, Any]:
        run = store.get_run(run_id)
        return (
            run,
            store.stage_statistics(run.id),
            store.outcome_counts(run.id),
            store.ledger(run.id),
            store.item_outcomes(run.id, outcome="failed"),
        )

    run, stages, outcomes, ledger, failures = _with_store(store_path, gather)
    out = _console()
    title = f"[bold]run {run.id}[/bold] of pipeline {escape(repr(run.pipeline))}"
    out.print(f"{title}: {_state(run.state)}")
    elapsed = _num(run.elapsed_seconds, "{:.3f} s")
    out.print(
        f"  started {_when(run.started_at or run.created_at)}, ran {elapsed}, on "
        f"{escape(run.host)} (pid {run.pid}), conveyor {escape(run.conveyor_version)}"
    )
    if run.target:
        out.print(f"  target {escape(run.target)}")
    if run.params:
        out.print(f"  params {escape(repr(run.params))}")
    out.print(f"  code fingerprint {run.fingerprint[:16] if run.fingerprint else 'unknown'}")
    if run.error:
        out.print(f"  [red]error: {escape(run.error)}[/red]")
    if stages:
        table = Table(title="stages", title_justify="left", header_style="bold")
        for column in STAGE_COLUMNS:
            table.add_column(column, justify="left" if column in ("stage", "kind") else "right")
        for s in stages:
            counts = outcomes.get(s.stage, {})
            table.add_row(
                escape(s.stage),
                s.kind,
                f"{s.executor}\u00d7{s.workers}",
                str(s.items_in),
                str(s.items_out),
                str(s.errors),
                *(str(counts.get(o, 0)) for o in ("done", "failed", "skipped", "cached")),
                f"{s.busy_seconds:.3f}",
            )
        out.print(table)
    if failures:
        shown = failures[:FAILURES_SHOWN]
        more = f" (first {len(shown)} of {len(failures)})" if len(failures) > len(shown) else ""
        out.print(f"failed attempts{more}:")
        for o in shown:
            attempt = f" attempt {o.attempt}" if o.attempt else ""
            out.print(f"  {escape(o.stage)} item {o.key}{attempt}: {escape(o.error or '?')}")
    _print_ledger(out, run, ledger)
    if run.state in ("succeeded", "failed", "cancelled") and not ledger.balanced:
        sys.exit(3)


def _print_ledger(out: Console, run: RunRecord, ledger: Ledger) -> None:
    table = Table(title="ledger of source items", title_justify="left", header_style="bold")
    table.add_column("terminal state")
    table.add_column("items", justify="right")
    for label, n in (
        ("done (reached the sinks)", ledger.done),
        ("filtered (dropped by a stage)", ledger.filtered),
        ("dead-lettered", ledger.dead_lettered),
        ("pending (never finished)", ledger.pending),
    ):
        table.add_row(label, str(n))
    table.add_row("[bold]total[/bold]", f"[bold]{ledger.accounted}[/bold]")
    table.add_row("read from the source", _num(ledger.items_read))
    out.print(table)
    if ledger.balanced:
        out.print(f"[green]balanced:[/green] {escape(str(ledger))}")
    elif run.state in ("pending", "running"):
        out.print(
            f"[yellow]not final:[/yellow] run {run.id} is {run.state} (or its process died "
            f"before it ended); {escape(str(ledger))}"
        )
    else:
        out.print(f"[red]NOT BALANCED:[/red] {escape(str(ledger))}")


@click.command("deadletters")
@click.argument("run_id", metavar="RUN")
@click.option("--traceback", "show_traceback", is_flag=True, help="Print each traceback.")
@click.option(
    "--redrive",
    is_flag=True,
    help="Run the dead-lettered items again through the stage that gave up on them and "
    "the stages after it (after a fix), recording a new run per stage; each letter is "
    "marked with the run that re-drove it, and is not re-driven again without --force.",
)
@click.option(
    "--output",
    "output_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="With --redrive: write every result to this file, one JSON value per line.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --redrive: re-drive the letters that an earlier --redrive re-drove too.",
)
@store_option
def deadletters(
    run_id: str,
    show_traceback: bool,
    redrive: bool,
    output_path: Path | None,
    force: bool,
    store_path: Path | None,
) -> None:
    """List the items run RUN gave up on: stage, item key, error, input value and the
    run that re-drove it, if one has; with --redrive, run them again."""
    if not redrive and (output_path is not None or force):
        raise click.UsageError("--output and --force go with --redrive")

    def gather(store: RunStore) -> tuple[RunRecord, Any]:
        run = store.get_run(run_id)
        return run, store.dead_letters(run.id)

    run, letters = _with_store(store_path, gather)
    out = _console()
    if not letters:
        out.print(f"run {run.id} has no dead letters")
        return
    if redrive:
        _redrive(run, letters, store_path, out, output_path, force)
        return
    table = Table(
        title=f"{len(letters)} dead letters of run {run.id}",
        title_justify="left",
        header_style="bold",
    )
    redriven = any(d.redriven_by for d in letters)
    for column in ("stage", "item", "error", "value", *(("re-driven by",) if redriven else ())):
        table.add_column(column)
    for d in letters:
        table.add_row(
            escape(d.stage),
            d.key,
            escape(f"{d.error_type}: {d.error}"),
            escape(d.value_repr),
            *((d.redriven_by or "-",) if redriven else ()),
        )
    out.print(table)
    if show_traceback:
        for d in letters:
            if d.traceback:
                out.print(f"\n[bold]{escape(d.stage)} item {d.key}[/bold]")
                out.print(escape(d.traceback.rstrip()), highlight=False)


def _state(state: str) -> str:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(state)
    return f"[{colour}]{state}[/{colour}]" if colour else state


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


def _num(value: float | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _redrive(
    run: RunRecord,
    letters: list[Any],
    store_path: Path | None,
    out: Console,
    output_path: Path | None,
    force: bool,
) -> None:
    from conveyor.cli.outputs import results_file
    from conveyor.cli.target import load_pipeline
    from conveyor.store import StoreRecorder, redrive_plan

    if not run.target:
        raise StoreUsageProblem(
            f"run {run.id} was not started by `conveyor run`, so its pipeline cannot be "
            "loaded here; re-drive from Python: DeadLetter.load_value() gives each input"
        )
    done = [d for d in letters if d.redriven_by]
    todo = letters if force else [d for d in letters if not d.redriven_by]
    if not todo:
        by = sorted({d.redriven_by for d in done})
        raise StoreUsageProblem(
            f"the {len(done)} dead letter(s) of run {run.id} were re-driven already "
            f"(by run {', '.join(by)}); pass --force to re-drive them again"
        )
    if done and not force:
        out.print(f"{len(done)} dead letter(s) re-driven already are left out (--force: all)")
    pipeline = load_pipeline(run.target)
    plans = redrive_plan(pipeline, todo)  # a PipelineError is the group's to show
    with RunStore(store_path, create=False) as store, results_file(output_path) as write:
        for sub, values in plans:
            group = [d for d in todo if d.stage == sub.order[0]]
            recorder = StoreRecorder(
                store, pipeline=sub, params={"redrive_of": run.id}, target=run.target
            )
            emitted = 0
            with sub.stream(values, instruments=[recorder]) as again:
                for result in again:
                    emitted += 1
                    if write is not None:
                        write.write(result)
            store.mark_redriven(run.id, group, again.id)
            stats = again.statistics()
            dead = sum(st.dead_lettered for st in stats.stages.values())
            kept = f"written to {output_path}" if write is not None else "not kept (--output FILE)"
            out.print(
                f"re-drove {len(values)} item(s) through {', '.join(sub.order)}: "
                f"{emitted} result(s) {kept}, {dead} dead-lettered again (run {again.id})"
            )
