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
    """Tell each stage's executor its consumers' executors and the tightest bytes bound
    of their queues (None when one is unbounded in bytes). No consumers means values:
    results that go to the run's output, and those of or to a fused chain (the driver
    settles a chain's results stage by stage, and its filters pass their items on)."""
    for s in stages:
        if s.executor is None:
            continue  # fused: it runs in its head's workers
        fused = s.then is not None or any(t.then is not None for t in s.successors)
        consumers = [] if fused else [t.executor for t in s.successors if t.executor]
        bounds = [t.queue.bytes_bound for t in s.successors]
        known = [b for b in bounds if b is not None]
        bound = min(known) if known and len(known) == len(bounds) else None
        s.executor.hand_on(consumers, bytes_bound=bound)
