"""StageCache: a stage's results by content, on disk, never stale and never corrupt.

The key of one call joins three things, so that changing any of them misses::

    key = sha256(format, stage qualified name, code fingerprint, input fingerprint)

- the stage's qualified name (two stages with the same code keep apart entries);
- its code fingerprint (:func:`fingerprint_function`: source, closed-over values,
  referenced constants and helpers, defaults), computed once per run;
- the input's fingerprint (:func:`fingerprint_value`).

An input that cannot be fingerprinted has no key (:meth:`StageCache.key` returns
None): the stage runs, nothing is cached, and a :class:`CacheWarning` says so once
per stage per process. Values are pickled (protocol 5) into checksummed blobs
(:mod:`conveyor.cache._blobs`); a damaged blob is a miss, and the engine recomputes.

::

    cache = StageCache()                              # ./.conveyor/cache
    code = fingerprint_function(parse)                # once per run
    key = cache.key("etl.parse", code, line)
    hit, value = cache.get(key) if key else (False, None)
    if not hit:
        value = parse(line)
        if key:
            cache.put(key, value)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import struct
import threading
import warnings
from pathlib import Path
from typing import Any

from conveyor.cache._blobs import BlobStore
from conveyor.cache._fingerprint import explain_value
from conveyor.cache._storage import is_url, open_storage
from conveyor.errors import CacheWarning

DEFAULT_ROOT = Path(".conveyor") / "cache"


def default_cache_root(start: str | os.PathLike[str] | None = None) -> Path | str:
    """Where the cache is when no folder is given, found as the run store is:
    ``$CONVEYOR_CACHE`` when it is set (a folder, or a URL such as ``s3://bucket/cache``);
    else ``.conveyor/cache`` in the nearest folder,
    from ``start`` (the current folder) upwards, that has a ``.conveyor/`` folder, so
    that a job run from any sub-folder of a project shares its cache; else
    ``./.conveyor/cache`` in ``start``."""
    env = os.environ.get("CONVEYOR_CACHE")
    if env:
        return env if is_url(env) else Path(env)
    here = Path(start if start is not None else Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / ".conveyor").is_dir():
            return folder / DEFAULT_ROOT
    return here / DEFAULT_ROOT


KEY_FORMAT = b"conveyor-cache-key/1"
_LAYOUT = "blobs-v2"  # bump when the blob format changes: old blobs are then ignored
_OLD_LAYOUTS = ("blobs-v1",)  # removed by clear()
_MEMO_LIMIT = 1 << 16
INPUT_LIMIT = 1 << 20  # inputs pickled larger than this are not kept with their entry

_NOTHING: Any = object()  # no input given to put()

_warned: set[tuple[str, str]] = set()  # (stage, reason kind): per process
_warned_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One cached result: its stage, key, size on disk and when it was written."""

    stage: str
    key: str
    size_bytes: int
    created_at: float
    path: Path | str  # a URL for a cache at a URL


@dataclasses.dataclass(frozen=True)
class StoredEntry:
    """One entry read back whole: its stage, key, the code fingerprint it was computed
    under, its input (pickled; None when it was not kept) and its result (pickled)."""

    stage: str
    key: str
    code: str
    input: bytes | None
    result: bytes


@dataclasses.dataclass(frozen=True)
class CacheStatistics:
    """This StageCache object's counters since it was made."""

    hits: int
    misses: int
    damaged: int  # blobs that failed their checksum and were deleted (each also a miss)
    puts: int
    unkeyed: int  # inputs that could not be fingerprinted


class StageCache:
    """Cached stage results under ``root`` (default: :func:`default_cache_root`, the
    nearest ``.conveyor/cache`` upwards, else ``./.conveyor/cache``); safe to share
    between threads and processes (blobs are written atomically). ``root`` may be a
    folder or an fsspec URL (``file://``, ``s3://bucket/cache``...) that every node
    reaches (see :mod:`conveyor.cache._storage`); a URL needs the ``files`` extra.
    ``fsync=False`` trades durability of fresh entries in a folder for speed (see
    :class:`BlobStore`); never correctness."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, fsync: bool = True) -> None:
        if root is None:  # as the engine and the CLI find it
            root = default_cache_root()
        self.storage = open_storage(root, fsync=fsync)
        self.root = self.storage.root
        self.blobs = BlobStore(self.storage.child(_LAYOUT), fsync=fsync)
        self._lock = threading.Lock()
        self._stage_of: dict[str, str] = {}  # key → stage, to label the blob put later
        self._hits = self._misses = self._damaged = self._puts = self._unkeyed = 0

    def key(
        self,
        stage_qualname: str,
        code_fp: str,
        value: Any,
        *,
        warn: bool = True,
        memo: dict[int, tuple[type, bytes]] | None = None,
    ) -> str | None:
        """The cache key of ``stage_qualname`` (code ``code_fp``) called on ``value``, or
        None when ``value`` cannot be fingerprinted (a CacheWarning says so, once, unless
        ``warn=False``: the engine's workers report it to the driver, which warns)."""
        digest, refused = explain_value(value, memo=memo)
        if digest is None:
            with self._lock:
                self._unkeyed += 1
            if warn:
                self.warn_unfingerprintable(stage_qualname, type(value), refused)
            return None
        h = hashlib.sha256(KEY_FORMAT)
        for part in (stage_qualname, code_fp, digest):
            data = part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "big") + data)
        key = h.hexdigest()
        with self._lock:
            if len(self._stage_of) >= _MEMO_LIMIT:
                self._stage_of.clear()  # only labels are lost: listing shows "?"
            self._stage_of[key] = stage_qualname
        return key

    def get(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` on a hit; ``(False, None)`` when absent, damaged (the blob
        is deleted: the caller recomputes and puts it again) or no longer loadable (its
        class is gone, say)."""
        payload, damaged = self.blobs.fetch(key)
        if payload is not None:
            try:
                value = pickle.loads(payload)
            except Exception:  # unpickling runs arbitrary code; any failure is a miss
                self.blobs.discard(key)
                damaged = True
            else:
                with self._lock:
                    self._hits += 1
                    self._stage_of.pop(key, None)
                return True, value
        with self._lock:
            self._misses += 1
            self._damaged += damaged
        return False, None

    def put(
        self,
        key: str,
        value: Any,
        *,
        stage: str | None = None,
        code: str = "",
        input: Any = _NOTHING,
        warn: bool = True,
    ) -> bool:
        """Store ``value`` under ``key``; False (and a CacheWarning, once per stage) when
        it cannot be pickled. ``stage`` labels the entry for listing; by default the
        stage that :meth:`key` made the key for. ``code`` (the code fingerprint) and
        ``input`` (the value the result was computed from, kept when it pickles into
        at most 1 MiB) let ``conveyor cache verify`` recompute the entry later."""
        with self._lock:
            label = stage or self._stage_of.pop(key, None) or "?"
        try:
            payload = pickle.dumps(value, protocol=5)
        except Exception as exc:  # objects refuse pickling in many ways
            if not warn:
                return False
            self._warn_once(
                label,
                "unpicklable",
                f"stage {label!r}: a result of type {type(value).__qualname__} cannot be "
                f"pickled ({type(exc).__name__}: {exc}), so it is not cached; return "
                "picklable values or turn caching off for this stage",
            )
            return False
        self.blobs.put(key, payload, label=label, meta=_meta(code, input))
        with self._lock:
            self._puts += 1
        return True

    def warn_unfingerprintable(
        self, stage: str, value_type: type | str, what: str | None = None
    ) -> None:
        """Say once per stage per process that its inputs cannot be fingerprinted."""
        name = value_type if isinstance(value_type, str) else value_type.__qualname__
        inside = f" (it holds {what})" if what and what != f"a {name}" else ""
        self._warn_once(
            stage,
            "unfingerprintable",
            f"stage {stage!r}: an input of type {name}{inside} cannot be fingerprinted, so "
            "such inputs are computed every time, never cached; pass plain values (numbers, "
            "strings, bytes, tuples, lists, dicts, dataclasses, NumPy arrays)",
        )

    @staticmethod
    def _warn_once(stage: str, reason: str, message: str) -> None:
        with _warned_lock:
            if (stage, reason) in _warned:
                return
            _warned.add((stage, reason))
        warnings.warn(message, CacheWarning, stacklevel=3)

    def entry(self, key: str) -> StoredEntry | None:
        """The entry under ``key`` read back whole and verified, or None."""
        blob, _ = self.blobs.read(key)
        if blob is None:
            return None
        (n,) = struct.unpack_from(">H", blob.meta)
        code = blob.meta[2 : 2 + n].decode("ascii", "replace")
        kept = blob.meta[2 + n :]
        return StoredEntry(blob.label, key, code, kept or None, blob.payload)

    def probe(self) -> None:
        """Raise the OSError that writing an entry would meet now (the root is a file,
        a read-only folder, a full disk), or return if an entry could be written."""
        self.blobs.probe()

    def statistics(self) -> CacheStatistics:
        with self._lock:
            return CacheStatistics(
                self._hits, self._misses, self._damaged, self._puts, self._unkeyed
            )

    def entries(self, stage: str | None = None) -> list[CacheEntry]:
        """Every entry (of ``stage`` alone if given), by stage then key."""
        found = [
            CacheEntry(info.label, info.address, info.file_bytes, info.mtime, info.path)
            for info in self.blobs.infos()
            if stage is None or info.label == stage
        ]
        return sorted(found, key=lambda e: (e.stage, e.key))

    def size_bytes(self) -> int:
        """Bytes on disk taken by every entry."""
        return sum(info.file_bytes for info in self.blobs.infos())

    def clear(self, stage: str | None = None) -> int:
        """Delete every entry (of ``stage`` alone if given); returns how many."""
        removed = 0
        for entry in self.entries(stage):
            if self.blobs.discard(entry.key):
                removed += 1
        if stage is None:  # entries of an older format, which nothing reads any more
            for old in _OLD_LAYOUTS:
                self.storage.remove_tree(old)
        return removed

    def __repr__(self) -> str:
        return f"StageCache({str(self.root)!r})"


def _meta(code: str, value: Any) -> bytes:
    """An entry's metadata: its code fingerprint, and its input pickled when that is
    small enough (empty otherwise)."""
    head = code.encode("ascii", "replace")
    kept = b""
    if value is not _NOTHING:
        try:
            kept = pickle.dumps(value, protocol=5)
        except Exception:  # the input is kept only to audit the entry: never required
            kept = b""
        if len(kept) > INPUT_LIMIT:
            kept = b""
    return struct.pack(">H", len(head)) + head + kept
