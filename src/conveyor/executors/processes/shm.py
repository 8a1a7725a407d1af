"""Pickling that moves large NumPy arrays through POSIX shared memory.

Process workers and the driver exchange bytes over pipes. ``dumps`` pickles a message
with protocol 5, except that every large ``numpy.ndarray`` goes by reference: the
payload carries ``(segment name, offset, shape, dtype, order)`` and the bytes live in a
POSIX shared-memory segment. ``loads`` maps the segment and returns an array built
directly over the mapping: no copy on the receiving side.

Ownership protocol (the driver owns every segment; a segment's *name* is what must not
leak, a mapping stays valid in every process after the name is unlinked)::

        driver (owner=True)                          worker (owner=False)
        -------------------                          --------------------
    dumps(task): copy array into S1  --- S1 --->  loads: map S1, array over it
      keep `pinned` (holds S1) until the answer     compute in place / new result
                                     <-- S1, S2 ---  dumps(answer): S1 by reference,
    loads(answer): reuse S1, map S2                   copy new array into S2
      S2 registered: unlink when its last           (never unlinks; may drop its
      array dies (weakref.finalize)                  mappings right after sending)
    drop `pinned`: S1 unlinked when no array
      over it remains
    cleanup(): unlink every name with the run's prefix, registered or stray
      (e.g. created by a worker that died before sending)

Rules the executor relies on:

* The driver's mapping keeps the name alive: a name is unlinked only when the driver's
  last array (or view) over it dies, or at ``cleanup()``. So the ``pinned`` list that
  ``dumps`` returns must be kept until the receiver has answered: it is what keeps the
  names in flight alive.
* A worker sends an array it received by reference only in the answer to the message
  that brought it (the driver still pins it then). Arrays kept across messages are
  copied into a new segment instead, because the driver may have unlinked their name.
* Segments a worker creates belong to the driver as soon as they are sent; the worker
  never unlinks them (except ones from a ``dumps`` that failed, which nobody else knows).

We do not use ``multiprocessing.shared_memory``: its resource tracker warns about, and
unlinks, segments the process did not create, which breaks handing ownership over. We
use the stdlib's ``_posixshmem`` directly instead. On a platform without it (Windows),
``dumps``/``loads`` fall back to plain in-band pickling and ``cleanup()`` does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import mmap
import os
import pickle
import secrets
import sys
import threading
import weakref
from typing import Any, Literal

from conveyor.executors.processes.salvage import Salvaged, Tolerant, salvage

try:  # POSIX only; absent on Windows, where we pickle in-band.
    import _posixshmem
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    _posixshmem = None

__all__ = ["Segment", "SegmentRegistry", "dumps", "loads", "salvage_loads", "shm_available"]

_SHM_DIR = "/dev/shm"  # where Linux exposes POSIX shared memory; scanned for strays
_PROTOCOL = 5
# posix_fallocate errors that mean "cannot reserve here", not "no room": go on without it.
_FALLOCATE_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


def shm_available() -> bool:
    """Whether large arrays can travel through shared memory on this platform."""
    return _posixshmem is not None


class Segment(mmap.mmap):
    """A mapping of one shared-memory segment.

    A Python subclass of ``mmap.mmap`` so that it can carry a name and be the ``base`` of
    the arrays built over it: those arrays keep the mapping alive, and in the driver the
    mapping's death is what unlinks the name.
    """

    name: str  # without the leading "/"
    address: int  # where the mapping starts in this process (to compute offsets)
    epoch: int  # the registry's ``loads`` epoch in which this process last received it
    linked: bool  # False once cleanup() unlinked the name: the mapping can't be shared

    def __repr__(self) -> str:
        return f"<Segment {self.name!r} size={len(self)}>"


def _map(fd: int, size: int, name: str) -> Segment:
    seg = Segment(fd, size)
    seg.name = name
    # Borrow a buffer export just long enough to read the base address.
    anchor = ctypes.c_char.from_buffer(seg)
    seg.address = ctypes.addressof(anchor)
    del anchor
    seg.epoch = -1
    seg.linked = True
    return seg


def _write_all(fd: int, data: memoryview) -> bool:
    """Write ``data`` at the start of ``fd``; False if the file system is full.

    One pass over the bytes (the kernel allocates and fills each page), where reserving
    then copying through the mapping would touch every page twice.
    """
    done, total = 0, data.nbytes
    try:
        while done < total:
            done += os.pwrite(fd, data[done:], done)  # Linux writes at most ~2 GiB a call
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG):
            return False
        raise
    return True


def _reserve(fd: int, size: int) -> bool:
    """Allocate ``size`` bytes of ``fd`` now; False if the file system is full."""
    if not hasattr(os, "posix_fallocate"):
        return True
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in _FALLOCATE_UNSUPPORTED:
            return True  # cannot reserve here: go on without (mmap stores may SIGBUS)
        if exc.errno in (errno.ENOSPC, errno.EFBIG):
            return False
        raise
    return True


def _unlink(name: str) -> None:
    """Unlink ``name``, quietly if someone (cleanup, another finalizer) already did."""
    with contextlib.suppress(FileNotFoundError):
        _posixshmem.shm_unlink("/" + name)


class SegmentRegistry:
    """Per-process table of the shared-memory segments this process has mapped.

    ``prefix`` is unique to the run (e.g. ``f"cv{os.getpid()}x{secrets.token_hex(3)}"``):
    every segment the driver or its workers create is named ``f"{prefix}_{n}_{pid}_{salt}"``
    (``salt`` random per registry, so that a reused pid cannot recreate a name some
    process still has mapped), so ``cleanup()`` can find strays. ``owner`` is True in the driver (it unlinks names),
    False in workers (they never unlink). Arrays of at least ``threshold`` bytes travel
    by reference. Safe to use from several threads at once.
    """

    def __init__(self, prefix: str, *, owner: bool, threshold: int = 1 << 20) -> None:
        if not prefix or "/" in prefix or len(prefix) > 200:
            raise ValueError(f"bad shared-memory prefix {prefix!r}")
        if threshold < 1:
            raise ValueError("threshold must be at least 1 byte")
        self.prefix = prefix
        self.owner = owner
        self.threshold = threshold
        self._stem = prefix + "_"  # the separator keeps "cv1x" from matching "cv1xy_..."
        self._salt = secrets.token_hex(3)
        self._lock = threading.Lock()
        # name -> live mapping; weak so that the mappings die with their last array.
        self._live: weakref.WeakValueDictionary[str, Segment] = weakref.WeakValueDictionary()
        self._finalizers: dict[str, weakref.finalize[Any, Any]] = {}
        self._counter = 0
        self._epoch = 0

    def __repr__(self) -> str:
        role = "owner" if self.owner else "worker"
        return f"<SegmentRegistry {self.prefix!r} {role} live={len(self._live)}>"

    # -- creating and mapping ---------------------------------------------------------

    def _create(self, size: int, data: memoryview | None) -> Segment | None:
        """A new segment of ``size`` bytes holding ``data`` (if given), or None if /dev/shm
        has no room for it."""
        with self._lock:
            self._counter += 1
            n = self._counter
        pid = os.getpid()
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
        while True:
            name = f"{self._stem}{n}_{pid}_{self._salt}"
            try:
                fd = _posixshmem.shm_open("/" + name, flags, 0o600)
                break
            except FileExistsError:
                # Left behind by a dead process with our pid and salt (unlikely): skip it.
                with self._lock:
                    self._counter += 1
                    n = self._counter
        try:
            os.ftruncate(fd, size)
            # tmpfs is sparse: allocate the pages now, through the fd, so that a full
            # /dev/shm is an OSError we can fall back from. Running out of room while
            # storing into the mapping instead would kill the process with SIGBUS.
            room = _write_all(fd, data) if data is not None else _reserve(fd, size)
            if not room:
                _unlink(name)
                return None
            seg = _map(fd, size, name)
        except BaseException:
            _unlink(name)
            raise
        finally:
            os.close(fd)
        self._register(seg)
        return seg

    def _attach(self, name: str) -> Segment:
        """The mapping of segment ``name``: the live one if we have it, else a new one."""
        with self._lock:
            seg = self._live.get(name)
            if seg is None or not seg.linked:  # unlinked by cleanup(): the name may be new
                fd = _posixshmem.shm_open("/" + name, os.O_RDWR, 0o600)
                try:
                    seg = _map(fd, os.fstat(fd).st_size, name)
                finally:
                    os.close(fd)
                self._register_locked(seg)
            seg.epoch = self._epoch
            return seg

    def _register(self, seg: Segment) -> None:
        with self._lock:
            self._register_locked(seg)

    def _register_locked(self, seg: Segment) -> None:
        self._live[seg.name] = seg
        if self.owner:
            # The driver owns the name: unlink it as soon as the last array over the
            # mapping is collected (also runs at interpreter exit).
            self._finalizers[seg.name] = weakref.finalize(seg, self._release, seg.name)

    def _release(self, name: str) -> None:
        self._finalizers.pop(name, None)
        _unlink(name)

    def _next_epoch(self) -> None:
        with self._lock:
            self._epoch += 1

    def _referenceable(self, seg: Segment) -> bool:
        """Whether ``seg``'s name is sure to exist until the receiver maps it."""
        if not seg.linked:
            return False  # cleanup() already unlinked it: the receiver could not open it
        if self.owner:
            return True  # our live mapping keeps the name linked
        # A worker: only a segment received with the message being answered (pinned by
        # the driver until then). Its own earlier segments were given away to the driver.
        return seg.epoch == self._epoch and seg.epoch > 0

    def live_segments(self) -> list[Segment]:
        """The segments this process has mapped and still uses (for tests, diagnostics)."""
        with self._lock:
            return list(self._live.values())

    # -- cleanup ----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Unlink every segment name of this run (driver only; idempotent).

        Covers the names we have mapped and, by scanning /dev/shm, strays created by
        workers that died before sending them. Existing mappings stay valid.
        """
        if not self.owner:
            raise RuntimeError("only the owning (driver) registry may clean up segments")
        if _posixshmem is None:
            return
        with self._lock:
            live = list(self._live.values())
            # list() first: a finalizer may pop from the dict at any time (it takes no
            # lock, since it can run inside a garbage collection triggered under ours).
            for fin in list(self._finalizers.values()):
                fin.detach()
            self._finalizers.clear()
        names = set()
        for seg in live:
            seg.linked = False
            names.add(seg.name)
        with contextlib.suppress(OSError):  # not Linux (no /dev/shm): registered names only
            names.update(e for e in os.listdir(_SHM_DIR) if e.startswith(self._stem))
        for name in names:
            _unlink(name)


# -- pickling ---------------------------------------------------------------------------


def _rebuild_shared(*args: Any) -> Any:
    """Placeholder the payload names; only ``loads`` knows how to map the segment."""
    raise pickle.UnpicklingError(
        "this payload references shared memory: read it with conveyor's shm.loads()"
    )


def _segment_of(arr: Any) -> Segment | None:
    """The segment the array's memory lies in, by walking its ``base`` chain."""
    base = arr.base
    while base is not None:
        if isinstance(base, Segment):
            return base
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return None


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, registry: SegmentRegistry, np: Any) -> None:
        super().__init__(file, protocol=_PROTOCOL)
        self._registry = registry
        self._ndarray = np.ndarray
        self._copyto = np.copyto
        self._uint8 = np.uint8
        self.pinned: dict[int, Segment] = {}  # id -> segment: referenced by the payload
        self.created: list[Segment] = []  # new segments, to unlink if dumps fails

    def reducer_override(self, obj: Any) -> Any:
        # Exact ndarray only: subclasses (masked arrays, matrix, memmap) keep their own
        # pickling, which knows about their extra state.
        if type(obj) is not self._ndarray:
            return NotImplemented
        reg = self._registry
        if obj.nbytes < reg.threshold or obj.dtype.hasobject:
            return NotImplemented  # small, or holds Python objects: pickle in-band
        if obj.flags.c_contiguous:
            order = "C"
        elif obj.flags.f_contiguous:
            order = "F"
        else:
            order = None  # copied into a C-ordered segment below
        seg = _segment_of(obj) if order is not None else None
        if seg is not None and reg._referenceable(seg):
            offset = obj.__array_interface__["data"][0] - seg.address
            if offset < 0 or offset + obj.nbytes > len(seg):
                seg = None  # defensive: the base chain lied; copy
        else:
            seg = None
        if seg is None:
            if order is not None:
                # Contiguous: a flat byte view of the same memory, written in one pass.
                raw = memoryview(obj.reshape(-1, order=order).view(self._uint8))
                seg = reg._create(obj.nbytes, raw)
                del raw
            else:
                order = "C"
                seg = reg._create(obj.nbytes, None)
                if seg is not None:
                    # Strided: gather straight into the mapping, the only copy.
                    dst = self._ndarray(obj.shape, obj.dtype, buffer=seg, order=order)
                    self._copyto(dst, obj, casting="no")
                    del dst
            if seg is None:
                return NotImplemented  # /dev/shm is full: in-band is slow but works
            self.created.append(seg)
            offset = 0
        self.pinned[id(seg)] = seg
        args = (seg.name, offset, obj.shape, obj.dtype, order, bool(obj.flags.writeable))
        return _rebuild_shared, args


class _SharedArrays:
    """An unpickler's ``find_class`` that rebuilds shared arrays over their segments."""

    def __init__(self, file: io.BytesIO, registry: SegmentRegistry) -> None:
        super().__init__(file)  # type: ignore[call-arg]
        self._registry = registry

    def find_class(self, module: str, name: str) -> Any:
        # The payload names the placeholder; substitute our method that knows the registry.
        if name == "_rebuild_shared" and module == __name__:
            return self._rebuild
        return super().find_class(module, name)  # type: ignore[misc]

    def _rebuild(
        self,
        name: str,
        offset: int,
        shape: Any,
        dtype: Any,
        order: Literal["C", "F"],
        writeable: bool,
    ) -> Any:
        import numpy as np

        seg = self._registry._attach(name)
        arr = np.ndarray(shape, dtype, buffer=seg, offset=offset, order=order)
        if not writeable:
            arr.flags.writeable = False
        return arr


class _Unpickler(_SharedArrays, pickle.Unpickler):
    pass


class _Salvager(_SharedArrays, Tolerant):
    pass


def dumps(obj: Any, registry: SegmentRegistry) -> tuple[bytes, list[object]]:
    """Pickle ``obj`` (protocol 5), sending large arrays by reference to shared memory.

    Returns the payload and the segments it references. Keep that list alive until the
    receiver has answered: it keeps the segments' names from being unlinked meanwhile.
    """
    np = sys.modules.get("numpy")
    if np is None or _posixshmem is None:
        # No numpy loaded means no arrays to share: plain (and faster) pickling.
        return pickle.dumps(obj, protocol=_PROTOCOL), []
    buf = io.BytesIO()
    pickler = _Pickler(buf, registry, np)
    try:
        pickler.dump(obj)
    except BaseException:
        # Nobody else knows these names yet: unlink them even in a worker.
        for seg in pickler.created:
            _unlink(seg.name)
        raise
    return buf.getvalue(), list(pickler.pinned.values())


def loads(data: bytes, registry: SegmentRegistry) -> Any:
    """Unpickle a ``dumps`` payload; shared arrays come back over the mapped segments.

    The arrays are writable (unless the sender's was read-only) and share memory with
    every other array over the same segment in this process.
    """
    if _posixshmem is None:
        return pickle.loads(data)
    registry._next_epoch()
    return _Unpickler(io.BytesIO(data), registry).load()


def salvage_loads(data: bytes, registry: SegmentRegistry) -> Salvaged:
    """Unpickle a ``dumps`` payload that ``loads`` could not load whole: the parts that
    fail are placeholders, and :meth:`Salvaged.error_in` tells which (:mod:`.salvage`)."""
    if _posixshmem is None:
        return salvage(data)
    registry._next_epoch()
    return salvage(data, _Salvager, registry=registry)
