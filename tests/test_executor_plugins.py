"""Executors as plug-ins: found through entry points, known to the engine by traits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from conveyor.executors import base
from conveyor.executors.base import executor_class, executor_names, executor_traits


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A registry that looks for entry points again, restored afterwards."""
    monkeypatch.setattr(base, "_registry", dict(base._registry))
    monkeypatch.setattr(base, "_discovered", False)
    return base._registry


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    """A package on sys.path that declares ``entry`` in the conveyor.executors group."""
    (tmp_path / "cvplugin.py").write_text(
        "from conveyor.executors.sync import SyncExecutor\n"
        "class Echo(SyncExecutor):\n"
        "    pass\n"
        "NotAnExecutor = object\n"
    )
    info = tmp_path / "cvplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cvplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[conveyor.executors]\n{entry}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cvplugin", raising=False)


def test_an_installed_package_adds_an_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: dict
) -> None:
    install_plugin(tmp_path, monkeypatch, "echo = cvplugin:Echo")
    assert "echo" in executor_names()
    assert executor_class("echo").__name__ == "Echo"
    run = cv.Pipeline("plugin", [cv.stage(f.inc, executor="echo")]).run(range(5))
    assert sorted(run.results) == [1, 2, 3, 4, 5]


def test_conveyors_own_executors_are_entry_points_too() -> None:
    from importlib import metadata

    declared = {ep.name for ep in metadata.entry_points(group="conveyor.executors")}
    assert {"sync", "threads", "processes", "ray"} <= declared


def test_a_broken_plugin_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: dict
) -> None:
    install_plugin(tmp_path, monkeypatch, "wrong = cvplugin:NotAnExecutor")
    with pytest.raises(TypeError, match=r"executor 'wrong' is .* not a subclass of Executor"):
        executor_class("wrong")


def test_register_wins_over_an_entry_point_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: dict
) -> None:
    from conveyor.executors.threads import ThreadExecutor

    install_plugin(tmp_path, monkeypatch, "echo = cvplugin:Echo")
    base.register("echo", ThreadExecutor)
    assert executor_class("echo") is ThreadExecutor


def test_the_engine_knows_executors_by_their_traits() -> None:
    assert executor_traits("sync").runs_in_caller  # type: ignore[union-attr]
    assert executor_traits("processes").host_cores  # type: ignore[union-attr]
    ray = executor_traits("ray")
    assert ray is not None and not ray.shares_memory and not ray.host_cores
    assert executor_traits("gone") is None  # a recorded run of an executor not installed


def test_engine_modules_never_compare_executor_names() -> None:
    src = Path(cv.__file__).parent
    names = ('"sync"', '"threads"', '"processes"', '"ray"')
    for package in ("core", "analysis", "observe"):
        for path in (src / package).rglob("*.py"):
            for line in path.read_text().splitlines():
                if "executor" in line and "==" in line:
                    assert not any(n in line for n in names), f"{path.name}: {line.strip()}"
