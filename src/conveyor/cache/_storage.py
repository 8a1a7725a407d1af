"""Where the cache's files live: a folder, or an fsspec URL that every node reaches.

One interface, :class:`Storage`, carries every byte the cache reads or writes (its
blobs, the stages' manifests, listing and clearing), whichever executor's workers
use it; :func:`open_storage` picks the implementation from the root it is given:

- a path: :class:`FolderStorage`. A write goes to a temporary file in the same
  folder, is fsync'ed, then renamed over the final name (atomic on POSIX).
- a URL (``file://``, ``memory://``, ``s3://``, ``gs://``...): :class:`UrlStorage`,
  through fsspec (the ``files`` extra; the protocol's own package, such as ``s3fs``,
  too). On a file system that renames (``file://``) a write goes to a temporary name,
  is fsync'ed and renamed over the final one, as in a folder; on object stores (and ``memory://``) the whole
  object is put at once, which they make atomic. Where neither holds (an FTP
  server, say) a reader may meet a torn blob: the blob's checksum catches it, so it
  costs a recompute, never a wrong value.

Names are relative, ``/``-separated (``blobs-v2/ab/ab12...``). A read of a missing
name returns None; any other failure is an :class:`OSError` (a backend's own errors
are translated here), which the engine turns into a miss or an uncached result.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from conveyor.errors import CacheError

__all__ = ["FolderStorage", "Storage", "UrlStorage", "is_url", "open_storage"]

TMP_PREFIX = ".tmp-"
_PROBE = b"conveyor cache probe\n"


def is_url(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` names a URL (``protocol://...``) rather than a path."""
    return isinstance(root, str) and "://" in root


def open_storage(root: str | os.PathLike[str], *, fsync: bool = True) -> Storage:
    """The storage at ``root``: a folder for a path, fsspec's file system for a URL.
    Raises :class:`CacheError` when a URL's protocol needs a package that is missing,
    is unknown, or its server cannot be reached."""
    if is_url(root):
        return UrlStorage(str(root), fsync=fsync)
    return FolderStorage(Path(root), fsync=fsync)


class Storage:
    """Files by relative name under a root (see the module docstring)."""

    root: Path | str  # a folder, or a URL

    def child(self, name: str) -> Storage:
        """The same storage rooted at ``name`` below this root."""
        raise NotImplementedError

    def locate(self, name: str) -> Path | str:
        """Where ``name`` is, for people: a path, or a URL."""
        raise NotImplementedError

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes | None:
        """The bytes of ``name`` (``[start:end]`` of them), or None if it is absent."""
        raise NotImplementedError

    def write(self, name: str, chunks: Sequence[bytes]) -> None:
        """Write ``name`` whole, atomically where the backend allows (module docstring)."""
        raise NotImplementedError

    def remove(self, name: str) -> bool:
        """Delete ``name``; False if there was none."""
        raise NotImplementedError

    def remove_tree(self, name: str) -> None:
        """Delete the folder ``name`` and everything under it, if it exists."""
        raise NotImplementedError

    def files(self) -> Iterator[tuple[str, int, float]]:
        """``(name, bytes, modified)`` of every file under the root, sorted by name
        (temporary files of writes in progress left out)."""
        raise NotImplementedError

    def probe(self) -> None:
        """Write and remove a small file under the root: raises the OSError a write
        would meet (not a folder, read-only, full, unreachable)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"


class FolderStorage(Storage):
    """Files in a folder of this machine (or a shared volume mounted on every node)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = self.folder = root
        self.fsync = fsync
        self._made: set[Path] = set()  # folders known to exist: mkdir is slow on some disks

    def child(self, name: str) -> FolderStorage:
        return FolderStorage(self.folder / name, fsync=self.fsync)

    def locate(self, name: str) -> Path:
        return self.folder / name

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes | None:
        try:
            with (self.folder / name).open("rb") as f:
                if start:
                    f.seek(start)
                return f.read() if end is None else f.read(max(0, end - start))
        except FileNotFoundError:
            return None

    def write(self, name: str, chunks: Sequence[bytes]) -> None:
        path = self.folder / name
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        tmp = self._write_tmp(path.parent, chunks)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_tmp(self, folder: Path, chunks: Sequence[bytes]) -> Path:
        """A temporary file in ``folder`` holding ``chunks``, synced unless fsync=False."""
        tmp = folder / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
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

    def remove(self, name: str) -> bool:
        try:
            (self.folder / name).unlink()
        except FileNotFoundError:
            return False
        return True

    def remove_tree(self, name: str) -> None:
        import shutil

        shutil.rmtree(self.folder / name, ignore_errors=True)

    def files(self) -> Iterator[tuple[str, int, float]]:
        if not self.folder.is_dir():
            return
        for folder, dirs, names in os.walk(self.folder):
            dirs.sort()
            base = Path(folder).relative_to(self.folder)
            for n in sorted(names):
                if n.startswith(TMP_PREFIX):
                    continue
                try:
                    st = os.stat(os.path.join(folder, n))
                except OSError:
                    continue  # removed while listing
                yield (base / n).as_posix(), st.st_size, st.st_mtime

    def probe(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_tmp(self.folder, (_PROBE,)).unlink()


class UrlStorage(Storage):
    """Files behind an fsspec URL: a bucket, a shared file system, memory."""

    def __init__(
        self, url: str, *, fsync: bool = True, _fs: Any = None, _path: str | None = None
    ) -> None:
        self.root = self.url = url.rstrip("/")
        if _fs is None:
            _fs, _path = _filesystem(self.url)
        assert _path is not None
        self.fs = _fs
        self.fsync = fsync
        self.path = _path.rstrip("/")
        protocol = _fs.protocol if isinstance(_fs.protocol, str) else _fs.protocol[0]
        # A local file system renames atomically; object stores put whole objects.
        self._renames = protocol in ("file", "local")

    def child(self, name: str) -> UrlStorage:
        return UrlStorage(
            f"{self.url}/{name}", fsync=self.fsync, _fs=self.fs, _path=f"{self.path}/{name}"
        )

    def locate(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _full(self, name: str) -> str:
        return f"{self.path}/{name}"

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes | None:
        try:
            with _as_oserror(self.url):
                data: bytes = self.fs.cat_file(self._full(name), start=start or None, end=end)
        except FileNotFoundError:
            return None
        return data

    def write(self, name: str, chunks: Sequence[bytes]) -> None:
        data = b"".join(chunks)
        path = self._full(name)
        with _as_oserror(self.url):
            if not self._renames:
                self.fs.pipe_file(path, data)  # one put of the whole object: atomic
                return
            folder = path.rsplit("/", 1)[0]
            tmp = f"{folder}/{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            self.fs.makedirs(folder, exist_ok=True)
            try:
                with self.fs.open(tmp, "wb") as f:  # synced as a folder's blob is
                    f.write(data)
                    if self.fsync:
                        f.flush()
                        os.fsync(f.fileno())
                self.fs.mv(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.fs.rm_file(tmp)
                raise

    def remove(self, name: str) -> bool:
        try:
            with _as_oserror(self.url):
                self.fs.rm_file(self._full(name))
        except FileNotFoundError:
            return False
        return True

    def remove_tree(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError), _as_oserror(self.url):
            if self.fs.exists(self._full(name)):
                self.fs.rm(self._full(name), recursive=True)

    def files(self) -> Iterator[tuple[str, int, float]]:
        with _as_oserror(self.url):
            try:
                found = self.fs.find(self.path, detail=True)
            except FileNotFoundError:
                return
        prefix = self.fs._strip_protocol(self.path).rstrip("/") + "/"
        for full in sorted(found):
            info = found[full]
            name = full[len(prefix) :] if full.startswith(prefix) else full.rsplit("/", 1)[-1]
            if name.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                continue
            yield name, int(info.get("size") or 0), _mtime(info)

    def probe(self) -> None:
        name = f"{TMP_PREFIX}probe-{os.getpid()}-{secrets.token_hex(4)}"
        with _as_oserror(self.url):
            self.fs.makedirs(self.path, exist_ok=True)
            self.fs.pipe_file(self._full(name), _PROBE)
            self.fs.rm_file(self._full(name))


@contextlib.contextmanager
def _as_oserror(url: str) -> Iterator[None]:
    """A backend's own errors (a cloud SDK's, say) as OSError, which the engine handles."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        raise OSError(f"{url}: {type(exc).__name__}: {exc}") from exc


def _mtime(info: dict[str, Any]) -> float:
    """A listing entry's modification time, however the backend names it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        stamp = getattr(value, "timestamp", None)
        if callable(stamp):
            return float(stamp())
        if isinstance(value, str):
            import datetime

            with contextlib.suppress(ValueError):
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def _filesystem(url: str) -> tuple[Any, str]:
    """fsspec's file system for ``url`` and the path inside it, or a CacheError naming
    what to install, or why the URL cannot be used."""
    protocol = url.split("://", 1)[0].split("::")[0]
    try:
        import fsspec.core
    except ImportError:
        raise CacheError(
            f"a cache at a URL ({url!r}) needs fsspec: pip install 'conveyor[files]' "
            "(a cache in a folder needs nothing)",
            path=url,
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        from fsspec.registry import known_implementations

        spec = known_implementations.get(protocol)
        package = spec["class"].split(".")[0] if spec else None
        hint = f"pip install {package}" if package and package != "fsspec" else str(exc)
        raise CacheError(
            f"a cache at {protocol}:// URLs such as {url!r} needs a package that is not "
            f"installed: {hint}",
            path=url,
        ) from None
    except ValueError as exc:  # "Protocol not known: foo"
        raise CacheError(
            f"cannot use the cache URL {url!r}: {exc}; give a folder, or a URL fsspec "
            "knows (file://, s3://, gs://, az://...)",
            path=url,
        ) from None
    except Exception as exc:  # a server that refuses the connection, a bad host name
        raise CacheError(
            f"cannot reach the cache at {url!r} ({type(exc).__name__}: {exc}); check the "
            "address and that this machine can reach it",
            path=url,
        ) from None
    return fs, path
