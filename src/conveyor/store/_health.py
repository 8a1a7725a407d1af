"""The run store looks after itself: who has it open for writing, a check after a
writer ended uncleanly, and a watch on its write-ahead log.

**Writer marks.** A process that opens the store for writing leaves an empty file
in ``<store>-writers/`` named after its host, process id and process start time,
and removes it when it closes the store (or exits). A mark of this host whose
process is gone is a writer that ended without closing: killed, crashed, or the
machine lost power. SQLite's write-ahead log is built to survive exactly that, so
the next writer to open the store runs ``PRAGMA quick_check`` (every page read once)
to confirm it, and only then clears the stale marks; a store that fails is refused
with what the check found. A clean history costs one small file per open, never a
read of the whole store. Marks of other hosts (a store on a shared folder) are left
for their own host to judge.

**The WAL watch.** While a connection is open SQLite keeps its ``-wal`` and ``-shm``
files (the same files, whatever checkpoints do). If they are deleted or replaced
behind its back (a cleanup script, a restore), later writes go to a log that no
other process reads and are lost, or checkpointed over another process's writes
(index entries of one history over table rows of another). So a writer notes the
files' identity when it opens the store and compares before every write, refusing
to write once they changed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import weakref
from collections.abc import Callable
from pathlib import Path

from conveyor.errors import StoreError

_SEP = "~"
_numbers = itertools.count()


def marks_folder(path: Path) -> Path:
    return path.with_name(path.name + "-writers")


def mark_writer(path: Path) -> Path:
    """Leave this process's mark beside the store; the mark's path."""
    folder = marks_folder(path)
    pid = os.getpid()
    name = _SEP.join((_host(), str(pid), _started(pid) or "-", str(next(_numbers))))
    mark = folder / name
    try:
        folder.mkdir(exist_ok=True)
        mark.touch()
        _sync_folder(folder)
    except OSError as exc:
        raise StoreError(
            f"cannot write beside the run store {path} ({exc.strerror}: {exc.filename}); "
            "check that its folder is writable, or pass another --store path",
            path=path,
        ) from exc
    return mark


def release_on_exit(owner: object, mark: Path) -> Callable[[], None]:
    """Remove ``mark`` when ``owner`` is collected or the interpreter exits; call the
    result to remove it now."""
    return weakref.finalize(owner, _remove, mark)


def stale_marks(path: Path) -> list[Path]:
    """Marks of writers of this host whose process is gone."""
    folder = marks_folder(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    host = _host()
    stale = []
    for name in names:
        parts = name.rsplit(_SEP, 3)
        if len(parts) != 4 or parts[0] != host or not parts[1].isdigit():
            continue
        started = None if parts[2] == "-" else parts[2]
        if not _alive(int(parts[1]), started):
            stale.append(folder / name)
    return stale


def clear(marks: list[Path]) -> None:
    for mark in marks:
        _remove(mark)


def _remove(mark: Path) -> None:
    with contextlib.suppress(OSError):
        mark.unlink()


def _host() -> str:
    return socket.gethostname().replace(_SEP, "-").replace(os.sep, "-") or "localhost"


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), which tells a
    process from a later one given the same id; None where /proc is not there, or
    for a zombie (it has ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] == "Z" or len(fields) < 20:
        return None
    return fields[19]  # field 22 of stat: starttime


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if os.path.exists("/proc/self/stat"):
        now = _started(pid)
        return now is not None and (started is None or now == started)
    return True


def _sync_folder(folder: Path) -> None:
    """Make the mark's directory entry durable (a power cut must not lose it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder
    finally:
        os.close(fd)


# --- the WAL watch -------------------------------------------------------------------


def log_identity(path: Path) -> tuple[tuple[int, int] | None, ...]:
    """(device, inode) of the store's ``-wal`` and ``-shm`` files (None: absent)."""
    found: list[tuple[int, int] | None] = []
    for suffix in ("-wal", "-shm"):
        try:
            st = os.stat(path.with_name(path.name + suffix))
        except OSError:
            found.append(None)
        else:
            found.append((st.st_dev, st.st_ino))
    return tuple(found)


def check_log(path: Path, opened: tuple[tuple[int, int] | None, ...]) -> None:
    """StoreError if the ``-wal`` or ``-shm`` file this connection opened with was
    deleted or replaced since."""
    now = log_identity(path)
    if now == opened:
        return
    changed = [
        suffix
        for suffix, before, after in zip(("-wal", "-shm"), opened, now, strict=True)
        if before != after
    ]
    raise StoreError(
        f"the run store's {' and '.join(path.name + s for s in changed)} "
        f"{'was' if len(changed) == 1 else 'were'} deleted or replaced while this process "
        f"had {path} open, so its later writes would be lost or land over another "
        "process's; nothing more is written: stop every process using the store, then "
        f"run conveyor store check --store {path}",
        path=path,
    )
