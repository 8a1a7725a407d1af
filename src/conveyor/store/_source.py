"""What a run read, so that resuming it reads the same source and skips what finished.

A run started by ``conveyor run`` keeps a fingerprint of its source in its params:

- ``--source`` files: each file's path, size, modification time and SHA-256 of its
  content (:func:`file_fingerprint`), taken before the run reads it; a URL is kept by
  name only (its content is not read twice);
- the pipeline's own source (code): a running fingerprint of the items as they are
  read (:class:`ItemDigest`: how many, and a hash over each item's content
  fingerprint), written when the run ends.

A resumed run reads the source through :class:`ResumeSource`, which drops the source
positions the earlier run finished (done, filtered, dead-lettered at the sinks, from
its ledger) and checks the items against the stored fingerprint as it reads them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

from conveyor.errors import SourceError

Ranges = list[tuple[int, int]]


def file_fingerprint(path: str) -> dict[str, Any]:
    """``--source PATH``'s fingerprint: path, size, mtime and SHA-256 of each file it
    names (a glob: every match, in order); a URL by its name only."""
    if "://" in path or "::" in path:
        return {"url": path}
    names = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    files = []
    for name in names:
        st = os.stat(name)
        sha = hashlib.sha256()
        with open(name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        files.append(
            {"path": name, "size": st.st_size, "mtime": st.st_mtime, "sha256": sha.hexdigest()}
        )
    return {"files": files}


def file_changes(stored: dict[str, Any], now: dict[str, Any]) -> str | None:
    """How the files ``now`` differ from ``stored`` (None: the same content)."""
    if "url" in stored or "url" in now:
        return None  # a URL's content is not fingerprinted
    old = {f["path"]: f for f in stored.get("files", [])}
    new = {f["path"]: f for f in now.get("files", [])}
    for name in sorted(old.keys() - new.keys()):
        return f"{name} is gone"
    for name in sorted(new.keys() - old.keys()):
        return f"{name} is new"
    for name, was in old.items():
        is_ = new[name]
        if was["sha256"] != is_["sha256"]:
            return (
                f"{name} changed: {was['size']} bytes then, {is_['size']} now, another content hash"
            )
    return None


class ItemDigest:
    """A running fingerprint of the items a source yields: their count and a hash of
    each item's content fingerprint, in order (thread-safe: a source is read on a
    thread of its own)."""

    def __init__(self) -> None:
        self.count = 0
        self._hash = hashlib.blake2b(digest_size=16)
        self._lock = threading.Lock()

    def add(self, item: Any) -> None:
        from conveyor.cache import fingerprint_value

        # an item that has no faithful fingerprint counts by its type
        part = fingerprint_value(item) or f"type:{type(item).__qualname__}"
        with self._lock:
            self._hash.update(part.encode())
            self.count += 1

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"items": self.count, "digest": self._hash.hexdigest()}


class DigestingSource:
    """``source`` as it is, each item added to ``digest`` as it is read. For an async
    source, iterate :meth:`async_items` (this object is a plain iterable)."""

    def __init__(self, source: Iterable[Any] | AsyncIterable[Any], digest: ItemDigest) -> None:
        self.source = source
        self.digest = digest

    def __iter__(self) -> Iterator[Any]:
        for item in self.source:  # type: ignore[union-attr]
            self.digest.add(item)
            yield item

    async def async_items(self) -> AsyncIterator[Any]:
        async for item in self.source:  # type: ignore[union-attr]
            self.digest.add(item)
            yield item

    def runnable(self) -> Any:
        """What to give the pipeline: this, or the async items of an async source."""
        return self.async_items() if is_async(self.source) else self


def is_async(source: Any) -> bool:
    return isinstance(source, AsyncIterable) and not isinstance(source, Iterable)


class ResumeSource:
    """The source of a resumed run: the earlier run's source less the positions it
    finished (``finished``: sorted ``(first, last)`` ranges of source positions),
    checked against its item fingerprint ``expect`` (``{"items": n, "digest": d}``,
    or None) as it is read. A source that differs raises SourceError (the run fails
    with it), naming run ``run_id`` and ``--force``."""

    def __init__(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        finished: Sequence[tuple[int, int]],
        expect: dict[str, Any] | None,
        run_id: str,
    ) -> None:
        self.source = source
        self.finished = list(finished)
        self.expect = expect
        self.run_id = run_id
        self.digest = ItemDigest()

    def _keep(self) -> Any:
        """A function of each item in order: False to drop it; raises SourceError when
        the items read differ from the earlier run's."""
        ranges = iter(self.finished)
        current = next(ranges, None)
        n = int(self.expect["items"]) if self.expect else 0
        digest = self.digest = ItemDigest()
        position = -1

        def keep(item: Any) -> bool:
            nonlocal current, position
            position += 1
            digest.add(item)
            if digest.count == n and digest.state()["digest"] != self.expect["digest"]:  # type: ignore[index]
                raise SourceError(self._differs(f"its first {n} items are not the same"))
            while current is not None and current[1] < position:
                current = next(ranges, None)
            return not (current is not None and current[0] <= position)

        return keep

    def _ended(self) -> None:
        if self.expect is not None and self.digest.count < int(self.expect["items"]):
            raise SourceError(
                self._differs(
                    f"it ended after {self.digest.count} items, and run {self.run_id} "
                    f"read {self.expect['items']}"
                )
            )

    def _differs(self, how: str) -> str:
        return (
            f"the source differs from the one run {self.run_id} read: {how}; resume it "
            "over the same source, or pass --force (force=True to plan_resume) to run "
            "over this one"
        )

    def __iter__(self) -> Iterator[Any]:
        keep = self._keep()
        for item in self.source:  # type: ignore[union-attr]
            if keep(item):
                yield item
        self._ended()

    def runnable(self) -> Any:
        """What to give the pipeline: this, or the async items of an async source."""
        return self.async_items() if is_async(self.source) else self

    async def async_items(self) -> AsyncIterator[Any]:
        keep = self._keep()
        async for item in self.source:  # type: ignore[union-attr]
            if keep(item):
                yield item
        self._ended()

    def check(self) -> None:
        """Read the source up to where the earlier run stopped and compare it, before
        anything runs; only for a source that can be read twice (not an iterator)."""
        if self.expect is None or is_async(self.source) or iter(self.source) is self.source:  # type: ignore[arg-type]
            return
        keep = self._keep()
        for item in self.source:  # type: ignore[union-attr]
            keep(item)
            if self.digest.count >= int(self.expect["items"]):
                return
        self._ended()


def skipped_count(finished: Sequence[tuple[int, int]]) -> int:
    return sum(last - first + 1 for first, last in finished)


def to_source_positions(ranges: Ranges, skipped: Ranges) -> Ranges:
    """Ranges of a resumed run's own item positions as positions of the source it read,
    which skipped the (sorted, disjoint) ``skipped`` ranges: item ``i`` of the run is
    the ``i``-th source position not skipped."""
    out: Ranges = []
    # the source positions not skipped, as (run position of its start, source start, end)
    gaps: list[tuple[int, int, int | None]] = []
    run_pos, src = 0, 0
    for first, last in skipped:
        if first > src:
            gaps.append((run_pos, src, first - 1))
            run_pos += first - src
        src = last + 1
    gaps.append((run_pos, src, None))
    for first, last in ranges:
        for g_run, g_src, g_end in gaps:
            g_len = None if g_end is None else g_end - g_src + 1
            lo, hi = max(first, g_run), last if g_len is None else min(last, g_run + g_len - 1)
            if lo <= hi:
                out.append((g_src + lo - g_run, g_src + hi - g_run))
    return merge(out)


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def subtract(ranges: Ranges, holes: Ranges) -> Ranges:
    """``ranges`` less the positions in ``holes`` (both sorted, disjoint)."""
    out: Ranges = []
    for first, last in ranges:
        lo = first
        for h_first, h_last in holes:
            if h_last < lo or h_first > last:
                continue
            if h_first > lo:
                out.append((lo, h_first - 1))
            lo = max(lo, h_last + 1)
        if lo <= last:
            out.append((lo, last))
    return out
