"""What one worker of a stage needs: CPUs, GPUs, memory, and named resources.

``Stage(resources={"cpus": 1, "gpus": 0.5, "memory": "2GB"})``, or the same as
keyword arguments (``Stage(fn, gpus=1)``), is checked when the stage is made and
becomes a :class:`Resources`. Every other key names a custom resource, which a
cluster's nodes advertise (``{"node2": 1}`` pins a stage to the nodes that have
``node2``). Executors read it:

- ``processes`` gives each worker its GPUs through ``CUDA_VISIBLE_DEVICES``
  (:func:`conveyor.executors.gpus.gpu_devices`): the devices this process sees, fractional shares packed
  several workers to a device, whole ones a device or more each;
- ``ray`` asks Ray for an actor with these resources;
- ``threads`` and ``sync`` run in the driver's process, which sees every device.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from conveyor.errors import PipelineError

__all__ = ["Resources", "parse_memory", "resources_of"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


@dataclasses.dataclass(frozen=True)
class Resources:
    """One worker's needs. ``memory`` in bytes; ``custom``: named resources."""

    cpus: float | None = None
    gpus: float = 0.0
    memory: int | None = None
    custom: tuple[tuple[str, float], ...] = ()

    def __bool__(self) -> bool:
        return (
            self.cpus is not None or bool(self.gpus) or self.memory is not None or bool(self.custom)
        )

    def as_dict(self) -> dict[str, Any]:
        """The resources as given, for display and the run store."""
        out: dict[str, Any] = {}
        if self.cpus is not None:
            out["cpus"] = self.cpus
        if self.gpus:
            out["gpus"] = self.gpus
        if self.memory is not None:
            out["memory"] = self.memory
        out.update(self.custom)
        return out


def parse_memory(value: Any) -> int:
    """Bytes from ``2_000_000_000``, ``"2GB"``, ``"512 MiB"`` (ValueError otherwise)."""
    if isinstance(value, bool):
        raise ValueError(f"memory={value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory={value!r} is negative")
        return value
    if isinstance(value, str):
        m = _MEMORY.match(value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"memory={value!r}")


def resources_of(
    stage: str,
    resources: Mapping[str, Any] | Resources | None,
    *,
    cpus: Any = None,
    gpus: Any = None,
    memory: Any = None,
) -> Resources:
    """The checked :class:`Resources` of ``stage``, from ``resources`` and the keyword
    arguments (PipelineError naming the stage, the value and the fix)."""

    def fail(rule: str) -> PipelineError:
        return PipelineError(f"stage {stage!r}: {rule}", stage=stage)

    if isinstance(resources, Resources):
        given: dict[str, Any] = resources.as_dict()
    elif resources is None:
        given = {}
    elif isinstance(resources, Mapping):
        given = dict(resources)
    else:
        raise fail(
            f"resources={resources!r}; give a dict such as "
            '{"cpus": 1, "gpus": 0.5, "memory": "2GB"}'
        )
    for key, value in (("cpus", cpus), ("gpus", gpus), ("memory", memory)):
        if value is None:
            continue
        if key in given and given[key] != value:
            raise fail(
                f"{key} is given twice ({key}={value!r} and resources[{key!r}]={given[key]!r})"
            )
        given[key] = value
    for key in given:
        if not isinstance(key, str) or not key:
            raise fail(f"resource name {key!r}; give a non-empty string")

    def number(key: str) -> float | None:
        value = given.pop(key, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise fail(f"{key}={value!r}; give a number of at least 0, e.g. {key}=1")
        if math.isinf(value):
            raise fail(f"{key}={value!r}; give a finite number")
        return float(value)

    n_cpus = number("cpus")
    n_gpus = number("gpus") or 0.0
    if n_gpus > 1 and n_gpus != int(n_gpus):
        raise fail(
            f"gpus={n_gpus:g}: a share of one GPU is below 1 (gpus=0.5), several GPUs are "
            "a whole number (gpus=2)"
        )
    mem: int | None = None
    if "memory" in given:
        raw = given.pop("memory")
        try:
            mem = parse_memory(raw)
        except ValueError:
            raise fail(
                f"memory={raw!r}; give bytes (an int) or a size such as '2GB' or '512MiB'"
            ) from None
    custom = tuple(sorted((k, v) for k in list(given) if (v := number(k)) is not None))
    return Resources(n_cpus, n_gpus, mem, custom)
