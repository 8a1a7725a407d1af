"""The ``conveyor`` command: run a pipeline from a file or module and explain the run.

::

    $ conveyor run examples/science.py:pipeline
    $ conveyor run mypackage.jobs:build_pipeline --source events.txt --json stats.json
    $ conveyor run examples/science.py:pipeline --record run.cvrec --gantt run.svg --trace run.json
    $ conveyor analyze run.cvrec --budget 8
    $ conveyor runs; conveyor show 7f3a; conveyor resume 7f3a
    $ conveyor store check
    $ conveyor dashboard                   # the run store in a browser, 127.0.0.1:8765
    $ conveyor deploy release.py:release   # build, test, gate, shadow, canary, promote
    $ conveyor rollback digits; conveyor deployments digits
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

Exit codes: 0 success; 1 the run failed, or any conveyor error (one line,
``error: ...``, never a traceback); 2 a usage error (bad TARGET, missing file or
attribute, unknown run); 3 ``show`` of a run whose ledger does not balance (and
``store check --no-repair`` of a store whose only damage is to indexes); 130 and
143 a run cancelled by SIGINT (Ctrl-C) or SIGTERM.

The modules: this one (the group, error handling, registration), ``run`` (run,
resume), ``signals`` (SIGINT/SIGTERM), ``analyze``, ``outputs`` (files written
besides the report), ``target`` (loading TARGET), ``store`` (runs, show,
deadletters), ``storecheck`` (store check), ``cache``, ``dashboard`` (the dashboard extra's
server), ``models`` (the model registry), ``serve`` (HTTP serving), ``deploy`` (releases,
rollback, the lifecycle's history), ``errors`` (how errors are shown).
"""

from __future__ import annotations

from typing import Any

import click

import conveyor
from conveyor.cli.analyze import analyze_command
from conveyor.cli.cache import cache
from conveyor.cli.dashboard import dashboard_command
from conveyor.cli.deploy import deploy_command, deployments_command, rollback_command
from conveyor.cli.errors import ConveyorProblem
from conveyor.cli.models import models_group
from conveyor.cli.run import resume_command, run_command
from conveyor.cli.serve import serve_command
from conveyor.cli.store import deadletters, runs, show
from conveyor.cli.storecheck import store_group
from conveyor.errors import ConveyorError

__all__ = ["cli", "main"]


class ConveyorGroup(click.Group):
    """The ``conveyor`` group: the one place where a ConveyorError raised by any
    command becomes a one-line ``error: ...`` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            raise ConveyorProblem(exc) from exc


@click.group(cls=ConveyorGroup)
@click.version_option(conveyor.__version__, prog_name="conveyor")
def cli() -> None:
    """conveyor: streaming compute pipelines that explain themselves."""


_COMMANDS = (run_command, resume_command, analyze_command, runs, show, deadletters, store_group)
_LIFECYCLE = (deploy_command, rollback_command, deployments_command)
for _command in (*_COMMANDS, cache, dashboard_command, models_group, serve_command, *_LIFECYCLE):
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


def main() -> None:
    """Entry point of the ``conveyor`` command."""
    cli(prog_name="conveyor")


if __name__ == "__main__":
    main()
