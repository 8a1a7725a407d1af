"""The ``conveyor`` command: run a pipeline from a file or module and explain the run.

::

    $ conveyor run examples/science.py:pipeline
    $ conveyor run mypackage.jobs:build_pipeline --source events.txt --json stats.json
    $ conveyor --version

``TARGET`` is ``module:attr`` or ``path/to/file.py:attr``; ``attr`` names a
:class:`~conveyor.Pipeline`, or a function of no arguments that returns one. While
the run goes on a live table (stderr, terminals only) shows each stage's progress;
afterwards a table explains it: per-stage throughput, service time, busy share,
peak queue, and the stage that limits throughput.

Exit codes: 0 success; 1 the run failed (or the target raised while loading);
2 a usage error (bad TARGET, missing file or attribute); 130 cancelled by Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape

import conveyor
from conveyor._errors import ConveyorError, StageError
from conveyor._pipeline import Pipeline
from conveyor._progress import Progress
from conveyor._report import limiting_line, run_summary, stage_table
from conveyor._stage import Stage
from conveyor._statistics import RunStatistics

TARGET_HELP = "TARGET is module:attr or path/to/file.py:attr, e.g. examples/science.py:pipeline"


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
def run_command(
    target: str,
    source_file: Path | None,
    ordered: bool,
    no_progress: bool,
    json_path: Path | None,
) -> None:
    """Run the pipeline TARGET to the end and print a per-stage report.

    TARGET is module:attr or path/to/file.py:attr, naming a Pipeline or a
    function of no arguments that returns one.
    """
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
        source = _read_lines(source_file) if source_file is not None else None
        run = pipeline.stream(
            source, ordered=True if ordered else None, instruments=[progress] if progress else []
        )
    except ConveyorError as exc:  # the pipeline is built wrong: no run to report on
        err.print(f"[red]error: {escape(_describe_error(exc))}[/red]")
        sys.exit(1)
    live = (
        Live(progress, console=err, refresh_per_second=4, transient=True)
        if progress is not None
        else nullcontext()
    )
    failure: ConveyorError | None = None
    cancelled = False
    try:
        with run, live:
            for _ in run:
                pass
    except KeyboardInterrupt:  # the run has cancelled itself: workers are stopped
        cancelled = True
    except ConveyorError as exc:
        failure = exc
    stats = run.statistics()
    _report(out, stats)
    if json_path is not None:
        _write_json(json_path, stats)
    if cancelled:
        err.print("[yellow]cancelled[/yellow]")
        sys.exit(130)
    if failure is not None:
        err.print(f"[red]error: {escape(_describe_error(failure))}[/red]")
        sys.exit(1)


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


def load_pipeline(target: str) -> Pipeline:
    """The :class:`Pipeline` that ``target`` (``module:attr`` or ``file.py:attr``) names.

    A file is loaded as a module named after its stem, with its directory put first
    on ``sys.path`` so process workers can import it too. Raises
    :class:`click.UsageError` (exit 2) for a target that cannot be found and
    :class:`click.ClickException` (exit 1) for one that fails while loading.
    """
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr or not attr.isidentifier():
        raise click.UsageError(f"bad TARGET {target!r}: {TARGET_HELP}")
    module = _load_file(where) if _is_path(where) else _import_module(where)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, Pipeline))
        hint = (
            f"it defines these pipelines: {', '.join(found)}"
            if found
            else "it defines no Pipeline at module level"
        )
        raise click.UsageError(f"{where!r} has no attribute {attr!r}; {hint}") from None
    return _as_pipeline(obj, target)


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _load_file(where: str) -> ModuleType:
    path = Path(where)
    if not path.is_file():
        raise click.UsageError(
            f"file {where!r} not found (from {Path.cwd()}); give a path to a .py file, "
            "e.g. examples/science.py:pipeline"
        )
    if path.suffix != ".py":
        raise click.UsageError(f"{where!r} is not a .py file; {TARGET_HELP}")
    path = path.resolve()
    name = path.stem
    # First on sys.path before loading: spawned process workers inherit sys.path and
    # import the stages' functions from this module by name.
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise click.UsageError(f"cannot load {where!r} as a Python module")
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) != str(path):
        raise click.UsageError(
            f"{where!r} would be imported as module {name!r}, but a module of that name is "
            f"already loaded ({getattr(loaded, '__file__', None) or 'built in'}); "
            "rename the file"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ConveyorError:
        del sys.modules[name]
        raise
    except Exception as exc:
        del sys.modules[name]
        raise click.ClickException(
            f"loading {where!r} raised {type(exc).__name__}: {exc}; fix the file "
            f"(try: python {where})"
        ) from exc
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            raise click.UsageError(
                f"no module named {name!r}; check the name and that it is importable from "
                f"here, or give a file: path/to/{name.rpartition('.')[2]}.py:attr"
            ) from None
        raise click.ClickException(
            f"importing {name!r} raised ModuleNotFoundError: {exc}; install the missing module"
        ) from exc
    except ConveyorError:
        raise
    except Exception as exc:
        raise click.ClickException(
            f"importing {name!r} raised {type(exc).__name__}: {exc}"
        ) from exc


def _as_pipeline(obj: Any, target: str) -> Pipeline:
    if isinstance(obj, Pipeline):
        return obj
    if isinstance(obj, Stage):
        raise click.UsageError(
            f"{target!r} is a Stage, not a Pipeline; wrap it: "
            f"Pipeline('name', [{obj.name}], source=...)"
        )
    if not callable(obj):
        raise click.UsageError(
            f"{target!r} is a {type(obj).__name__}, not a Pipeline; name a Pipeline or a "
            "function of no arguments that returns one"
        )
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise click.UsageError(
            f"{target!r} is a callable that needs arguments; name a Pipeline or a function "
            "of no arguments that returns one"
        ) from None
    except ValueError:
        pass  # no signature to check (some builtins): just call it
    try:
        result = obj()
    except ConveyorError:
        raise
    except Exception as exc:
        raise click.ClickException(
            f"calling {target!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, Pipeline):
        raise click.UsageError(
            f"{target!r}() returned a {type(result).__name__}, not a Pipeline; return the Pipeline"
        )
    return result


def _read_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\r\n")


def _report(console: Console, stats: RunStatistics) -> None:
    console.print(stage_table(stats))
    console.print(escape(run_summary(stats)))
    line = limiting_line(stats)
    if line is not None:
        console.print(escape(line))


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
