"""What Ray is asked for a stage's actors, and what the driver says when none fits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

__all__ = ["ray_options", "unplaced"]


def ray_options(stage: Stage) -> dict[str, Any]:
    """The actor options for ``stage``'s resources: CPUs (0 unless given, so that a
    stage's workers never wait for cores Ray has promised elsewhere), GPUs, memory and
    named resources."""
    need = stage.needs
    options: dict[str, Any] = {"num_cpus": need.cpus or 0, "max_concurrency": 1}
    if need.gpus:
        options["num_gpus"] = need.gpus
    if need.memory is not None:
        options["memory"] = need.memory
    if need.custom:
        options["resources"] = dict(need.custom)
    return options


def unplaced(stage: Stage, waiting: int, seconds: float) -> str:
    """The warning for ``waiting`` actors of ``stage`` no node has placed in ``seconds``."""
    need = stage.needs.as_dict() or {"cpus": 0}
    return (
        f"stage {stage.name!r}: {waiting} Ray worker(s) have waited {seconds} s for a "
        f"node with {need} free; the run waits until one joins (an autoscaler's, or "
        "`ray start --address=...`), or lower the stage's resources"
    )
