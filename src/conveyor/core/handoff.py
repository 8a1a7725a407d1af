"""Hand-off: each executor learns, before its workers start, where its results go.

An executor whose workers can leave results where they were made (Ray's object store)
hands the next stage handles instead of values when every consumer's workers can read
them; the scheduler only passes the facts (:meth:`Executor.hand_on`) and calls
:meth:`Executor.resolve` where a value leaves the executors (a dead-lettered item).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.core.flow import StageState


def hand_off(stages: Sequence[StageState]) -> None:
    """Tell each stage's executor its consumers' executors (none: the run's output) and
    the tightest bytes bound of their queues (None when one is unbounded in bytes)."""
    for s in stages:
        assert s.executor is not None
        consumers = [t.executor for t in s.successors if t.executor is not None]
        bounds = [t.queue.bytes_bound for t in s.successors]
        known = [b for b in bounds if b is not None]
        bound = min(known) if known and len(known) == len(bounds) else None
        s.executor.hand_on(consumers, bytes_bound=bound)
