"""Results kept in Ray's object store: the handles the driver routes instead of values.

Between two Ray stages the values never pass through the driver::

    actor of A ── run_kept ──▶ (reply: counts and sizes, outputs: one object) ──┐
                                        │ object store (A's node)               │
    driver: Kept(outputs, at=i) per unit, queued for B ◀── reply ───────────────┘
    actor of B ◀── task: pickled units with slots + the refs they name ── driver
        ray.get(refs) (node to node), each slot becomes its value, B runs

One object holds a task's output list (``Outputs``); a unit's result is ``Kept``
(that object, its index in the list, its serialized size). The driver holds only
these small handles: a handle's ``nbytes`` is what the queues' byte bounds count.
An object lives while a handle to it does (Ray's reference counting), so it is freed
once every unit it holds has been consumed.

A handle whose object was lost (its node died) fails the unit that needed it with
:class:`LostResultError`, naming the task's lost objects; the driver then makes them
again by re-running the tasks that made them (:mod:`.lineage`), and past that
module's bound the unit fails under the consumer's retry and skip policy: an item is
never silently dropped.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Sequence
from typing import Any

from conveyor.executors.base import Executor, Failure
from conveyor.executors.task import failure

__all__ = [
    "Kept",
    "LostResultError",
    "Outputs",
    "decode_kept_task",
    "encode_task",
    "keep_results",
    "resolve",
]

Position = int | tuple[int, int]  # a unit's result, or child j of unit i (flat_map, split)


class LostResultError(Exception):
    """The object holding an upstream stage's result is gone (its node died, or Ray
    freed it): the unit that needed it cannot run. ``lost`` lists the task's lost
    objects (their slots) for the driver to make again (:mod:`.lineage`); past that
    bound it fails under the consuming stage's retry and skip policy, naming the item."""

    lost: tuple[int, ...] = ()


class Outputs:
    """One task's output list in the object store: its ref, its size, its stage, and
    how to make it again (``lineage``: :class:`.lineage.Lineage`, None for none).

    ``ref`` is replaced when the object is made again: every handle reads the new one.
    ``place`` is the node it was made on; ``remade`` counts the times it was made
    again, ``making`` is set while it is being made (both :mod:`.lineage`'s)."""

    __slots__ = ("__weakref__", "lineage", "making", "nbytes", "place", "ref", "remade", "stage")

    def __init__(
        self, ref: Any, nbytes: int, stage: str, lineage: Any = None, place: str = ""
    ) -> None:
        self.ref, self.nbytes, self.stage = ref, nbytes, stage
        self.lineage, self.place = lineage, place
        self.remade = 0
        self.making: Any = None


class Kept:
    """A result left in Ray's object store: the driver routes this, not the value.

    ``nbytes`` is the result's serialized size (what a queue's byte bound counts)."""

    __slots__ = ("at", "nbytes", "outputs")

    def __init__(self, outputs: Outputs, at: Position, nbytes: int) -> None:
        self.outputs, self.at, self.nbytes = outputs, at, nbytes

    def __repr__(self) -> str:
        return (
            f"<a result of stage {self.outputs.stage!r} kept in Ray's object store, "
            f"{self.nbytes} bytes>"
        )

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{self!r} cannot be pickled: it is read by the next Ray stage's workers; "
            "a stage that needs values on the driver gets them (threads, processes)"
        )


# --- the driver's side -----------------------------------------------------------------


class _Pickler(pickle.Pickler):
    """Pickles units, writing each handle as (slot, position): slot k is objects[k]."""

    def __init__(self, file: io.BytesIO, refs: list[Outputs], slots: dict[int, int]) -> None:
        super().__init__(file, protocol=5)
        self.refs, self.slots = refs, slots
        self.used: set[int] = set()

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is not Kept:
            return None
        outputs = obj.outputs
        k = self.slots.get(id(outputs))
        if k is None:
            k = self.slots[id(outputs)] = len(self.refs)
            self.refs.append(outputs)
        self.used.add(k)
        return (k, obj.at)


def encode_task(task_id: int, units: list[Any]) -> tuple[bytes, list[Outputs]]:
    """``(data, objects)``: the task as a Ray actor receives it. Without handles, the
    plain pickle of ``(task_id, units)`` and no objects; with handles, each unit
    pickled on its own (so that a lost object fails only the units that need it) and
    the objects they name, whose refs (read when the task is sent: one made again
    since is read new) Ray lends the actor with the call."""
    refs: list[Outputs] = []
    slots: dict[int, int] = {}
    buf = io.BytesIO()
    _Pickler(buf, refs, slots).dump((task_id, units))
    if not refs:
        return buf.getvalue(), []
    pieces: list[bytes] = []
    uses: list[list[int]] = []
    for unit in units:
        buf = io.BytesIO()
        p = _Pickler(buf, refs, slots)
        p.dump(unit)
        pieces.append(buf.getvalue())
        uses.append(sorted(p.used))
    return pickle.dumps((task_id, pieces, uses), protocol=5), refs


def resolve(ray: Any, values: list[Any]) -> list[Any]:
    """``values`` with each handle (top level, or in a list or tuple) fetched to the
    driver: where a kept result leaves Ray (a dead-lettered item). A lost one stays
    described, never raises."""

    def one(v: Any) -> Any:
        if type(v) is Kept:
            try:
                return _at(ray.get(v.outputs.ref), v.at)
            except Exception as exc:
                return f"{v!r} (lost: {type(exc).__name__})"
        if isinstance(v, (list, tuple)) and any(type(x) is Kept for x in v):
            return type(v)(one(x) for x in v)
        return v

    return [one(v) for v in values]


def _at(outputs: list[Any], at: Position) -> Any:
    return outputs[at] if isinstance(at, int) else outputs[at[0]][at[1]]


# --- the actor's side ------------------------------------------------------------------


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, fetched: list[Any]) -> None:
        super().__init__(io.BytesIO(data))
        self.fetched = fetched

    def persistent_load(self, pid: Any) -> Any:
        k, at = pid
        return writable(_at(self.fetched[k], at))


def writable(value: Any) -> Any:
    """``value`` with its NumPy arrays (top level, or in a list, tuple or dict) made
    writable: Ray hands out read-only views of the store, a stage may change its
    input in place (as it may on every other executor). Copies those arrays once."""
    np = sys.modules.get("numpy")
    if np is None:
        return value

    def one(v: Any) -> Any:
        if isinstance(v, np.ndarray) and not v.flags.writeable:
            return v.copy()
        return v

    if type(value) in (list, tuple):
        return type(value)(map(one, value)) if any(map(_readonly, value)) else value
    if isinstance(value, dict):
        return (
            {k: one(v) for k, v in value.items()} if any(map(_readonly, value.values())) else value
        )
    return one(value)


def _readonly(v: Any) -> bool:
    flags = getattr(v, "flags", None)
    return flags is not None and not getattr(flags, "writeable", True)


def decode_kept_task(
    ray: Any, data: bytes, refs: list[Any], stage: str
) -> tuple[int, list[Any], Failure | None]:
    """``(task_id, units, bad)`` of a task with handles: the objects fetched (Ray moves
    them node to node), each unit rebuilt over them. The first unit that needs a lost
    object, or cannot be unpickled, is ``bad``; the units after it do not run."""
    task_id, pieces, uses = pickle.loads(data)
    fetched: list[Any] = [None] * len(refs)
    lost: dict[int, BaseException] = {}
    try:
        fetched = list(ray.get(list(refs)))
    except Exception:  # one is lost: fetch one by one to know which
        for k, ref in enumerate(refs):
            try:
                fetched[k] = ray.get(ref)
            except Exception as exc:
                lost[k] = exc
    units: list[Any] = []
    for i, (piece, used) in enumerate(zip(pieces, uses, strict=True)):
        gone = [k for k in used if k in lost]
        try:
            if gone:
                cause = lost[gone[0]]
                error = LostResultError(
                    f"stage {stage!r}: the upstream result this item needs was kept in "
                    f"Ray's object store and is lost ({type(cause).__name__}: its node "
                    "died, or Ray evicted it)"
                )
                error.lost = tuple(sorted(lost))  # the driver makes these again
                raise error from cause
            units.append(_Unpickler(piece, fetched).load())
        except Exception as exc:
            return task_id, units, failure(i, exc)
    return task_id, units, None


def keep_results(
    results: list[Any], kind: str, failed: set[int], *, split: bool
) -> tuple[list[Any], list[Any], list[Failure]]:
    """``(outputs, shapes, failures)`` for a task whose results stay in the object
    store: the values, their serialized sizes (an int per result, a list of ints for a
    flat_map's children or a split batch's items; None for a failed unit), and the
    results that cannot be serialized, each failing only its unit."""
    from ray import cloudpickle

    def size(value: Any) -> int:
        buffers: list[Any] = []
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        return len(data) + sum(b.raw().nbytes for b in buffers)

    outputs: list[Any] = []
    shapes: list[Any] = []
    failures: list[Failure] = []
    for i, r in enumerate(results):
        if i in failed:
            outputs.append(None)
            shapes.append(None)
            continue
        try:
            if kind == "flat_map" or (split and isinstance(r, (list, tuple))):
                shape: Any = [size(v) for v in r]
            else:
                shape = size(r)
        except Exception as exc:
            try:
                raise TypeError(
                    "the stage's result cannot be serialized to keep it in Ray's object "
                    f"store ({type(exc).__name__}: {exc}); return plain data (numbers, "
                    "strings, lists, dicts, NumPy arrays)"
                ) from exc
            except TypeError as err:
                failures.append(failure(i, err))
            outputs.append(None)
            shapes.append(None)
            continue
        outputs.append(r)
        shapes.append(shape)
    return outputs, shapes, failures


KEEP_FROM_BYTES = 100 * 1024  # Ray returns smaller objects inline, to the driver's memory


def worth_little(results: list[Any]) -> bool:
    """Whether a task's results are too small to keep in the object store (about
    :data:`KEEP_FROM_BYTES` in all, measured roughly): Ray would return them inline to
    the driver anyway, so they come back as values, as the cheaper way."""
    total = 0
    for r in results:
        total += _rough_size(r)
        if total >= KEEP_FROM_BYTES:
            return False
    return True


def _rough_size(value: Any) -> int:
    """About how many bytes ``value`` holds: arrays, bytes and strings exactly, lists,
    tuples and dicts one level deep, anything else its own size."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, (list, tuple, dict)):
        items = value.values() if isinstance(value, dict) else value
        return sys.getsizeof(value) + sum(_leaf_size(v) for v in items)
    return sys.getsizeof(value)


def _leaf_size(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    return len(value) if isinstance(value, (bytes, bytearray, str)) else sys.getsizeof(value)


def handles(outputs: Outputs, shapes: Sequence[Any]) -> list[Any]:
    """The results the driver routes for a kept task: a :class:`Kept` per result (a list
    of them for a flat_map's children or a split batch's items; None: a failed unit)."""
    out: list[Any] = []
    for i, shape in enumerate(shapes):
        if shape is None:
            out.append(None)
        elif isinstance(shape, list):
            out.append([Kept(outputs, (i, j), n) for j, n in enumerate(shape)])
        else:
            out.append(Kept(outputs, i, shape))
    return out


def total_bytes(shapes: Sequence[Any]) -> int:
    """The bytes a kept task's results hold."""
    return sum(sum(s) if isinstance(s, list) else s for s in shapes if s is not None)


SWITCH = "CONVEYOR_RAY_OBJECT_STORE"  # "0": every result comes back to the driver
PRODUCES = ("map", "flat_map", "batch", "collect")  # kinds whose results can be kept
READS = ("map", "flat_map", "batch", "collect")  # kinds whose workers read handles


def keeps_results(kind: str, consumers: Sequence[Executor], reader: type[Executor]) -> bool:
    """Whether a Ray stage of ``kind`` keeps its results in the object store: when it
    has consumers and every one is a Ray stage (``reader``) that reads handles (a
    filter passes its items on and a fold keeps them: those get values), unless
    ``$CONVEYOR_RAY_OBJECT_STORE`` is ``0``."""
    import os

    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return (
        kind in PRODUCES
        and bool(consumers)
        and all(isinstance(c, reader) and c.stage.kind in READS for c in consumers)
    )
