"""What the driver knows of each of a stage's Ray actors."""

from __future__ import annotations

from collections import deque
from time import monotonic_ns
from typing import Any

from conveyor.executors.base import Task
from conveyor.executors.ray.remaking import Rerun


class Actor:
    """One actor and what the driver knows of it."""

    def __init__(self, index: int, handle: Any, ready_ref: Any) -> None:
        self.index = index
        self.handle = handle
        self.ready_ref = ready_ref
        self.ready = False
        self.serving = True  # takes new tasks (alive() counts it)
        self.dead = False
        self.pid: int | None = None
        self.node = ""
        self.held: deque[tuple[Task | Rerun, Any]] = deque()  # sent, unanswered, in order
        self.probing = False  # a current() call is out
        self.born = monotonic_ns()
        self.timed_out = -1  # the unit that ran past the stage's timeout (-1: none)
        self.gpus_asked = 0  # when its GPU series were asked for (0: no question out)
        self.gpus_off = False  # it samples no GPU: never asked again
        self.clock_shift: int | None = None  # its monotonic clock onto the driver's
        self.clock_rtt = 1 << 62  # the round trip that estimate came from
