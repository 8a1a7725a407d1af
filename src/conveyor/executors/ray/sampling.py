"""The GPU series of a Ray stage's actors, collected by the driver for the recording.

An actor of a stage with ``gpus`` samples the devices Ray gave it, on its node
(:func:`.actor.own_gpus`: a daemon thread of the actor, :class:`GpuSampler`'s). The
stage's collector thread asks each actor for its series every ``POLL_SECONDS``
(``gpu_series()``, in the actor's probe concurrency group: answered mid-task) and
once more when the stage shuts down, and puts them, moved onto the driver's clock,
in the run's :class:`RemoteGpus`, which the recorder reads: one series per node and
device, however many actors shared it. An actor that dies keeps the series of its
last answer; the others lose nothing. A stage without ``gpus`` asks nothing.

Clocks: each answer carries the actor's monotonic time; the offset to the driver's
is that of the answer with the shortest round trip so far (an actor on the driver's
machine shares its clock, give or take that half round trip).
"""

from __future__ import annotations

import contextlib
import threading
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.observe.gpu import GpuSeries, RemoteGpus, close_remote, open_remote

if TYPE_CHECKING:
    from conveyor.core.stage import Stage
    from conveyor.executors.base import RunContext
    from conveyor.executors.ray.roster import Actor

POLL_SECONDS = 1.0  # how often each actor is asked for its series
FINAL_SECONDS = 2.0  # how long shutdown waits for the actors' last series
GPUS: Any = object()  # in the pool's refs: the answer of an actor's gpu_series()


class GpuPolls:
    """The pool's collection of its actors' GPU series (a mixin of ``RayExecutor``)."""

    stage: Stage
    context: RunContext
    _lock: threading.Lock
    _actors: list[Actor]
    _refs: dict[Any, Any]
    _ray: Any
    _remote: RemoteGpus | None = None
    _polled_ns = 0

    def _open_gpus(self) -> None:
        """A stage with ``gpus``: its actors' series go to the run's :class:`RemoteGpus`."""
        if not self.stage.needs.gpus:
            return
        run_id = self.context.run_id
        self._remote = self.context.shared(
            "ray-gpus", lambda: open_remote(run_id), lambda _: close_remote(run_id)
        )

    def _poll_gpus(self) -> None:
        """Ask each ready actor for its series, every ``POLL_SECONDS`` (collector thread)."""
        now = monotonic_ns()
        if self._remote is None or now - self._polled_ns < POLL_SECONDS * 1e9:
            return
        self._polled_ns = now
        with self._lock:
            for a in self._actors:
                if a.ready and not a.dead and not a.gpus_off and not a.gpus_asked:
                    a.gpus_asked = now
                    self._refs[a.handle.gpu_series.remote()] = (a, GPUS)

    def _gpus_answered(self, a: Actor, value: tuple[int, list[GpuSeries] | None]) -> None:
        received = monotonic_ns()
        asked, a.gpus_asked = a.gpus_asked, 0
        actor_ns, series = value
        if asked and received - asked < a.clock_rtt:
            a.clock_rtt = received - asked
            a.clock_shift = (asked + received) // 2 - actor_ns
        if series is None:  # it samples nothing (no device, no nvidia-ml-py there)
            a.gpus_off = True
            return
        shift = received - actor_ns if a.clock_shift is None else a.clock_shift
        if self._remote is not None:
            self._remote.put((self.stage.name, a.index), [g.shifted(shift) for g in series])

    def _last_gpus(self, actors: list[Actor]) -> None:
        """The run ends: each live actor's final series (it stops sampling), waited for
        up to ``FINAL_SECONDS`` in all (before the actors are stopped)."""
        if self._remote is None:
            return
        asked: dict[Any, Actor] = {}
        now = monotonic_ns()
        for a in actors:
            if a.ready and not a.dead and not a.gpus_off:
                with contextlib.suppress(Exception):
                    asked[a.handle.gpu_series.remote(True)] = a
                    a.gpus_asked = now
        refs = list(asked)
        deadline = now + int(FINAL_SECONDS * 1e9)
        while refs and (timeout := (deadline - monotonic_ns()) / 1e9) > 0:
            try:
                done, refs = self._ray.wait(refs, num_returns=1, timeout=timeout)
            except Exception:
                return
            for ref in done:
                try:
                    value = self._ray.get(ref)
                except Exception:  # it died: its last answer stands
                    continue
                self._gpus_answered(asked[ref], value)
