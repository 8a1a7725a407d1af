"""Checksummed blobs on disk, written atomically: what the stage cache stands on.

Each blob is one file, named by its address (a hex digest: the cache key, itself
the hash of the computation's inputs) and laid out as::

    offset  size  field
    0       8     magic b"CVBLOB01"
    8       8     payload length, big-endian
    16      32    SHA-256 of the payload
    48      2     length n of the label, big-endian
    50      n     label (UTF-8: the stage that wrote it, for listing)
    50 + n  ...   payload

A write goes to a temporary file in the same folder, is fsync'ed, then renamed over
the final name (atomic on POSIX), so a reader sees the whole old blob, the whole new
one, or none. A read checks the magic, the length and the checksum; a blob that
fails any check (torn by a crash, truncated, flipped bits) is deleted and reported
missing, never returned.
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

MAGIC = b"CVBLOB01"
_HEADER = struct.Struct(">8sQ32sH")  # magic, payload length, sha256, label length
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

    def put(self, address: str, payload: bytes, *, label: str = "") -> int:
        """Store ``payload`` at ``address`` atomically; returns the bytes written."""
        path = self.path_of(address)
        name = label.encode("utf-8", "surrogatepass")[:0xFFFF]
        header = _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest(), len(name))
        if address[:2] not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(address[:2])
        tmp = path.parent / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            try:
                f = tmp.open("wb")
            except FileNotFoundError:  # the folder was removed since (rm -rf of the cache)
                path.parent.mkdir(parents=True, exist_ok=True)
                f = tmp.open("wb")
            with f:
                f.write(header)
                f.write(name)
                f.write(payload)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return len(header) + len(name) + len(payload)

    def get(self, address: str) -> bytes | None:
        """The payload at ``address``, verified; None if absent or damaged (then deleted)."""
        return self.fetch(address)[0]

    def fetch(self, address: str) -> tuple[bytes | None, bool]:
        """``(payload, damaged)``: the verified payload or None, and whether a blob was
        there but failed its checks (it has been deleted)."""
        path = self.path_of(address)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, False
        payload = _verified_payload(data)
        if payload is None:
            self.discard(address)
            return None, True
        return payload, False

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


def _verified_payload(data: bytes) -> bytes | None:
    if len(data) < _HEADER.size:
        return None
    magic, length, checksum, name_len = _HEADER.unpack_from(data)
    start = _HEADER.size + name_len
    if magic != MAGIC or len(data) != start + length:
        return None
    payload = data[start:]
    if hashlib.sha256(payload).digest() != checksum:
        return None
    return payload


def _read_info(path: Path) -> BlobInfo | None:
    try:
        stat = path.stat()
        with path.open("rb") as f:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size:
                label, length = "?", 0
            else:
                magic, length, _, name_len = _HEADER.unpack(head)
                label = f.read(name_len).decode("utf-8", "replace") if magic == MAGIC else "?"
    except OSError:
        return None  # removed while listing
    return BlobInfo(path.name, label, length, stat.st_size, stat.st_mtime, path)
