"""A cache folder that cannot be used is one clear error when the run starts (or, if
the stage says so, no cache and a warning), never a dead worker or a run that waits;
a disk that fills up during the run costs the cache, never an item."""

from __future__ import annotations

import errno
import functools
import os
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
import stagefns as f
from conveyor.cache import CacheError, CacheWarning, StageCache
from conveyor.cache._storage import FolderStorage


def _pipe(executor: str, cache: Any = True, **options: Any) -> cv.Pipeline:
    return cv.Pipeline("loc", [cv.stage(f.square, executor=executor, cache=cache, **options)])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("via", ["variable", "option"])
def test_a_cache_path_that_is_a_file_fails_the_run_at_start(
    executor: str, via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "cache"
    file.write_text("not a folder")
    if via == "variable":
        monkeypatch.setenv("CONVEYOR_CACHE", str(file))
        pipe, fix = _pipe(executor), r"point \$CONVEYOR_CACHE at a writable folder"
    else:
        pipe, fix = _pipe(executor, cache=str(file)), r"point the stage's cache= at"
    started = time.monotonic()
    with pytest.raises(
        CacheError,
        match=rf"stage 'square': cannot use the cache folder {file}: it is a file, not a folder; {fix}",
    ) as info:
        pipe.run(range(20))
    assert time.monotonic() - started < 30  # at start, not after the workers gave up
    assert info.value.stage == "square" and info.value.path == str(file)
    assert "cache_required=False" in str(info.value)
    assert file.read_text() == "not a folder"


def test_a_file_inside_the_path_is_the_same_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(CacheError, match="it is a file, not a folder"):
        _pipe("threads", cache=str(tmp_path / "plain" / "cache")).run(range(3))


def test_cache_required_false_runs_uncached_with_one_warning(executor: str, tmp_path: Path) -> None:
    file = tmp_path / "cache"
    file.write_text("x")
    pipe = _pipe(executor, cache=str(file), cache_required=False)
    with pytest.warns(CacheWarning, match="it is a file, not a folder; .*runs uncached") as record:
        out = pipe.run(range(10), ordered=True)
    assert out.results == [x * x for x in range(10)]
    assert out.statistics().stages["square"].cache_hits == 0
    assert len(record) == 1


def _failing_writes(monkeypatch: pytest.MonkeyPatch, code: int, *, after: int = 0) -> list[int]:
    """Make every write of a blob or probe fail with ``code`` once ``after`` have
    succeeded: what a full disk or a read-only mount does. Returns the calls made."""
    real = FolderStorage._write_tmp
    made: list[int] = []

    def write(self: FolderStorage, folder: Path, chunks: tuple[bytes, ...]) -> Path:
        made.append(1)
        if len(made) > after:
            raise OSError(code, os.strerror(code))
        return real(self, folder, chunks)

    monkeypatch.setattr(FolderStorage, "_write_tmp", write)
    return made


@pytest.mark.parametrize(
    ("code", "why"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EROFS, r"it cannot be written \(Read-only file system\)"),
        (errno.EACCES, r"it cannot be written \(Permission denied\)"),
    ],
)
def test_a_full_or_read_only_cache_fails_the_run_at_start(
    code: int, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, whom chmod does not stop: the OSError is injected where
    # the cache writes, in the driver's check at run start.
    _failing_writes(monkeypatch, code)
    log = tmp_path / "log"
    pipe = cv.Pipeline(
        "loc", [cv.stage(functools.partial(f.logged_square, str(log)), name="sq", cache=True)]
    )
    with pytest.raises(CacheError, match=f"cannot use the cache folder .*: {why}"):
        pipe.run(range(5))
    assert f.calls(str(log)) == []  # nothing ran


def test_a_disk_that_fills_during_the_run_warns_once_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _failing_writes(monkeypatch, errno.ENOSPC, after=1)  # the start check passes
    pipe = cv.Pipeline("loc", [cv.stage(f.square, executor="threads", workers=2, cache=True)])
    with pytest.warns(
        CacheWarning,
        match=r"writing the cache failed \(No space left on device\), so results are computed but not cached",
    ) as record:
        out = pipe.run(range(50), ordered=True)
    assert out.results == [x * x for x in range(50)]
    assert len(made) == 52  # the check, the stage's manifest, then one try per result
    assert len(record) == 1
    assert StageCache().entries() == []


def test_a_cache_folder_that_becomes_a_file_mid_run_costs_only_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    pipe = cv.Pipeline("loc", [cv.stage(f.square, executor="sync", cache=str(root))])
    pipe.run(range(3))

    real_get = StageCache.get

    def get(self: StageCache, key: str) -> tuple[bool, Any]:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))

    monkeypatch.setattr(StageCache, "get", get)
    with pytest.warns(CacheWarning, match=r"reading the cache failed \(Not a directory\)"):
        out = pipe.run(range(3), ordered=True)
    assert out.results == [0, 1, 4]
    monkeypatch.setattr(StageCache, "get", real_get)
