"""The pool's part in making lost results again (:mod:`.lineage` has the why and how).

As a producer: :class:`Rerun` is a task run again for a lineage, queued ahead of the
stage's own tasks and answered to the thread that waits for it, never to the
scheduler. As a consumer: :class:`Recovery` holds back an outcome whose unit found an
input lost, makes the lost objects again in a thread of its own, and posts the
outcome then (that unit not run, so it runs again on the new objects; or failed with
a :class:`~.handles.LostResultError` naming the stages, when they could not be made).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from conveyor.executors.base import Failure, Outcome, Post
from conveyor.executors.ray.handles import LostResultError, Outputs
from conveyor.executors.ray.lineage import WAIT_SECONDS, CannotRemake, Remade, lost_error, remake

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

__all__ = ["Recovery", "Rerun", "Reruns", "Sent"]


class Sent:
    """A task in flight, as sent: what making its results again (``data``) and
    knowing its lost inputs (``objects``, ``refs``: the ones sent) need."""

    __slots__ = ("data", "kept", "objects", "refs")

    def __init__(self, data: bytes, objects: list[Outputs], refs: list[Any], kept: Any) -> None:
        self.data, self.objects, self.refs, self.kept = data, objects, refs, kept


class Rerun:
    """A task run again to make lost results: answered through :meth:`finish` or
    :meth:`fail`, from the collector thread, to the thread in :meth:`wait`."""

    def __init__(self, data: bytes, refs: list[Any]) -> None:
        self.data, self.refs = data, refs
        self.outputs: Any = None  # the ref of the outputs it keeps
        self.out: Outcome | None = None
        self.error: str | None = None
        self.done = threading.Event()

    def finish(self, out: Outcome) -> None:
        self.out = out
        self.done.set()

    def fail(self, why: str) -> None:
        self.error = why
        self.done.set()

    def wait(self, stop: threading.Event) -> tuple[Any, Outcome]:
        while not self.done.wait(WAIT_SECONDS):
            if stop.is_set():
                raise CannotRemake("the run is ending")
        if self.out is None:
            raise CannotRemake(self.error or "it was not run")
        return self.outputs, self.out


class Reruns:
    """The pool as a lineage's :class:`~.lineage.Maker` (a mixin of ``RayExecutor``):
    a task run again goes first to the least loaded live actor."""

    stage: Stage
    _lock: threading.Lock
    _wake: threading.Event
    _closing: bool
    _broken: BaseException | None
    _reruns: deque[Rerun]

    def _dispatch(self) -> None: ...

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def remakes(self) -> int:
        """How many times one lost result may be made again: the retry's attempts."""
        return max(1, getattr(self.stage.retry, "attempts", 1))

    def rerun(self, data: bytes, refs: list[Any], stop: threading.Event) -> tuple[Any, Outcome]:
        box = Rerun(data, refs)
        with self._lock:
            why = "the run is ending" if self._closing else self._broken
            if why is None:
                self._reruns.append(box)
                self._dispatch()
        if why is not None:
            raise CannotRemake(f"stage {self.name!r} cannot run it again ({why})")
        self._wake.set()
        return box.wait(stop)


class Recovery:
    """A consumer stage's outcomes held back while their lost inputs are made again."""

    def __init__(self, stage: str, post: Post) -> None:
        self.stage, self.post = stage, post
        self.stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def held_back(self, out: Outcome, sent: Sent | None) -> bool:
        """Whether ``out`` waits for lost inputs to be made again (a thread posts it)."""
        if sent is None or not sent.objects or not out.failures:
            return False
        at = next(
            (
                i
                for i, f in enumerate(out.failures)
                if isinstance(f.error, LostResultError) and f.error.lost
            ),
            None,
        )
        if at is None:
            return False
        thread = threading.Thread(
            target=self._make_again,
            args=(out, at, sent),
            name=f"conveyor-{self.stage}-remake",
            daemon=True,
        )
        with self._lock:
            if self.stop.is_set():
                return False
            self._threads.add(thread)
        thread.start()
        return True

    def _make_again(self, out: Outcome, at: int, sent: Sent) -> None:
        failure = out.failures[at]
        lost = [k for k in failure.error.lost if k < len(sent.objects)]  # type: ignore[attr-defined]
        made: list[Remade] = []
        try:
            for k in lost:
                o = sent.objects[k]
                if o.ref is sent.refs[k]:  # else made again since this task was sent
                    made += remake(o, self.stop)
        except Exception as exc:  # CannotRemake, or Ray failing under it
            error = lost_error(self.stage, [sent.objects[k].stage for k in lost], str(exc))
            error.__cause__ = failure.error
            out.failures[at] = Failure(failure.unit, error, failure.traceback)
        else:  # the unit did not run: the scheduler runs it again, on the new objects
            del out.failures[at]
        out.remade = made or None
        with self._lock:
            self._threads.discard(threading.current_thread())
        self.post(out)

    def close(self) -> None:
        """Stop making results again; each held outcome is posted (its unit failed)."""
        with self._lock:
            self.stop.set()
            threads = list(self._threads)
        for t in threads:
            t.join()
