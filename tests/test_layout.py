"""The tree's layering, checked from source: the CLI uses public names only, and the
CLI's and the store's modules stay small."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "conveyor"

# What the CLI may import: the public packages (names from their __all__) and itself.
# conveyor.train.cli is the train extra's click command, made for this group to register.
PUBLIC = (
    "conveyor",
    "conveyor.errors",
    "conveyor.observe",
    "conveyor.analysis",
    "conveyor.store",
    "conveyor.cache",
    "conveyor.train",
)
REGISTERED = ("conveyor.train.cli",)
MAX_LINES = 500


def _resolve(module: str | None, level: int, here: str) -> str:
    """The absolute name of a (possibly relative) import in module ``here`` (a
    package's ``__init__`` is named ``pkg.__init__``)."""
    if not level:
        return module or ""
    base = here.split(".")[:-level]
    return ".".join([*base, module] if module else base)


def _public_names(module: str) -> set[str]:
    names = set(getattr(importlib.import_module(module), "__all__", ()))
    return names | {"__version__"} if module == "conveyor" else names


def import_violations(source: str, here: str) -> list[str]:
    """Every import in ``source`` (module ``here``) that breaks the CLI's rule."""
    found = []
    tree = ast.parse(source)
    bare_conveyor = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name == "conveyor":
                    bare_conveyor = alias.asname in (None, "conveyor")
                elif name.startswith("conveyor.") and not _allowed_module(name):
                    found.append(f"line {node.lineno}: import {name}")
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node.module, node.level, here)
            if module != "conveyor" and not module.startswith("conveyor."):
                continue
            if not _allowed_module(module):
                found.append(f"line {node.lineno}: from {module} import ...")
            elif module in PUBLIC:
                public = _public_names(module)
                for alias in node.names:
                    if alias.name not in public:
                        found.append(
                            f"line {node.lineno}: from {module} import {alias.name} "
                            f"(not in {module}.__all__)"
                        )
    if bare_conveyor:
        public = _public_names("conveyor")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "conveyor"
                and node.attr not in public
            ):
                found.append(f"line {node.lineno}: conveyor.{node.attr} (not in conveyor.__all__)")
    return found


def _allowed_module(name: str) -> bool:
    return (
        name in PUBLIC
        or name in REGISTERED
        or name == "conveyor.cli"
        or (name.startswith("conveyor.cli.") and not name.split(".")[-1].startswith("_"))
    )


def cli_modules() -> list[Path]:
    return sorted((SRC / "cli").glob("*.py"))


@pytest.mark.parametrize("path", cli_modules(), ids=lambda p: p.name)
def test_the_cli_imports_only_public_names(path: Path) -> None:
    here = f"conveyor.cli.{path.stem}" if path.stem != "__init__" else "conveyor.cli.__init__"
    assert import_violations(path.read_text(), here) == []


@pytest.mark.parametrize(
    ("line", "caught"),
    [
        ("from conveyor.core.run import Run", True),
        ("from conveyor.core import events", True),
        ("import conveyor.executors.processes.pool", True),
        ("from conveyor.executors import make_executor", True),
        ("from conveyor.store._db import connect", True),
        ("from conveyor.store import _db", True),
        ("from conveyor.observe.progress import Progress", True),
        ("from conveyor import Scheduler", True),
        ("from ..store import _store", True),
        ("import conveyor\nx = conveyor.core.run", True),
        ("from conveyor.store import RunStore", False),
        ("from conveyor import Run, Recorder, __version__", False),
        ("from conveyor.cli.signals import SignalGuard", False),
        ("from .target import load_pipeline", False),
        ("import conveyor\nx = conveyor.Run", False),
    ],
)
def test_the_import_check_catches_private_imports(line: str, caught: bool) -> None:
    assert bool(import_violations(line, "conveyor.cli.run")) is caught


@pytest.mark.parametrize(
    "path",
    sorted((SRC / "cli").glob("*.py")) + sorted((SRC / "store").glob("*.py")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_cli_and_store_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines; split it by concept"


def test_the_store_recorder_module_does_not_clash_with_the_engine_recorder() -> None:
    assert not (SRC / "store" / "_recorder.py").exists()
    from conveyor.store import StoreRecorder

    assert StoreRecorder.__module__ == "conveyor.store._history"


def test_the_console_script_is_the_cli_main() -> None:
    from conveyor.cli import main

    scripts = importlib.metadata.entry_points(group="console_scripts")
    (entry,) = [e for e in scripts if e.name == "conveyor"]
    assert entry.value == "conveyor.cli:main" and entry.load() is main
