"""``conveyor models``: the model registry from the command line.

::

    $ conveyor models ls                          # every model: latest version, aliases
    $ conveyor models show digits@champion        # one version: format, metrics, lineage
    $ conveyor models alias digits champion 4 --reason "beat v3 on holdout"
    $ conveyor models history digits             # every alias move: who, when, from, to, why

Models are registered from Python (``conveyor.models.register``). The registry lives
in the run store (``--store PATH``, default as ``conveyor runs``). A reference that
names no model, version or alias exits 2 with what there is; other errors exit 1.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import click

from conveyor.cli.errors import OneLineError
from conveyor.models import ModelNotFoundError, ModelRegistry, ModelVersion

store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The run store that holds the registry (default: as conveyor runs).",
)


class ModelNotFound(OneLineError):
    exit_code = 2


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _open(store_path: Path | None) -> ModelRegistry:
    return ModelRegistry(store_path)


@click.group("models")
def models_group() -> None:
    """The model registry: versions, aliases and their history."""


@models_group.command("ls")
@store_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def ls_command(store_path: Path | None, as_json: bool) -> None:
    """Every registered model: its latest version, format and aliases."""
    with _open(store_path) as registry:
        latest = registry.models()
        aliases = {v.name: registry.aliases(v.name) for v in latest}
    if as_json:
        for v in latest:
            click.echo(
                json.dumps({"name": v.name, "latest": v.version, "aliases": aliases[v.name]})
            )
        return
    if not latest:
        click.echo("no model is registered (conveyor.models.register in Python)")
        return
    click.echo(f"{'model':<24} {'latest':>6}  {'format':<12} {'registered':<19}  aliases")
    for v in latest:
        named = ", ".join(f"{a}→{n}" for a, n in aliases[v.name].items()) or "-"
        click.echo(f"{v.name:<24} {v.version:>6}  {v.format:<12} {_when(v.created_at)}  {named}")


@models_group.command("show")
@click.argument("ref")
@store_option
def show_command(ref: str, store_path: Path | None) -> None:
    """One version: REF is name, name:VERSION or name@ALIAS."""
    with _open(store_path) as registry:
        try:
            v = registry.resolve(ref)
        except ModelNotFoundError as exc:
            raise ModelNotFound(str(exc)) from exc
    click.echo(_describe(v))


def _describe(v: ModelVersion) -> str:
    lines = [
        f"{v.name} version {v.version}" + (f"  ({', '.join(v.aliases)})" if v.aliases else ""),
        f"  format       {v.format}, {v.size:,} bytes, sha256 {v.artifact}",
        f"  registered   {_when(v.created_at)} by {v.created_by}",
    ]
    if v.metrics:
        lines.append("  metrics      " + ", ".join(f"{k}={m:g}" for k, m in v.metrics.items()))
    for label, value in (
        ("run", v.run_id),
        ("data", v.data_fingerprint),
        ("code", v.code_fingerprint),
        ("builder", v.builder),
        ("input", None if v.signature is None else json.dumps(v.signature)),
        ("description", v.description or None),
    ):
        if value is not None:
            lines.append(f"  {label:<12} {value}")
    return "\n".join(lines)


@models_group.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@click.option("--reason", default="", help="Why it moves; kept in the history.")
@store_option
def alias_command(
    name: str, alias: str, version: int, reason: str, store_path: Path | None
) -> None:
    """Point NAME@ALIAS at VERSION (a server of NAME@ALIAS swaps to it, draining the old)."""
    with _open(store_path) as registry:
        try:
            move = registry.alias(name, alias, version, reason=reason)
        except ModelNotFoundError as exc:
            raise ModelNotFound(str(exc)) from exc
    before = "new" if move.from_version is None else f"was {move.from_version}"
    click.echo(f"{name}@{alias} → version {version} ({before})")


@models_group.command("history")
@click.argument("name")
@click.option("--alias", default=None, help="Only this alias's moves.")
@store_option
def history_command(name: str, alias: str | None, store_path: Path | None) -> None:
    """Every move of NAME's aliases: when, who, from which version, to which, why."""
    with _open(store_path) as registry:
        moves = registry.history(name, alias)
    if not moves:
        click.echo(f"no alias of {name!r} has moved yet")
        return
    for m in moves:
        before = "-" if m.from_version is None else str(m.from_version)
        click.echo(
            f"{_when(m.moved_at)}  {m.alias:<12} {before:>3} → {m.to_version:<3} "
            f"{m.moved_by:<10} {m.reason}"
        )
