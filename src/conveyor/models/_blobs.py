"""Model artifacts as content-addressed blobs beside the run store.

A blob is named by the SHA-256 of its bytes (``models/blobs/ab/ab12...`` in the
store's folder), written to a temporary file and renamed into place, so a reader
never sees half a blob, and two registrations of the same bytes share one file.
Reading checks the bytes against their name: a blob damaged on disk is an error
naming it, never a model loaded from wrong weights.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from conveyor.errors import ModelError


def blob_root(store_path: Path) -> Path:
    """Where the blobs of the registry in the run store ``store_path`` live."""
    return store_path.parent / "models" / "blobs"


def blob_path(root: Path, digest: str) -> Path:
    return root / digest[:2] / digest


def put_blob(root: Path, data: bytes) -> str:
    """Store ``data``; return its SHA-256 (hex). Storing the same bytes again is free."""
    digest = hashlib.sha256(data).hexdigest()
    path = blob_path(root, digest)
    if path.exists() and path.stat().st_size == len(data):
        return digest
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def get_blob(root: Path, digest: str, *, what: str) -> bytes:
    """The bytes of blob ``digest``, checked against it; ``what`` names the model
    version in errors."""
    path = blob_path(root, digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(
            f"{what}: its artifact {digest[:12]} is missing from {path.parent}; the "
            "registry's blobs folder must travel with the run store (register it again)"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise ModelError(
            f"{what}: its artifact {path} is damaged (SHA-256 {actual[:12]}, expected "
            f"{digest[:12]}); register the model again"
        )
    return data
