"""Model classes and handlers the registry and serving tests name by import path
(so spawned workers and ``builder="modelfns:..."`` can find them)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any


class Tiny:
    """A torch module: y = x·W + b with 4 inputs and 2 outputs (torch imported lazily)."""

    def __new__(cls) -> Any:
        import torch

        torch.manual_seed(0)
        return torch.nn.Linear(4, 2)


class Doubler:
    """A serving handler: each request's ``x`` doubled; counts its batches."""

    batches: list[int] = []  # noqa: RUF012 - shared on purpose, read by the tests (threads)

    def __init__(self, model: Any = None) -> None:
        self.model = model
        self.version = (
            getattr(model, "get", lambda k, d=None: d)("version", 0)
            if isinstance(model, dict)
            else 0
        )

    def __call__(self, batch: list[Any]) -> list[Any]:
        Doubler.batches.append(len(batch))
        out = []
        for request in batch:
            x = request["x"] if isinstance(request, dict) else getattr(request, "x", request)
            if x == "boom":
                raise ValueError("the model cannot take 'boom'")
            out.append({"y": x * 2 if not isinstance(x, str) else x + x, "version": self.version})
        return out


class Gated(Doubler):
    """A Doubler whose calls wait until ``GATE`` is set (the tests hold batches in flight)."""

    GATE = threading.Event()

    def __call__(self, batch: list[Any]) -> list[Any]:
        Gated.GATE.wait(30)
        return super().__call__(batch)


class FailsToLoad:
    def __init__(self, model: Any = None) -> None:
        raise RuntimeError("weights do not fit the architecture (for the test)")

    def __call__(self, batch: list[Any]) -> list[Any]:
        return batch


class Evil:
    """A pickle that runs code when loaded: it would create a file named by $EVIL_MARK."""

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(os.environ.get("EVIL_MARK", "evil-ran")),))


class Reverse:
    """A binary handler: each body's bytes reversed (answered as binary)."""

    def __init__(self, model: Any = None) -> None:
        pass

    def __call__(self, batch: list[bytes]) -> list[bytes]:
        return [body[::-1] for body in batch]


class Flaky:
    """A serving handler over a dict model: answers ``{"y": 2x, "version": v}``; raises
    on requests whose ``x`` is a multiple of the model's ``fail_every`` (if any), and
    sleeps ``delay`` seconds per batch (a slow version)."""

    def __init__(self, model: Any = None) -> None:
        self.model = model or {}

    def __call__(self, batch: list[Any]) -> list[Any]:
        import time

        every = self.model.get("fail_every")
        if self.model.get("delay"):
            time.sleep(self.model["delay"])
        out = []
        for request in batch:
            x = int(request["x"])
            if every and x % every == 0:
                raise ValueError(f"version {self.model.get('version')} cannot take x={x}")
            out.append({"y": 2 * x, "version": self.model.get("version"), "label": x % 3})
        return out
