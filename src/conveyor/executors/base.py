"""The executor protocol: where a stage's workers run.

An executor owns one stage's workers. The scheduler calls ``submit`` only while the
stage has a free slot, so an executor never queues more than ``stage.slots`` tasks;
each finished task is handed back through ``post``, from whatever thread the worker
runs on, as an :class:`~conveyor.executors.task.Outcome`. That is the whole
contract: everything else (queues, backpressure, ordering, errors) lives once in
the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable

from conveyor.core.stage import Stage
from conveyor.executors.task import CacheSpec, Outcome, Task

Post = Callable[[Outcome], None]


class Executor:
    """Base class: run ``stage``'s tasks and post their outcomes."""

    def __init__(self, stage: Stage, post: Post) -> None:
        self.stage = stage
        self.post = post
        self.cache: CacheSpec | None = None  # set by the scheduler before start()

    def start(self) -> None:
        """Start the workers (threads, processes); called once before any submit."""

    def submit(self, task: Task) -> None:
        """Run ``task`` on a free worker; its outcome arrives through ``post``."""
        raise NotImplementedError  # every executor overrides this

    def resize(self, workers: int) -> None:
        """Grow or shrink the pool to ``workers`` while the run goes on. Stopping
        workers finish their task first; the scheduler never sends more tasks than
        the new size."""

    def shutdown(self, *, cancel: bool) -> None:
        """Stop every worker and wait for them. With ``cancel``, abandon running work:
        threads stop before their next item, processes are terminated."""

    def pids(self) -> list[int]:
        """Process ids of live worker processes (none for in-process executors)."""
        return []
