"""Wrappers around a ``PipelineStage``'s compute: timing, and a random stream per micro-batch.

Timing: each stage's ``forward_one_chunk``, ``backward_one_chunk`` and
``backward_weight_one_chunk`` record (kind, stage, micro-batch, start, end)
relative to the start of the step, so waiting for a neighbour's activation is
idle time and only compute is busy. On a GPU the marks are CUDA events, resolved
with one synchronisation after the step: the actions are never serialised.

Random streams: every forward of (step, replica, stage, micro-batch) runs with the
random generator seeded from those four numbers and the run's seed, and the
caller's random state is restored afterwards. Dropout masks therefore differ
between stages, micro-batches and replicas, and the same seed gives the same
masks in every run, whatever the schedule's order.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.pipelining import PipelineStage

__all__ = ["Recorder", "seed_forwards", "stream_seed"]

Event = tuple[str, int, int, float, float]


class Recorder:
    """Collects one step's actions as ``(kind, stage, micro-batch, start, end)`` seconds."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.reset()

    def reset(self) -> None:
        self.origin = time.perf_counter()
        self.marks: list[tuple[str, int, int, Any, Any]] = []
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter() - self.origin

    def now(self) -> float:
        """Seconds since :meth:`reset`, after the device finished what was queued."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - self.origin

    def events(self) -> list[Event]:
        """The step's actions in seconds (on a GPU: one synchronisation, here)."""
        if not self.cuda:
            return list(self.marks)
        torch.cuda.synchronize()
        return [
            (k, s, mb, self.start.elapsed_time(t0) / 1e3, self.start.elapsed_time(t1) / 1e3)
            for k, s, mb, t0, t1 in self.marks
        ]

    def wrap(self, stage: PipelineStage) -> None:
        index = stage.stage_index

        def timed(kind: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
            def run(chunk: int, *args: Any, **kwargs: Any) -> Any:
                t0 = self.mark()
                out = fn(chunk, *args, **kwargs)
                k = kind(*args, **kwargs) if callable(kind) else kind
                self.marks.append((k, index, chunk, t0, self.mark()))
                return out

            return run

        def backward_kind(*args: Any, full_backward: bool = True, **kwargs: Any) -> str:
            return "B" if full_backward else "I"

        stage.forward_one_chunk = timed("F", stage.forward_one_chunk)  # type: ignore[method-assign]
        stage.backward_one_chunk = timed(backward_kind, stage.backward_one_chunk)  # type: ignore[method-assign]
        stage.backward_weight_one_chunk = timed("W", stage.backward_weight_one_chunk)  # type: ignore[method-assign]


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers, the same on every machine and Python version."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_forwards(stage: PipelineStage, seed_of: Callable[[int, int], int]) -> None:
    """Run each forward of ``stage`` with the generator seeded ``seed_of(stage, chunk)``."""
    forward = stage.forward_one_chunk
    devices = [stage.device] if stage.device.type == "cuda" else []

    def run(chunk: int, *args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed_of(stage.stage_index, chunk))
            return forward(chunk, *args, **kwargs)

    stage.forward_one_chunk = run  # type: ignore[method-assign,assignment]
