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

A write goes to a temporary file in the same folder, is fsync'ed, then renamed over
the final name (atomic on POSIX), so a reader sees the whole old blob, the whole new
one, or none. A read checks the magic, the lengths, the checksum and that the blob
names the address it was read for; a blob that fails any check (torn by a crash,
truncated, flipped bits, or another entry's valid blob copied over this one) is
deleted and reported missing, never returned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path

MAGIC = b"CVBLOB02"
# magic, body length, sha256 of the body, address length, label length, metadata length
_HEADER = struct.Struct(">8sQ32sBHI")
_TMP_PREFIX = ".tmp-"
_ADDRESS = re.compile(r"[0-9a-f]{3,128}")


@dataclasses.dataclass(frozen=True)
class BlobInfo:
    """A blob's header: its address, label, payload size, file size and write time."""

    address: str
    label: str
    payload_bytes: int
    file_bytes: int
    mtime: float
    path: Path


@dataclasses.dataclass(frozen=True)
class Blob:
    """A verified blob: its label, metadata and payload."""

    address: str
    label: str
    meta: bytes
    payload: bytes


class BlobStore:
    """Blobs under ``root``, at ``root/<address[:2]>/<address>``.

    ``put(address, payload)`` stores bytes; ``get(address)`` returns them verified,
    or None when absent or damaged (a damaged blob is deleted). With ``fsync=False``
    a put skips the fsync (about a millisecond on a disk): a crash may then leave a
    torn blob, which the checksum catches on the next read, so it costs a recompute,
    never a wrong value.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._made: set[str] = set()  # folders known to exist: mkdir is slow on some disks

    def path_of(self, address: str) -> Path:
        if not _ADDRESS.fullmatch(address):
            raise ValueError(f"blob address {address!r} is not a lowercase hex digest")
        return self.root / address[:2] / address

    def put(self, address: str, payload: bytes, *, label: str = "", meta: bytes = b"") -> int:
        """Store ``payload`` at ``address`` atomically; returns the bytes written."""
        path = self.path_of(address)
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
        if address[:2] not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(address[:2])
        tmp = self._write_tmp(path.parent, (header, *parts))
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return len(header) + body_len

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` (any file, not a blob) as a put writes a blob."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_tmp(path.parent, (data,))
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def probe(self) -> None:
        """Write, sync and remove a small file under the root (made if missing): raises
        the OSError a put would meet (not a folder, read-only, no space left)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_tmp(self.root, (b"conveyor cache probe\n",)).unlink()

    def _write_tmp(self, folder: Path, chunks: tuple[bytes, ...]) -> Path:
        """A temporary file in ``folder`` holding ``chunks``, synced unless fsync=False."""
        tmp = folder / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            try:
                f = tmp.open("wb")
            except FileNotFoundError:  # the folder was removed since (rm -rf of the cache)
                folder.mkdir(parents=True, exist_ok=True)
                f = tmp.open("wb")
            with f:
                for chunk in chunks:
                    f.write(chunk)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

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
        path = self.path_of(address)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, False
        blob = _verified(data, address)
        if blob is None:
            self.discard(address)
            return None, True
        return blob, False

    def discard(self, address: str) -> bool:
        """Delete the blob at ``address``; False if there was none."""
        try:
            self.path_of(address).unlink()
        except FileNotFoundError:
            return False
        return True

    def infos(self) -> Iterator[BlobInfo]:
        """Every blob's header (unverified: listing does not read payloads)."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or len(folder.name) != 2:
                continue
            for path in sorted(folder.iterdir()):
                if path.name.startswith(_TMP_PREFIX):
                    continue
                info = _read_info(path)
                if info is not None:
                    yield info


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


def _read_info(path: Path) -> BlobInfo | None:
    try:
        stat = path.stat()
        with path.open("rb") as f:
            head = f.read(_HEADER.size)
            label, length = "?", 0
            if len(head) == _HEADER.size:
                magic, body_len, _, a_len, n_len, m_len = _HEADER.unpack(head)
                if magic == MAGIC:
                    f.seek(_HEADER.size + a_len)
                    label = f.read(n_len).decode("utf-8", "replace")
                    length = max(0, body_len - a_len - n_len - m_len)
    except OSError:
        return None  # removed while listing
    return BlobInfo(path.name, label, length, stat.st_size, stat.st_mtime, path)
