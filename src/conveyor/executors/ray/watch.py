"""What a Ray stage's collector thread watches besides replies: units past the
stage's timeout, and actors no node can place.

A stage ``timeout`` for plain functions: while an actor is busy the collector asks it
(``current()``, in a concurrency group of its own, so it answers mid-task) which unit
it runs and for how long; one past the timeout has its actor killed, and Ray then
reports it dead (the pool posts its task as timed out, blaming that unit). An actor
not placed after ``UNPLACED_SECONDS`` is reported once, as a warning.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.executors.ray.options import unplaced
from conveyor.executors.ray.roster import Actor

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

UNPLACED_SECONDS = 30  # an actor not placed by then: say why the stage waits
PROBE: Any = object()  # in the pool's refs: the answer of an actor's current()


class Watch:
    """The pool's timeouts and placement warnings (a mixin of ``RayExecutor``)."""

    stage: Stage
    _lock: threading.Lock
    _actors: list[Actor]
    _refs: dict[Any, Any]
    _ray: Any
    _warned: bool

    def _warn_if_unplaced(self) -> None:
        """Say once when an actor has waited ``UNPLACED_SECONDS`` for a node: its
        resources are nowhere free (the run waits for a node that has them)."""
        if self._warned:
            return
        now = monotonic_ns()
        with self._lock:
            waiting = [
                a
                for a in self._actors
                if not a.ready and not a.dead and now - a.born > UNPLACED_SECONDS * 1e9
            ]
        if waiting:
            self._warned = True
            # -W error must not end this thread: the warning is advice, not a failure
            with contextlib.suppress(Warning):
                self._warn_unplaced(len(waiting))

    def _warn_unplaced(self, waiting: int) -> None:
        warnings.warn(unplaced(self.stage, waiting, UNPLACED_SECONDS), RuntimeWarning, stacklevel=1)

    def _probe(self) -> None:
        """Ask each busy actor which unit it runs and for how long (answered through
        :meth:`_probed`): one question out per actor at a time."""
        with self._lock:
            for a in self._actors:
                if a.held and a.ready and not a.dead and not a.probing:
                    a.probing = True
                    self._refs[a.handle.current.remote()] = (a, PROBE)

    def _probed(self, a: Actor, value: tuple[int, int]) -> None:
        """Kill ``a`` if its unit has run past the timeout."""
        unit, ran_ns = value
        assert self.stage.timeout is not None
        with self._lock:
            a.probing = False
            late = unit >= 0 and ran_ns > self.stage.timeout * 1e9 and not a.dead
            if late:
                a.timed_out = unit
        if late:
            with contextlib.suppress(Exception):
                self._ray.kill(a.handle, no_restart=True)
