"""``conveyor store check``: look the run store over and mend what can be mended.

::

    $ conveyor store check                 # check, and rebuild damaged indexes
    $ conveyor store check --no-repair     # only look (opens the store read-only)

What it looks at (see :class:`~conveyor.store.StoreCheck`): SQLite's integrity check
(every page, every b-tree, every index against its table), rows whose run is gone,
and every finished run's ledger. A damaged index is rebuilt from its table
(``REINDEX``) and checked again; anything else is listed with what to do.

Exit codes: 0 the store is sound (after the repairs it lists, if any); 1 it is
damaged in a way that cannot be repaired here, or cannot be opened at all; 2 there
is no store at that path; 3 (``--no-repair``) the only damage is to indexes, which
a run without ``--no-repair`` rebuilds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from conveyor.cli.store import store_option, store_problem
from conveyor.errors import StoreError
from conveyor.store import RunStore, StoreCheck

UNREPAIRABLE = (
    "what is left cannot be repaired from the store itself: restore it from a backup, "
    "or move it aside (a new store is made on the next run); the sqlite3 shell's "
    ".recover command copies out whatever can still be read"
)


@click.group("store")
def store_group() -> None:
    """Look after the run store."""


@store_group.command("check")
@store_option
@click.option(
    "--no-repair",
    is_flag=True,
    help="Only look: change nothing (the store is opened read-only).",
)
def check_command(store_path: Path | None, no_repair: bool) -> None:
    """Check the run store: SQLite's integrity check (pages, b-trees, each index
    against its table), rows whose run is gone, and every finished run's ledger.
    Damaged indexes are rebuilt from their tables; the rest is reported.

    Exit codes: 0 sound (after any repairs listed), 1 damage that cannot be repaired
    here, 2 no store, 3 with --no-repair: only indexes are damaged (repairable).
    """
    try:
        with RunStore(store_path, create=False, readonly=no_repair, check_on_open=False) as store:
            found = store.check(repair=not no_repair)
    except StoreError as exc:
        raise store_problem(exc) from None
    for line in found.lines():
        click.echo(line)
    sys.exit(_exit_code(found, no_repair))


def _exit_code(found: StoreCheck, no_repair: bool) -> int:
    if found.ok:
        return 0
    if no_repair and found.repairable:
        click.echo("repairable: run conveyor store check without --no-repair to rebuild them")
        return 3
    click.echo(UNREPAIRABLE)
    return 1
