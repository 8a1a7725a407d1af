"""SQLite connections for the run store: WAL, busy waits, retries, clear errors.

Every read and write goes through :func:`read` or :func:`write`, the one place
where SQLite's errors become :class:`StoreError` and where "database is locked"
is retried, so no caller ever sees it:

- WAL journal: readers never block the writer, and the writer never blocks readers.
- Writes open with ``BEGIN IMMEDIATE``: the write lock is taken up front, so two
  writers queue on ``busy_timeout`` instead of one failing while it upgrades a
  read lock (the deadlock SQLite resolves by returning SQLITE_BUSY at once).
- Whatever SQLITE_BUSY or SQLITE_LOCKED still gets through (a checkpoint, WAL
  recovery, a timeout under heavy contention) is retried with exponential backoff
  and jitter for up to :data:`RETRY_SECONDS`.
- :func:`checkpoint` copies the WAL into the database file (a finished run must not
  live only in the ``-wal`` file); :func:`damage` runs SQLite's own checks.
- A reader can open the store read-only (``mode=ro``), so a store in a folder it
  cannot write is still readable.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from conveyor.errors import StoreError
from conveyor.store._schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_HEADER_BYTES = 100
BUSY_TIMEOUT_MS = 5_000
RETRY_SECONDS = 60.0
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (low byte of extended codes too)
_FULL_CODES = (13, 10)  # SQLITE_FULL, SQLITE_IOERR


def connect(path: Path, *, create: bool, readonly: bool = False) -> sqlite3.Connection:
    """Open (or, with ``create``, create) the store at ``path``, migrated to the
    current schema. Raises StoreError for a missing store (``create=False``), a file
    that is not a conveyor store, a corrupt one, or one from a newer conveyor.

    ``readonly`` opens it with SQLite's ``mode=ro``: nothing can be written through
    the connection, and the store's folder need not be writable. A store whose schema
    is older is first migrated through a writing connection (which needs a writable
    folder, as any migration does)."""
    if path.exists():
        _check_header(path)
    elif not create or readonly:
        raise StoreError(
            f"no run store at {path}; runs are recorded there when a pipeline runs with a "
            "StoreRecorder, or pass --store PATH to read another one",
            path=path,
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    if readonly:
        conn = _connect_readonly(path)
        try:
            version = read(conn, lambda c: _user_version(c, path), path=path)
        except BaseException:
            conn.close()
            raise
        if version == SCHEMA_VERSION:
            return conn
        conn.close()  # older: migrate it through a writing connection, then read
        connect(path, create=False).close()
        return _connect_readonly(path)
    try:
        conn = sqlite3.connect(
            str(path),
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # autocommit: transactions are explicit (BEGIN IMMEDIATE)
            check_same_thread=False,  # RunStore serialises use with its own lock
        )
    except sqlite3.Error as exc:
        raise _translate(exc, path) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        retrying(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone(), path=path)
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    _header_read(path)  # a store now: never opened outside SQLite again (see below)
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write (``mode=ro``). SQLite reads a WAL database
    through its ``-wal`` and ``-shm`` files, and makes them if they are missing; in a
    folder it cannot write, with no ``-wal`` there (the last writer closed cleanly,
    so the database file holds everything), the file is read as it is
    (``immutable=1``: no locks, which only a writer in that folder could need)."""
    uri = path.resolve().as_uri()
    try:
        return _open_uri(f"{uri}?mode=ro")
    except sqlite3.Error as exc:
        if _wal_path(path).exists() or not _cannot_open(exc):
            raise _translate(exc, path) from exc
    try:
        return _open_uri(f"{uri}?mode=ro&immutable=1")
    except sqlite3.Error as exc:
        raise _translate(exc, path) from exc


def _open_uri(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        uri,
        uri=True,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the files
    except BaseException:
        conn.close()
        raise
    return conn


def _wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _cannot_open(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (14, 8)  # SQLITE_CANTOPEN, SQLITE_READONLY
    return "unable to open" in str(exc).lower()


def checkpoint(conn: sqlite3.Connection, path: Path) -> None:
    """Copy every transaction committed so far from the WAL into the database file,
    and sync it (``wal_checkpoint(FULL)``): from then on they survive the loss of the
    ``-wal`` file. A FULL checkpoint waits (SQLite's busy wait) for the writer of the
    moment and for readers of older snapshots; while it still cannot finish, it is
    tried again with backoff for up to :data:`RETRY_SECONDS`."""
    deadline = time.monotonic() + RETRY_SECONDS
    delay = 0.002
    while True:
        row = retrying(lambda: conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone(), path=path)
        if row is None or not row[0]:
            return
        if time.monotonic() >= deadline:
            raise StoreError(
                f"run store {path}: could not copy its write-ahead log into the database "
                f"file for {RETRY_SECONDS:.0f} s (another process keeps reading or writing "
                "it); the last runs are recorded in the -wal file only: keep that file "
                "with the store",
                path=path,
            )
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.25)


def make_room(conn: sqlite3.Connection, path: Path) -> None:
    """After a write failed for want of space: copy the WAL into the database file
    and rewind it (``wal_checkpoint(RESTART)``), so the next small write reuses the
    WAL's space instead of growing it. Best effort: errors are ignored."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()


def damage(conn: sqlite3.Connection, path: Path, *, full: bool = False) -> list[str]:
    """What SQLite's own check finds wrong, one line per problem ([] when sound).

    ``quick_check`` reads every page and checks each b-tree's structure; ``full``
    runs ``integrity_check``, which also checks that every index holds exactly the
    entries of its table. A database too damaged to be checked at all answers with
    the error it gives."""
    pragma = "integrity_check(1000)" if full else "quick_check(1000)"
    try:
        rows = retrying(lambda: conn.execute(f"PRAGMA {pragma}").fetchall(), path=path)
    except StoreError as exc:
        return [str(exc.__cause__ or exc)]
    found = [str(r[0]) for r in rows]
    return [] if found == ["ok"] else found


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` (a StoreError or an SQLite error) says the disk is full or a
    write to it failed (SQLITE_FULL, SQLITE_IOERR)."""
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    if not isinstance(cause, sqlite3.Error):
        return False
    code = getattr(cause, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _FULL_CODES
    text = str(cause).lower()
    return "disk is full" in text or "disk i/o error" in text


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; return the version it had."""

    def step(c: sqlite3.Connection) -> int:
        version = _user_version(c, path)
        for steps in MIGRATIONS[version:]:
            for sql in steps:
                c.execute(sql)
        if version < SCHEMA_VERSION:
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return version

    version = read(conn, lambda c: _user_version(c, path), path=path)
    if version == SCHEMA_VERSION:
        return version
    return write(conn, step, path=path)  # re-checked inside: another process may have won


def _user_version(c: sqlite3.Connection, path: Path) -> int:
    # One statement, so one snapshot: read apart, another process's migration could
    # commit between them, showing its tables but the version from before it.
    row = c.execute(
        "SELECT (SELECT user_version FROM pragma_user_version),"
        " (SELECT count(*) FROM sqlite_master)"
    ).fetchone()
    version, tables = int(row[0]), int(row[1])
    if version > SCHEMA_VERSION:
        from conveyor import __version__

        raise StoreError(
            f"run store {path} has schema version {version}, newer than this conveyor "
            f"{__version__} understands (schema version {SCHEMA_VERSION}); upgrade conveyor "
            "(pip install -U conveyor) or pass another --store path",
            path=path,
        )
    if version == 0 and tables:
        raise StoreError(
            f"{path} is an SQLite database but not a conveyor run store (it has "
            f"{tables} schema objects and no conveyor schema version); move it aside "
            "or pass another --store path",
            path=path,
        )
    return version


def read(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], *, path: Path) -> T:
    """Run ``fn(conn)`` (queries only), retrying while the database is busy."""
    return retrying(lambda: fn(conn), path=path)


def write(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], *, path: Path) -> T:
    """Run ``fn(conn)`` in one ``BEGIN IMMEDIATE`` transaction, committed when it returns,
    rolled back if it raises; the whole transaction is retried while the database is busy."""

    def attempt() -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    return retrying(attempt, path=path)


def retrying(fn: Callable[[], T], *, path: Path) -> T:
    """Call ``fn``; while it fails with SQLITE_BUSY or SQLITE_LOCKED, wait (exponential
    backoff with jitter) and call it again, for up to :data:`RETRY_SECONDS`. Every other
    SQLite error, and a busy database past the deadline, becomes a StoreError."""
    deadline = time.monotonic() + RETRY_SECONDS
    delay = 0.002
    while True:
        try:
            return fn()
        except sqlite3.Error as exc:
            if not (_is_busy(exc) and time.monotonic() < deadline):
                raise _translate(exc, path) from exc
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.25)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    text = str(exc).lower()
    return "locked" in text or "busy" in text


# Files whose header was read once in this process, by (device, inode). Reading it
# again would open and close the database file while a connection of this process
# holds SQLite's locks on it, and closing any descriptor of a file drops every POSIX
# lock the process holds on that file: another process closing its last connection
# would then take this process for gone and delete the WAL under it.
_HEADERS_READ: set[tuple[int, int]] = set()


def _check_header(path: Path) -> None:
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is not None and st.st_size and (st.st_dev, st.st_ino) in _HEADERS_READ:
        return
    try:
        with path.open("rb") as f:
            head = f.read(SQLITE_HEADER_BYTES)
    except OSError as exc:
        raise StoreError(
            f"cannot read the run store {path}: {exc.strerror}; check its permissions or "
            "pass another --store path",
            path=path,
        ) from exc
    if not head:
        return  # an empty file: SQLite makes a new database in it
    if len(head) < SQLITE_HEADER_BYTES or not head.startswith(SQLITE_MAGIC):
        raise _not_a_store(path)
    if st is not None:
        _HEADERS_READ.add((st.st_dev, st.st_ino))


def _header_read(path: Path) -> None:
    with contextlib.suppress(OSError):
        st = path.stat()
        _HEADERS_READ.add((st.st_dev, st.st_ino))


def _not_a_store(path: Path) -> StoreError:
    return StoreError(
        f"{path} is not a conveyor run store (file is not a database); move it aside or "
        "pass another --store path",
        path=path,
    )


def _translate(exc: sqlite3.Error, path: Path) -> StoreError:
    """One SQLite error as a StoreError that names the store and the fix."""
    text = str(exc)
    low = text.lower()
    if "not a database" in low:
        return _not_a_store(path)
    if "malformed" in low or "corrupt" in low:
        return StoreError(
            f"run store {path} is corrupt ({text}); move it aside (a new one is made on the "
            "next run) or pass another --store path",
            path=path,
        )
    if is_full(exc):
        return StoreError(
            f"cannot write the run store {path} ({text}): the disk is full or failing; "
            "free some space on it, or pass another --store path",
            path=path,
        )
    if _is_busy(exc):
        return StoreError(
            f"run store {path} stayed locked for {RETRY_SECONDS:.0f} s ({text}); another "
            "process holds a write transaction open: find it, or pass another --store path",
            path=path,
        )
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return StoreError(
            f"cannot write the run store {path} ({text}); check that its directory is "
            "writable, or pass another --store path",
            path=path,
        )
    return StoreError(f"run store {path}: {type(exc).__name__}: {text}", path=path)
