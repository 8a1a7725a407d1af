"""Which GPUs a process worker gets: ``CUDA_VISIBLE_DEVICES`` per worker.

The devices are those the driver's process sees (:func:`visible_gpus`); a stage's
workers are packed onto them by :func:`gpu_devices`, a pure function of the worker's
index, so a replacement worker gets its predecessor's devices back.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence

from conveyor.errors import PipelineError

__all__ = ["check_gpus", "gpu_devices", "visible_gpus"]


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU devices this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else
    one per ``/dev/nvidia<N>``, else none."""
    env = os.environ if environ is None else environ
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
    try:
        names = os.listdir("/dev")
    except OSError:
        return []
    found = sorted(int(n[6:]) for n in names if re.fullmatch(r"nvidia\d+", n))
    return [str(n) for n in found]


def gpu_devices(gpus: float, worker: int, devices: Sequence[str]) -> list[str]:
    """The devices worker ``worker`` of a stage needing ``gpus`` each gets: a share
    below 1 packs ``floor(1 / gpus)`` workers onto a device, a whole number gives each
    worker that many devices; workers past what the devices hold wrap around.

    >>> gpu_devices(0.5, 3, ["0", "1"])
    ['1']
    >>> gpu_devices(2, 1, ["0", "1", "2", "3"])
    ['2', '3']
    """
    if not gpus or not devices:
        return []
    if gpus < 1:
        per_device = int(1 / gpus + 1e-9)
        return [devices[(worker // per_device) % len(devices)]]
    n = int(gpus)
    groups = max(1, len(devices) // n)
    start = (worker % groups) * n
    return list(devices[start : start + n])


def check_gpus(stage: str, executor: str, gpus: float, workers: int) -> None:
    """A process stage's GPUs must exist here (PipelineError naming the fix)."""
    if not gpus:
        return
    devices = visible_gpus()
    if not devices:
        raise PipelineError(
            f"stage {stage!r} needs gpus={gpus:g} per worker but this machine shows no GPU "
            "(no CUDA_VISIBLE_DEVICES, no /dev/nvidia*); run it on a cluster with "
            "executor='ray', or drop gpus",
            stage=stage,
        )
    need = math.ceil(gpus * workers) if gpus < 1 else int(gpus) * workers
    if gpus >= 1 and int(gpus) > len(devices):
        raise PipelineError(
            f"stage {stage!r} needs gpus={gpus:g} per worker but {executor!r} workers here "
            f"see {len(devices)} device(s) ({','.join(devices)}); lower gpus or use a "
            "cluster (executor='ray')",
            stage=stage,
        )
    if need > len(devices):
        raise PipelineError(
            f"stage {stage!r}: {workers} workers × gpus={gpus:g} need {need} GPU(s), but "
            f"{len(devices)} are visible ({','.join(devices)}); lower workers or gpus",
            stage=stage,
        )
