"""``conveyor cache``: list, size and clear the stage cache.

::

    $ conveyor cache ls                 # entries and bytes per stage
    $ conveyor cache ls --stage parse   # each entry of one stage
    $ conveyor cache size
    $ conveyor cache clear --stage parse

``--cache PATH`` (before the subcommand) names another cache folder than
``./.conveyor/cache``. Every cached value can be recomputed, so clearing asks nothing.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from conveyor.cache import DEFAULT_ROOT, StageCache


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 120)


@click.group("cache")
@click.option(
    "--cache",
    "cache_path",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"The cache folder (default ./{DEFAULT_ROOT}).",
)
@click.pass_context
def cache(ctx: click.Context, cache_path: Path | None) -> None:
    """List, size and clear the stage cache."""
    if cache_path is not None and cache_path.exists() and not cache_path.is_dir():
        raise click.UsageError(f"--cache {cache_path} is a file; give the cache's folder")
    ctx.obj = StageCache(cache_path)


@cache.command("ls")
@click.option("--stage", help="List each entry of this stage instead of a summary.")
@click.pass_obj
def ls(store: StageCache, stage: str | None) -> None:
    """Entries and bytes per stage; with --stage, each entry of that stage."""
    out = _console()
    entries = store.entries(stage)
    if not entries:
        what = f"no entries for stage {stage!r}" if stage else "no entries"
        out.print(f"cache {escape(str(store.root))}: {escape(what)}")
        return
    if stage is not None:
        table = Table(header_style="bold")
        for column in ("key", "bytes", "written"):
            table.add_column(column, justify="right" if column == "bytes" else "left")
        for e in entries:
            table.add_row(e.key, str(e.size_bytes), _when(e.created_at))
        out.print(table)
        return
    per_stage: dict[str, tuple[int, int]] = {}
    for e in entries:
        n, size = per_stage.get(e.stage, (0, 0))
        per_stage[e.stage] = (n + 1, size + e.size_bytes)
    table = Table(title=f"cache {escape(str(store.root))}", title_justify="left")
    table.add_column("stage")
    table.add_column("entries", justify="right")
    table.add_column("size", justify="right")
    for name, (n, size) in sorted(per_stage.items()):
        table.add_row(escape(name), str(n), human_bytes(size))
    out.print(table)


@cache.command("size")
@click.pass_obj
def size(store: StageCache) -> None:
    """Total entries and bytes on disk."""
    entries = store.entries()
    total = sum(e.size_bytes for e in entries)
    click.echo(f"{len(entries)} entries, {human_bytes(total)} ({total} bytes) in {store.root}")


@cache.command("clear")
@click.option("--stage", help="Clear only this stage's entries.")
@click.pass_obj
def clear(store: StageCache, stage: str | None) -> None:
    """Delete every entry, or only --stage's."""
    removed = store.clear(stage)
    what = f" of stage {stage!r}" if stage else ""
    click.echo(f"removed {removed} entries{what} from {store.root}")


def human_bytes(n: int) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )
