"""The tree's layering, checked from source: the core stands on the standard library
and the executor contract alone; executors know nothing of the core; no module
imports another in a cycle; the CLI uses public names only; every module stays small."""

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
    "conveyor.sources",
    "conveyor.train",
    "conveyor.dashboard",
    "conveyor.models",
    "conveyor.serve",
    "conveyor.lifecycle",
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


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_every_module_stays_small(path: Path) -> None:
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


# --- the layers -------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, lazy: bool) -> set[str]:
    """The modules ``path`` imports when it is loaded (``lazy``: inside functions too),
    leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    here = module_name(path) + (".__init__" if path.stem == "__init__" else "")
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if lazy or isinstance(node, ast.ClassDef):
                    visit(node.body)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                module = _resolve(node.module, node.level, here)
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    visit(
                        [n for n in inner if isinstance(n, ast.stmt)]
                        + [s for h in inner if isinstance(h, ast.ExceptHandler) for s in h.body]
                    )

    visit(tree.body)
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    # "from conveyor.core import failures" names a module; "from x import name" does not.
    return {m for m in found if not m.startswith("conveyor") or m in modules}


def modules_of(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if not n.startswith("conveyor") and n.split(".")[0] not in _STDLIB}


_STDLIB = set(__import__("sys").stdlib_module_names)


@pytest.mark.parametrize("path", modules_of("core"), ids=lambda p: p.name)
def test_the_core_stands_on_the_standard_library_and_the_executor_contract(path: Path) -> None:
    loaded = imports(path, lazy=False)
    conveyor = {n for n in loaded if n.startswith("conveyor")}
    allowed = {"conveyor.errors", "conveyor.executors.base"}
    assert {n for n in conveyor if not n.startswith("conveyor.core") and n not in allowed} == set()
    assert third_party(loaded) == set()
    # Lazily, only where the core offers a convenience from above (the default
    # recorder, run.report(), the cache of a cached stage): never an optional dependency.
    assert third_party(imports(path, lazy=True)) == set()


@pytest.mark.parametrize("path", modules_of("executors"), ids=lambda p: p.name)
def test_executors_know_nothing_of_the_core(path: Path) -> None:
    loaded = imports(path, lazy=False)
    assert {n for n in loaded if n.startswith("conveyor.core")} == set()
    assert third_party(loaded) == set()


SOURCE_EXTRAS = {"fsspec", "pyarrow", "zstandard"}  # the files extra


@pytest.mark.parametrize("path", modules_of("sources"), ids=lambda p: p.name)
def test_sources_stand_on_the_standard_library_and_errors(path: Path) -> None:
    loaded = imports(path, lazy=False)
    conveyor = {n for n in loaded if n.startswith("conveyor")}
    assert {n for n in conveyor if not n.startswith("conveyor.sources")} <= {"conveyor.errors"}
    assert third_party(loaded) == set()
    # the files extra only inside the call that needs it
    assert {n.split(".")[0] for n in third_party(imports(path, lazy=True))} <= SOURCE_EXTRAS


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` (module -> the modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return [*path[path.index(d) :], d]
            if d not in state and (cycle := visit(d)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_cycle_check_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_another_in_a_cycle() -> None:
    graph = {module_name(p): imports(p, lazy=False) for p in SRC.rglob("*.py")}
    for name, deps in graph.items():
        # A submodule loads while its packages' __init__ is still running: no edge up.
        graph[name] = {d for d in deps if d in graph and not (name + ".").startswith(d + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_import_conveyor_loads_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, conveyor, conveyor.errors, conveyor.executors, conveyor.sources; "
        "print(sorted(m for m in ('click', 'rich', 'numpy', 'prometheus_client', 'torch', "
        "'fsspec', 'pyarrow', 'zstandard') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
