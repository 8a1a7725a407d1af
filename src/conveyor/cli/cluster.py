"""``conveyor run --ray ADDRESS``: the same pipeline file, its stages on a Ray cluster.

Every stage moves to the ``ray`` executor except those pinned to the driver
(``executor="sync"``, which runs in the caller); what a stage needs there comes from
its ``resources`` (or a ``--config`` file's ``cpus``, ``gpus``, ``memory``). The run
store, cache, report and metrics stay with the driver, as on one machine.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from conveyor import Pipeline

ADDRESS_VARIABLE = "CONVEYOR_RAY_ADDRESS"  # read by the ray executor too
PINNED = "sync"  # the executor that keeps a stage in the driver, on the caller's thread

RAY_OPTION = click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS",
    envvar=ADDRESS_VARIABLE,
    default=None,
    help="Run every stage on this Ray cluster (HOST:PORT, ray://HOST:PORT, 'auto' for "
    "the cluster this machine belongs to, 'local' to start one here), except stages "
    f"pinned to the driver with executor='sync'. Also ${ADDRESS_VARIABLE}.",
)


def on_ray(pipeline: Pipeline, address: str) -> Pipeline:
    """``pipeline`` with its stages on the Ray cluster at ``address``."""
    os.environ[ADDRESS_VARIABLE] = address
    moved = {
        name: {"executor": "ray"}
        for name, stage in pipeline.stages.items()
        if stage.executor not in ("ray", PINNED)
    }
    return pipeline.with_config({"stages": moved}) if moved else pipeline
