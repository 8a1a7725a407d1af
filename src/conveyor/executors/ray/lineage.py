"""Lineage: a kept result lost with its node is made again by re-running its task.

A Ray stage's kept results (:mod:`.handles`) are one object per task in Ray's object
store, made by an actor that Ray never retries, so Ray cannot rebuild them. The
driver keeps, with each such object (:class:`~.handles.Outputs`), how it was made
(:class:`Lineage`): the producer stage's executor, the task as its actor received it
(bytes: its units, as values the driver held or as slots naming upstream objects),
the shape of its results, and for each upstream object a weak reference to it and
its own lineage. A lineage lives exactly as long as its object's handles (the
lifetime :mod:`.budget` counts): once the consumers are done with the object, both
go. It never holds an upstream object alive, only the recipe for it, so the driver's
memory grows with the objects alive, never with the items of the run.

When a consumer's actor finds an input lost (:class:`~.handles.LostResultError`
names the task's lost objects), its executor holds the task's outcome back and a
thread of its own makes each lost object again (:func:`remake`):

- the producer's executor runs the task again on one of its live actors (ahead of
  its queue and of its bytes cap) and keeps its results; the object's ref is
  replaced, so every handle to it (queued, held for a retry, sent to another
  consumer) reads the new object;
- an upstream object the re-run needs is taken as it is when it is alive, made
  again first when it was lost too (the re-run says so, as the consumer did), and
  made again from its own lineage when it was freed (consumed since): recursively,
  up to values the driver held.

The outcome is then posted with that unit not run: the scheduler runs it again at no
cost of an attempt, on the new object. A re-run is a recomputation the scheduler
never sees (no task, no result routed, the ledger untouched), so each item still
reaches the output once; the producer's function is called again, and its side
effects happen again (as with Spark's and Ray's own lineage), and a function that
is not deterministic may give another value. The outcome counts what was made again
(``Outcome.remade``), for the statistics and the report.

Bounded: an object is made again at most as many times as its producer's retry
policy has attempts (one without a retry). Past that, or when the producer cannot
run it (its stage is broken, the run is ending, a re-run fails), the unit fails with
a :class:`~.handles.LostResultError` naming both stages and the fixes, under the
consumer's retry and skip policy, as before.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

from conveyor.executors.base import Outcome
from conveyor.executors.ray.handles import LostResultError, Outputs

__all__ = ["CannotRemake", "Lineage", "Maker", "Remade", "lost_error", "remake"]

WAIT_SECONDS = 0.05  # how often a wait looks at whether the run is ending

Remade = tuple[str, str, int]  # (producer stage, node it was lost with or "": freed, results)


class CannotRemake(Exception):
    """A lost object could not be made again (the reason says why)."""


class Maker(Protocol):
    """The producer stage's executor, as a lineage uses it."""

    @property
    def name(self) -> str: ...

    @property
    def remakes(self) -> int: ...

    def rerun(self, data: bytes, refs: list[Any], stop: threading.Event) -> tuple[Any, Outcome]:
        """Run the task ``data`` again on a live actor, keeping its results: ``(the ref
        of its outputs, its outcome with their sizes)``; CannotRemake if it cannot."""
        ...


class Lineage:
    """How a kept task's outputs were made: enough to make them again."""

    __slots__ = ("data", "maker", "shapes", "upstream")

    def __init__(
        self, maker: Maker, data: bytes, upstream: Sequence[Outputs], shapes: Sequence[Any]
    ) -> None:
        self.maker, self.data = maker, data
        self.shapes = [None if s is None else len(s) if isinstance(s, list) else -1 for s in shapes]
        self.upstream = [(weakref.ref(o), o.lineage) for o in upstream]


_lock = threading.Lock()


def remake(outputs: Outputs, stop: threading.Event, *, lost: bool = True) -> list[Remade]:
    """Make ``outputs`` again (its ref replaced): what was made, for the report.
    ``lost``: it was lost (else freed, and needed again). Another thread making it
    already is waited for. CannotRemake past the bound or when it cannot be made."""
    lineage = outputs.lineage
    if lineage is None:
        raise CannotRemake(f"stage {outputs.stage!r} left no way to make it again")
    with _lock:
        making = outputs.making
        if making is None:
            if outputs.remade >= lineage.maker.remakes:
                raise CannotRemake(
                    f"stage {outputs.stage!r} made it again {outputs.remade} time(s), its "
                    "retry attempts, and it was lost each time"
                )
            outputs.remade += 1
            outputs.making = threading.Event()
    if making is not None:  # another thread makes it: what it made is read anew
        while not making.wait(WAIT_SECONDS):
            if stop.is_set():
                raise CannotRemake("the run is ending")
        return []
    try:
        return _make(outputs, lineage, stop, lost)
    finally:
        with _lock:
            done, outputs.making = outputs.making, None
        done.set()


def _make(outputs: Outputs, lineage: Lineage, stop: threading.Event, lost: bool) -> list[Remade]:
    made: list[Remade] = []
    inputs: list[Outputs] = []
    for ref, upstream in lineage.upstream:
        source = ref()
        if source is None:  # consumed and freed since: made again from its lineage
            stage = upstream.maker.name if upstream is not None else "?"
            source = Outputs(None, 0, stage, upstream)
            made += remake(source, stop, lost=False)
        inputs.append(source)
    maker = lineage.maker
    for _ in range(maker.remakes + 1):  # each round makes a lost input again (bounded)
        ref, out = maker.rerun(lineage.data, [o.ref for o in inputs], stop)
        gone = _lost_inputs(out)
        if gone:
            for k in gone:
                made += remake(inputs[k], stop)
            continue
        _check(out, lineage, maker.name)
        outputs.ref = ref
        results = sum(1 if s < 0 else s for s in lineage.shapes if s is not None)
        made.append((maker.name, outputs.place if lost else "", results))
        return made
    raise CannotRemake(f"stage {maker.name!r} found its own inputs lost each time it ran again")


def _lost_inputs(out: Outcome) -> tuple[int, ...]:
    for f in out.failures:
        if isinstance(f.error, LostResultError) and f.error.lost:
            return f.error.lost
    return ()


def _check(out: Outcome, lineage: Lineage, stage: str) -> None:
    """The re-run made every result the first run made, of the same shape."""
    failed = {f.unit: f.error for f in out.failures}
    for i, shape in enumerate(lineage.shapes):
        if shape is None:
            continue  # it failed the first time: no handle reads it
        if i in failed or i >= len(out.results):
            cause = failed.get(i)
            why = "did not run" if cause is None else f"raised {type(cause).__name__}: {cause}"
            raise CannotRemake(f"stage {stage!r} ran again and its unit {i} {why}")
        r = out.results[i]
        if (len(r) if isinstance(r, list) else -1) != shape:
            raise CannotRemake(
                f"stage {stage!r} ran again and gave another number of results for "
                "an item (a function that is not deterministic)"
            )


def lost_error(consumer: str, producers: Sequence[str], why: str) -> LostResultError:
    """The failure of a unit whose lost input was not made again: names the stages
    and the fixes."""
    names = ", ".join(repr(p) for p in dict.fromkeys(producers)) or "upstream"
    return LostResultError(
        f"stage {consumer!r}: the result of stage {names} this item needs was kept in "
        f"Ray's object store and is lost (its node died, or Ray evicted it), and it was "
        f"not made again: {why}; give stage {names} more retry attempts (each is one "
        "more try to make a lost result again), skip such items (on_error='skip') and "
        "re-drive them from the dead letters, or keep results on the driver "
        "(CONVEYOR_RAY_OBJECT_STORE=0)"
    )
