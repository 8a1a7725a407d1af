"""Checksummed blobs on disk, written atomically, each carrying its own address.

Each blob is one file, named by its address (a hex digest: the cache key, itself
the hash of the computation's inputs) and laid out as::

    offset  size  field
    0       8     magic b"CVBLOB02"
    8       8     body length, big-endian
    16      32    SHA-256 of the body
    48      1     length a of the address
    49      2     length n of the label, big-endian
    51      4     length m of the metadata, big-endian
    55      ...   body: address (ASCII) | label (UTF-8) | metadata | payload

Blobs live in a :class:`~conveyor.cache._storage.Storage`: a folder, or a URL that
every node reaches. A write is atomic there (a temporary file renamed over the final
name; on an object store, one put of the whole object), so a reader sees the whole
old blob, the whole new one, or none. A read checks the magic, the lengths, the
checksum and that the blob names the address it was read for; a blob that fails any
check (torn by a crash, truncated, flipped bits, or another entry's valid blob copied
over this one) is deleted and reported missing, never returned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from conveyor.cache._storage import Storage, open_storage

MAGIC = b"CVBLOB02"
# magic, body length, sha256 of the body, address length, label length, metadata length
_HEADER = struct.Struct(">8sQ32sBHI")
_ADDRESS = re.compile(r"[0-9a-f]{3,128}")


@dataclasses.dataclass(frozen=True)
class BlobInfo:
    """A blob's header: its address, label, payload size, file size and write time."""

    address: str
    label: str
    payload_bytes: int
    file_bytes: int
    mtime: float
    path: Path | str  # a URL for a cache at a URL


@dataclasses.dataclass(frozen=True)
class Blob:
    """A verified blob: its label, metadata and payload."""

    address: str
    label: str
    meta: bytes
    payload: bytes


class BlobStore:
    """Blobs under ``root`` (a folder, a URL, or a :class:`Storage`), at
    ``<address[:2]>/<address>``.

    ``put(address, payload)`` stores bytes; ``get(address)`` returns them verified,
    or None when absent or damaged (a damaged blob is deleted). With ``fsync=False``
    a put to a folder skips the fsync (about a millisecond on a disk): a crash may
    then leave a torn blob, which the checksum catches on the next read, so it costs
    a recompute, never a wrong value.
    """

    def __init__(self, root: str | os.PathLike[str] | Storage, *, fsync: bool = True) -> None:
        self.storage = root if isinstance(root, Storage) else open_storage(root, fsync=fsync)
        self.root = self.storage.root
        self.fsync = fsync

    def name_of(self, address: str) -> str:
        """The blob's name in its storage, ``<address[:2]>/<address>``."""
        if not _ADDRESS.fullmatch(address):
            raise ValueError(f"blob address {address!r} is not a lowercase hex digest")
        return f"{address[:2]}/{address}"

    def path_of(self, address: str) -> Path | str:
        """Where the blob is: a path, or a URL for a cache at a URL."""
        return self.storage.locate(self.name_of(address))

    def put(self, address: str, payload: bytes, *, label: str = "", meta: bytes = b"") -> int:
        """Store ``payload`` at ``address`` atomically; returns the bytes written."""
        name = self.name_of(address)
        parts = (
            address.encode("ascii"),
            label.encode("utf-8", "surrogatepass")[:0xFFFF],
            meta,
            payload,
        )
        h = hashlib.sha256()
        for part in parts:
            h.update(part)
        body_len = sum(len(p) for p in parts)
        header = _HEADER.pack(MAGIC, body_len, h.digest(), *(len(p) for p in parts[:3]))
        self.storage.write(name, (header, *parts))
        return len(header) + body_len

    def probe(self) -> None:
        """Write and remove a small file under the root (made if missing): raises
        the OSError a put would meet (not a folder, read-only, no space left)."""
        self.storage.probe()

    def get(self, address: str) -> bytes | None:
        """The payload at ``address``, verified; None if absent or damaged (then deleted)."""
        return self.fetch(address)[0]

    def fetch(self, address: str) -> tuple[bytes | None, bool]:
        """``(payload, damaged)``: the verified payload or None, and whether a blob was
        there but failed its checks (it has been deleted)."""
        blob, damaged = self.read(address)
        return (blob.payload if blob is not None else None), damaged

    def read(self, address: str) -> tuple[Blob | None, bool]:
        """``(blob, damaged)``, as :meth:`fetch` but with the label and metadata."""
        data = self.storage.read(self.name_of(address))
        if data is None:
            return None, False
        blob = _verified(data, address)
        if blob is None:
            self.discard(address)
            return None, True
        return blob, False

    def discard(self, address: str) -> bool:
        """Delete the blob at ``address``; False if there was none."""
        return self.storage.remove(self.name_of(address))

    def infos(self) -> Iterator[BlobInfo]:
        """Every blob's header (unverified: listing does not read payloads)."""
        for name, size, mtime in self.storage.files():
            folder, _, address = name.partition("/")
            if len(folder) != 2 or "/" in address or not address:
                continue
            info = self._read_info(name, address, size, mtime)
            if info is not None:
                yield info

    def _read_info(self, name: str, address: str, size: int, mtime: float) -> BlobInfo | None:
        try:
            head = self.storage.read(name, 0, _HEADER.size)
            label, length = "?", 0
            if head is None:
                return None  # removed while listing
            if len(head) == _HEADER.size:
                magic, body_len, _, a_len, n_len, m_len = _HEADER.unpack(head)
                if magic == MAGIC:
                    at = _HEADER.size + a_len
                    label = (self.storage.read(name, at, at + n_len) or b"").decode(
                        "utf-8", "replace"
                    )
                    length = max(0, body_len - a_len - n_len - m_len)
        except OSError:
            return None  # removed while listing
        return BlobInfo(address, label, length, size, mtime, self.storage.locate(name))


def _verified(data: bytes, address: str) -> Blob | None:
    if len(data) < _HEADER.size:
        return None
    magic, body_len, checksum, a_len, n_len, m_len = _HEADER.unpack_from(data)
    if magic != MAGIC or len(data) != _HEADER.size + body_len:
        return None
    body = memoryview(data)[_HEADER.size :]
    if a_len + n_len + m_len > body_len or hashlib.sha256(body).digest() != checksum:
        return None
    if bytes(body[:a_len]) != address.encode("ascii"):
        return None  # a valid blob, but another key's: it must not answer for this one
    label = bytes(body[a_len : a_len + n_len]).decode("utf-8", "replace")
    start = a_len + n_len
    meta = bytes(body[start : start + m_len])
    return Blob(address, label, meta, bytes(body[start + m_len :]))
