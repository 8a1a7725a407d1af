"""Where a source's bytes come from: paths, globs and URLs made into a list of files,
each opened as a binary stream, decompressed as its name says.

A local path (or ``file://`` URL) is read with the standard library alone; any
other URL (``memory://``, ``s3://``, ``gcs://``, ``simplecache::s3://``...) goes
through fsspec, imported only then. A glob is expanded when the source is made,
its matches in sorted order; several paths are read in the order given.
"""

from __future__ import annotations

import bz2
import dataclasses
import glob
import gzip
import io
import lzma
import os
from collections.abc import Sequence
from typing import IO, Any

from conveyor.errors import SourceError

EXTRA = "pip install 'conveyor[files]'"

# Name ending -> compression; the names are fsspec's, so that a URL decompresses the same.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".lzma": "lzma", ".zst": "zstd"}
_LOCAL_OPENERS: dict[str, Any] = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}
_LOCAL_OPENERS["lzma"] = lzma.open

PathLike = str | os.PathLike
Paths = PathLike | Sequence[PathLike]


@dataclasses.dataclass(frozen=True)
class File:
    """One file to read: its name as shown to the user, and how to open it."""

    name: str  # a local path, or a URL with its protocol
    compression: str | None
    fs: Any = None  # an fsspec filesystem; None for a local file
    fs_path: str = ""  # the path inside ``fs``

    def open_binary(self) -> IO[bytes]:
        """The file's bytes, decompressed."""
        if self.fs is not None:
            fh = self.fs.open(self.fs_path, "rb", compression=self.compression)
            # zstandard's reader reads blocks but not lines: buffer it
            return io.BufferedReader(fh) if self.compression == "zstd" else fh
        try:
            if self.compression is None:
                return open(self.name, "rb")
            if self.compression == "zstd":
                return _open_zstd(self.name)
            return _LOCAL_OPENERS[self.compression](self.name, "rb")
        except FileNotFoundError:
            raise self.gone() from None

    def gone(self) -> SourceError:
        """The error for a file removed since the source was made."""
        return SourceError(
            f"file {self.name!r} is gone: it was there when the source was made", path=self.name
        )

    def open_raw(self) -> Any:
        """What pyarrow reads: a local path as it is (pyarrow maps it), else an fsspec file."""
        if self.fs is not None:
            return self.fs.open(self.fs_path, "rb")
        return self.name


def _open_zstd(path: str) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        raise SourceError(
            f"{path!r} is zstd-compressed and reading it needs zstandard: {EXTRA}", path=path
        ) from None
    return io.BufferedReader(zstandard.open(path, "rb"))


def infer_compression(name: str, compression: str | None) -> str | None:
    """The compression of file ``name``: from its ending when ``compression`` is
    ``"infer"``, else ``compression`` itself (None: read as it is)."""
    if compression == "infer":
        return COMPRESSIONS.get(os.path.splitext(name)[1].lower())
    return compression


def strip_compression(name: str) -> str:
    """``name`` without a compression ending: ``events.jsonl.gz`` -> ``events.jsonl``."""
    base, ext = os.path.splitext(name)
    return base if ext.lower() in COMPRESSIONS else name


def _check_compression(compression: str | None) -> None:
    if compression not in (None, "infer", *COMPRESSIONS.values()):
        known = ", ".join(repr(c) for c in ("infer", None, *sorted(set(COMPRESSIONS.values()))))
        raise SourceError(f"compression={compression!r} is not one of {known}")


def as_list(paths: Paths) -> list[str]:
    """``paths`` (one path, or several) as a list of strings."""
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    if isinstance(paths, bytes) or not isinstance(paths, Sequence):
        raise SourceError(
            f"paths must be a path, a URL or a glob, or a list of them; got {type(paths).__name__}"
        )
    listed = [os.fspath(p) for p in paths]
    if not listed:
        raise SourceError("no path given: pass a path, a URL or a glob, or a non-empty list")
    return [str(p) for p in listed]


def resolve(
    paths: Paths, *, compression: str | None = "infer", storage_options: dict[str, Any] | None
) -> tuple[File, ...]:
    """Every file ``paths`` names, in order: globs expanded (sorted), each checked to
    exist. Raises SourceError for a missing file, a glob that matches nothing, a folder,
    or a URL that cannot be read here."""
    _check_compression(compression)
    files: list[File] = []
    for spec in as_list(paths):
        found = _resolve_one(spec, storage_options or {})
        files.extend(
            dataclasses.replace(f, compression=infer_compression(f.name, compression))
            for f in found
        )
    return tuple(files)


def _is_url(spec: str) -> bool:
    return "://" in spec or "::" in spec


def _resolve_one(spec: str, storage_options: dict[str, Any]) -> list[File]:
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    if not _is_url(spec):
        return _resolve_local(spec)
    fs, root = _filesystem(spec, storage_options)
    if glob.has_magic(root):
        matches = sorted(p for p in fs.glob(root) if not fs.isdir(p))
        if not matches:
            raise SourceError(
                f"no file matches {spec!r}; check the pattern and the bucket or folder",
                path=spec,
            )
        return [File(fs.unstrip_protocol(p), None, fs, p) for p in matches]
    if not fs.exists(root):
        raise SourceError(f"file {spec!r} not found; check the URL", path=spec)
    if fs.isdir(root):
        raise SourceError(
            f"{spec!r} is a folder; give a glob for its files, e.g. {spec.rstrip('/')}/*",
            path=spec,
        )
    return [File(spec, None, fs, root)]


def _resolve_local(spec: str) -> list[File]:
    path = os.path.expanduser(spec)
    if glob.has_magic(path):
        matches = sorted(p for p in glob.glob(path, recursive=True) if not os.path.isdir(p))
        if not matches:
            raise SourceError(
                f"no file matches {spec!r} (from {os.getcwd()}); check the pattern", path=spec
            )
        return [File(p, None) for p in matches]
    if os.path.isdir(path):
        raise SourceError(
            f"{spec!r} is a folder; give a glob for its files, e.g. {os.path.join(spec, '*')}",
            path=spec,
        )
    if not os.path.exists(path):
        raise SourceError(f"file {spec!r} not found (from {os.getcwd()})", path=spec)
    return [File(path, None)]


def _filesystem(url: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """fsspec's filesystem for ``url`` and the path inside it; a SourceError saying
    what to install when fsspec, or the package of the URL's protocol, is missing."""
    protocol = url.split("://", 1)[0].split("::")[0]
    try:
        import fsspec.core
    except ImportError:
        raise SourceError(
            f"reading {url!r} needs fsspec (local paths need nothing): {EXTRA}", path=url
        ) from None
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as exc:
        package = _package_of(protocol)
        hint = f"pip install {package}" if package and package != "fsspec" else str(exc)
        raise SourceError(
            f"reading {protocol}:// URLs such as {url!r} needs a package that is not "
            f"installed: {hint}",
            path=url,
        ) from None
    except ValueError as exc:  # "Protocol not known: foo"
        raise SourceError(f"cannot read {url!r}: {exc}", path=url) from None


def _package_of(protocol: str) -> str | None:
    from fsspec.registry import known_implementations

    spec = known_implementations.get(protocol)
    return spec["class"].split(".")[0] if spec else None


def check_encoding(encoding: str) -> None:
    """Only encodings in which a newline is the byte ``\\n`` can be split into lines
    before decoding (UTF-8, Latin-1, ASCII, cp1252...)."""
    try:
        newline = "\n".encode(encoding)
    except LookupError:
        raise SourceError(f"encoding={encoding!r} is not an encoding Python knows") from None
    if newline != b"\n":
        raise SourceError(
            f"encoding={encoding!r} is not supported: sources read line-based files in an "
            "ASCII-compatible encoding (utf-8, latin-1, cp1252...); convert the file to UTF-8"
        )
