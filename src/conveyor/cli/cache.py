"""``conveyor cache``: list, size, clear and verify the stage cache.

::

    $ conveyor cache ls                 # entries and bytes per stage
    $ conveyor cache ls --stage parse   # each entry of one stage
    $ conveyor cache size
    $ conveyor cache clear --stage parse
    $ conveyor cache verify --sample 50 # recompute 50 entries; exit 1 if any differs

``--cache PATH`` (before the subcommand) names another cache folder than the
default: ``$CONVEYOR_CACHE``, else ``.conveyor/cache`` in the nearest folder upwards
that has a ``.conveyor/``, else ``./.conveyor/cache``. Every cached value can be recomputed, so clearing asks nothing.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from conveyor.cache import DEFAULT_ROOT, StageCache, verify_cache


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 120)


@click.group("cache")
@click.option(
    "--cache",
    "cache_path",
    default=None,
    help=f"The cache folder, or its URL (s3://bucket/cache) (default ./{DEFAULT_ROOT}).",
)
@click.pass_context
def cache(ctx: click.Context, cache_path: str | None) -> None:
    """List, size, clear and verify the stage cache."""
    if cache_path is not None and "://" not in cache_path:
        folder = Path(cache_path)
        if folder.exists() and not folder.is_dir():
            raise click.UsageError(f"--cache {cache_path} is a file; give the cache's folder")
    ctx.obj = StageCache(cache_path)  # a URL it cannot use: one line (CacheError)


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


@cache.command("verify")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    help="Recompute this many entries, picked at random (default: every entry).",
)
@click.option("--stage", help="Only this stage's entries (its name as `ls` shows it).")
@click.option("--seed", type=int, default=None, help="Seed of the random pick, to repeat it.")
@click.pass_obj
def verify(store: StageCache, sample: int | None, stage: str | None, seed: int | None) -> None:
    """Recompute entries and compare them with what the cache holds.

    Runs each entry's stage function (imported as the run imported it: run this in
    the folder the pipeline runs from) on the entry's input. An entry that differs
    means the stage's fingerprint missed something its result depends on; each is
    reported with its stage and what the fingerprint did not read. Exit 1 if any
    entry differs, 0 otherwise.
    """
    report = verify_cache(store, sample=sample, stage=stage, seed=seed)
    for f in report.findings:
        if f.status != "same":
            click.echo(f"{f.status}: stage {f.stage!r}, entry {f.key[:12]}: {f.detail}")
    checked = len(report.findings)
    counts = ", ".join(
        f"{report.count(status)} {status}"
        for status in ("same", "differs", "outdated", "unchecked")
    )
    of = f"{checked} of {report.total}" if checked < report.total else f"all {checked}"
    click.echo(f"verified {of} entries in {store.root}: {counts}")
    if report.differing:
        stages = sorted({f.stage for f in report.differing})
        click.echo(
            "stale entries found in " + ", ".join(repr(s) for s in stages) + ": clear them "
            "(`conveyor cache clear --stage NAME`) once the stage declares what it depends on"
        )
        raise SystemExit(1)


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
