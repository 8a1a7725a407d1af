"""A scripted ``pynvml`` (nvidia-ml-py as conveyor calls it), for machines without a GPU.

The tests use :class:`FakeNvml` directly (put in ``sys.modules``). Ray's workers
import this file as ``pynvml`` itself when ``tests/fakes`` is first on their
``PYTHONPATH``: its module-level functions are then those of one :class:`FakeNvml`
scripted by ``CONVEYOR_FAKE_NVML`` (JSON: device index -> utilisation per read,
the last repeated), made when first used; ``CONVEYOR_FAKE_NVML_LOG`` names a file
that gets a line per ``nvmlInit`` (``init <pid>``).
"""

from __future__ import annotations

import json
import os
import threading
import types
from typing import Any

GiB = 1 << 30


class FakeNvml(types.ModuleType):
    """``pynvml`` with scripted utilisation per device index; device i uses i+1 GiB."""

    class NVMLError(Exception):
        pass

    def __init__(self, script: dict[int, list[int]], *, init_error: str | None = None) -> None:
        super().__init__("pynvml")
        self.script = {d: list(v) for d, v in script.items()}
        self.init_error = init_error
        self.inits = self.shutdowns = 0
        self.reads: dict[int, int] = {d: 0 for d in script}
        self.lock = threading.Lock()

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.NVMLError(self.init_error)
        self.inits += 1
        log = os.environ.get("CONVEYOR_FAKE_NVML_LOG")
        if log:
            with open(log, "a") as fh:
                fh.write(f"init {os.getpid()}\n")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if i not in self.script:
            raise self.NVMLError(f"Invalid Argument: no device {i}")
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"Fake H200"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> types.SimpleNamespace:
        with self.lock:
            n = self.reads[h]
            self.reads[h] += 1
        values = self.script[h]
        return types.SimpleNamespace(gpu=values[min(n, len(values) - 1)], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=141 * GiB, used=(h + 1) * GiB, free=0)


_scripted: FakeNvml | None = None


def __getattr__(name: str) -> Any:
    """Imported as ``pynvml``: the functions of the instance the environment scripts."""
    global _scripted
    if name.startswith("__"):
        raise AttributeError(name)
    if _scripted is None:
        script = json.loads(os.environ.get("CONVEYOR_FAKE_NVML", "{}"))
        _scripted = FakeNvml({int(d): list(v) for d, v in script.items()})
    return getattr(_scripted, name)
