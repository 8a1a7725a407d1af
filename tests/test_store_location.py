"""Where the run store is found: ``$CONVEYOR_STORE``, else the nearest ``.conveyor/``
upwards from the current folder (as git finds its repository), else ``./.conveyor``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from conveyor.store import RunStore, StoreRecorder, default_store_path


def _has_conveyor_above(folder: Path) -> bool:
    return any((p / ".conveyor").is_dir() for p in (folder, *folder.parents))


def test_the_store_is_found_in_the_nearest_conveyor_folder_upwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVEYOR_STORE")
    project = tmp_path / "project"
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    if _has_conveyor_above(tmp_path):
        pytest.skip("a folder above the test's has a .conveyor/ of its own")
    # no .conveyor/ anywhere: the current folder's, made by the first run
    assert default_store_path(deep) == deep / ".conveyor" / "runs.db"

    monkeypatch.chdir(project)
    pipe = cv.Pipeline("here", [cv.stage(f.inc)], source=range(3))
    with RunStore() as store:  # no path: ./.conveyor/runs.db of the project
        pipe.run(instruments=[StoreRecorder(store, pipeline=pipe)])
        (recorded,) = store.runs()
    assert (project / ".conveyor" / "runs.db").is_file()
    assert default_store_path(deep) == project / ".conveyor" / "runs.db"

    # `conveyor runs` from a sub-folder sees the project's runs
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_STORE"}
    out = subprocess.run(
        [sys.executable, "-m", "conveyor", "runs"],
        cwd=deep,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert recorded.id in out.stdout

    # a nearer .conveyor/ wins; $CONVEYOR_STORE wins over both
    (deep / ".conveyor").mkdir()
    assert default_store_path(deep) == deep / ".conveyor" / "runs.db"
    monkeypatch.setenv("CONVEYOR_STORE", str(tmp_path / "elsewhere.db"))
    assert default_store_path(deep) == tmp_path / "elsewhere.db"


def test_the_cache_is_found_where_the_store_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.cache import StageCache, default_cache_root

    monkeypatch.delenv("CONVEYOR_CACHE")
    project = tmp_path / "project"
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    if _has_conveyor_above(tmp_path):
        pytest.skip("a folder above the test's has a .conveyor/ of its own")
    assert default_cache_root(deep) == deep / ".conveyor" / "cache"
    (project / ".conveyor").mkdir()
    assert default_cache_root(deep) == project / ".conveyor" / "cache"

    # a cached stage run from a sub-folder fills the project's cache, and a run from
    # the project's top answers from it
    monkeypatch.chdir(deep)
    pipe = cv.Pipeline("cached", [cv.stage(f.inc, cache=True)])
    assert sorted(pipe.run(range(5)).results or []) == [1, 2, 3, 4, 5]
    monkeypatch.chdir(project)
    assert StageCache().root == project / ".conveyor" / "cache"
    assert any((project / ".conveyor" / "cache").rglob("*"))  # the entries are there
    again = pipe.run(range(5))
    assert again.statistics().stages["inc"].cache_hits == 5

    monkeypatch.setenv("CONVEYOR_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_root(deep) == tmp_path / "elsewhere"
