"""``conveyor deploy``, ``conveyor rollback``, ``conveyor deployments``: releases from
the command line.

::

    $ conveyor deploy release.py:release          # build, test, validate, shadow, canary...
    $ conveyor rollback digits --reason "bad answers on BR traffic"
    $ conveyor deployments digits                 # every decision, with its evidence
    $ conveyor deployments digits --lineage 42    # what caused event 42, and what it caused

``deploy`` runs the :class:`~conveyor.lifecycle.Release` that TARGET names (or a
function of no arguments returning one), prints each decision, and exits 0 when the
candidate was promoted, 1 when a stage stopped the release (the line says which and
why). The lifecycle lives in the run store (``--store``, default as ``conveyor runs``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import click

from conveyor.cli.target import load_attr
from conveyor.lifecycle import LifecycleEvent, LifecycleLog, Release, rollback

store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The run store (default: as conveyor runs).",
)


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _mark(event: LifecycleEvent) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[event.passed]


def _line(event: LifecycleEvent) -> str:
    version = f"v{event.version}" if event.version is not None else "-"
    first = event.summary.splitlines()[0] if event.summary else ""
    return f"{event.id:>5}  {_when(event.at)}  {event.kind:<12} {version:>5}  {_mark(event):<4}  {first}"


@click.command("deploy")
@click.argument("target")
@store_option
def deploy_command(target: str, store_path: Path | None) -> None:
    """Run the release TARGET (path.py:attr or module:attr naming a Release)."""
    obj = load_attr(target, Release)
    if not isinstance(obj, Release) and callable(obj):
        obj = obj()
    if not isinstance(obj, Release):
        raise click.UsageError(
            f"{target!r} is a {type(obj).__name__}, not a Release; name a "
            "conveyor.lifecycle.Release or a function of no arguments that returns one"
        )
    release = obj if store_path is None else dataclasses.replace(obj, store=store_path)
    candidate = release.run()
    with LifecycleLog(release.store) as log:
        for id_ in candidate.events:
            click.echo(_line(log.event(id_)))
    if candidate.promoted:
        click.echo(f"{candidate.ref} serves {candidate.name}@{candidate.alias}")
        return
    click.echo(f"error: the release of {candidate.ref} stopped at {candidate.stopped}", err=True)
    sys.exit(1)


@click.command("rollback")
@click.argument("name")
@click.option("--alias", default="champion", show_default=True)
@click.option("--to", "to", type=int, default=None, help="The version (default: the one before).")
@click.option("--reason", default="rolled back by hand", show_default=True)
@store_option
def rollback_command(
    name: str, alias: str, to: int | None, reason: str, store_path: Path | None
) -> None:
    """Point NAME@ALIAS back at its previous version, stopping any rollout on it."""
    event = rollback(name, alias=alias, to=to, reason=reason, store=store_path)
    click.echo(event.summary)


@click.command("deployments")
@click.argument("name", required=False)
@click.option("--lineage", type=int, default=None, help="An event: its causes and effects.")
@click.option("--limit", type=int, default=50, show_default=True, help="The latest N events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@store_option
def deployments_command(
    name: str | None, lineage: int | None, limit: int, as_json: bool, store_path: Path | None
) -> None:
    """The lifecycle's history: gates, rollouts, promotions, rollbacks, drift."""
    with LifecycleLog(store_path) as log:
        if lineage is not None:
            events = log.lineage(lineage) + log.descendants(lineage)
        else:
            events = log.events(name, limit=limit)
        rollouts = [] if lineage is not None or as_json else log.rollouts(name, limit=10)
    if as_json:
        for e in events:
            click.echo(json.dumps(dataclasses.asdict(e), default=str))
        return
    if not events:
        click.echo("no lifecycle event is recorded" + (f" for {name}" if name else ""))
        return
    click.echo(f"{'id':>5}  {'when':<19}  {'kind':<12} {'ver':>5}  {'':<4}  summary")
    for e in events:
        click.echo(_line(e))
    if rollouts:
        click.echo("")
        click.echo("rollouts (newest first):")
        for r in rollouts:
            click.echo(_rollout_line(r))


def _rollout_line(r: Any) -> str:
    versions = f"v{r.champion} → v{r.candidate}" if r.champion is not None else f"v{r.candidate}"
    reason = f": {r.reason}" if r.reason else ""
    return (
        f"  {r.id:>4}  {_when(r.started_at)}  {r.name} {r.mode:<7} {versions:<12} {r.state}{reason}"
    )
