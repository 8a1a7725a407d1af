"""Fingerprints of code: what a function computes with, followed transitively.

A function counts by its source text and its bytecode, its defaults, the values its
closure holds, and every global it reads. A global is followed by what it is:

- a function or class of the user's code (anything outside the standard library,
  site-packages and conveyor): followed the same way, a class with its bases, its
  methods (each followed) and its class attributes;
- an instance: its class (followed) and its state (see ``_values``);
- a module: named, and each attribute the code reads through it (``settings.FACTOR``,
  ``cfg.paths.ROOT``, ``from settings import FACTOR`` inside the function) is
  followed as a global of its own;
- a library's function, class or module: named with the library's ``__version__``,
  not read (a library's values read through a module, like ``math.pi``, count when
  they are plain scalars).

What the code reaches only by name at run time (``getattr(settings, name)``, a file
it opens) is invisible here; such names are collected in ``named`` so that an audit
can say what the fingerprint did not follow.
"""

from __future__ import annotations

import dis
import functools
import importlib
import importlib.util
import inspect
import os
import site
import sys
import sysconfig
import textwrap
import types
from collections.abc import Callable
from typing import Any, NamedTuple

from conveyor.cache._values import _SIMPLE, Refused, Values, qualified

_MEMO_LIMIT = 4096
_sources: dict[int, tuple[Any, str | None]] = {}  # id -> (object kept alive, source)
_scans: dict[int, tuple[types.CodeType, _Refs]] = {}
# Builtins through which code reaches what no fingerprint sees: named for the audit.
_OPAQUE_BUILTINS = frozenset(
    {"open", "input", "getattr", "globals", "vars", "eval", "exec", "__import__", "id", "hash"}
)
_MISSING: Any = object()


class _Refs(NamedTuple):
    """What one code object (and the code nested in it) reads by name."""

    names: tuple[str, ...]  # globals (LOAD_GLOBAL/LOAD_NAME), sorted
    chains: tuple[tuple[str, tuple[str, ...]], ...]  # global.attr.attr... read
    cell_chains: tuple[tuple[str, tuple[str, ...]], ...]  # closure cell.attr... read
    imported: tuple[tuple[str, int, tuple[str, ...]], ...]  # module (level) .attr... read


class Code(Values):
    """Encodes values and code. ``strict``: a value that cannot be fingerprinted
    raises :class:`Refused` (its ``where`` names the variable); otherwise it counts
    by its type alone and is listed in ``refused``."""

    def __init__(
        self,
        feed: Callable[[bytes], object],
        *,
        strict: bool = True,
        memo: dict[int, tuple[type, bytes]] | None = None,
    ) -> None:
        super().__init__(feed)
        self.strict = strict
        self.seen: dict[int, int] = {}  # functions walked: a back-reference
        self.keep: list[Any] = []  # ...kept alive, so that their ids stay theirs
        self.named: set[str] = set()
        self.refused: list[str] = []
        # The digests of the user's classes met so far (a class is walked once per
        # memo: give one memo to the fingerprints of one task's inputs), and the
        # classes whose digest is being made (a class that refers back to one).
        self.memo: dict[int, tuple[type, bytes]] = {} if memo is None else memo
        self.building: set[int] = set()

    def reference(self, value: Any, where: str) -> None:
        """``value``, read by the code as ``where`` (a global, a closure cell...)."""
        if self.strict:
            try:
                self.value(value)
            except Refused as exc:
                if exc.where is None:
                    exc.where = where
                raise
            return
        scratch = _Scratch()
        feed, self.feed = self.feed, scratch.update
        try:
            self.value(value)
        except Refused as exc:
            self.feed = feed
            self.frame(b"X", qualified(type(value)).encode())
            self.refused.append(f"{where}: {exc.what}")
            return
        finally:
            self.feed = feed
        self.frame(b"V", scratch.digest())

    def digest(self, obj: Any) -> bytes:
        # An element of a set is encoded on its own, whatever the (salted) order of
        # the set made the walker meet before it.
        seen, keep = self.seen, self.keep
        self.seen, self.keep = dict(seen), list(keep)
        try:
            return super().digest(obj)
        finally:
            self.seen, self.keep = seen, keep

    def _seen(self, obj: Any) -> bool:
        index = self.seen.get(id(obj))
        if index is not None:
            self.frame(b"@", b"%d" % index)  # recursion: already included
            return True
        self.seen[id(obj)] = len(self.seen)
        self.keep.append(obj)
        return False

    # --- code -------------------------------------------------------------------------

    def code(self, obj: Any) -> None:
        if isinstance(obj, types.FunctionType):
            self.function(obj)
        elif isinstance(obj, type):
            self.klass(obj)
        elif isinstance(obj, types.ModuleType):
            self.frame(b"M", obj.__name__.encode())
        elif isinstance(obj, types.MethodType):
            self.frame(b"m", b"")
            self.value(obj.__func__)
            self.value(obj.__self__)
        elif isinstance(obj, staticmethod | classmethod):
            self.frame(b"w", type(obj).__name__.encode())
            self.value(obj.__func__)
        elif isinstance(obj, property):
            self.frame(b"P", b"")
            for accessor in (obj.fget, obj.fset, obj.fdel):
                self.value(accessor)
        elif isinstance(obj, types.CodeType):
            self.bytecode(obj)
        else:  # builtins: functions, method descriptors, bound builtin methods
            owner = getattr(obj, "__objclass__", None) or getattr(obj, "__self__", None)
            module = getattr(obj, "__module__", None) or getattr(owner, "__module__", "")
            self.frame(b"n", f"{module}.{getattr(obj, '__qualname__', '?')}".encode())
            bound = getattr(obj, "__self__", None)
            if bound is not None and not isinstance(bound, types.ModuleType | type):
                self.value(bound)  # e.g. TABLE.get: the dict it reads

    def function(self, fn: types.FunctionType) -> None:
        if self._seen(fn):
            return
        if _library(fn.__module__):
            name = f"{fn.__module__}.{fn.__qualname__}"
            self.frame(b"n", f"{name}{_version(fn.__module__)}".encode())
            return
        label = fn.__qualname__
        self.frame(b"f", label.encode())
        self.frame(b"S", (_source(fn.__code__) or "").encode())
        self.bytecode(fn.__code__)
        self.reference(fn.__defaults__, f"the defaults of {label}")
        self.reference(fn.__kwdefaults__, f"the keyword defaults of {label}")
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            self.frame(b"v", name.encode())
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell: a name bound later
                self.frame(b"e", b"")
                continue
            self.reference(content, f"{name!r}, which {label} closes over")
        refs = _scan(fn.__code__)
        scope = fn.__globals__
        for name in refs.names:
            if name in scope:
                self.frame(b"g", name.encode())
                self.reference(scope[name], f"the global {name!r}, which {label} reads")
                self._note_library(scope[name])
            elif name in _OPAQUE_BUILTINS:
                self.named.add(f"builtins.{name}")
        for root, attrs in refs.chains:
            if isinstance(scope.get(root), types.ModuleType):
                self.attributes(scope[root], root, attrs, label)
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True))
        for root, attrs in refs.cell_chains:
            try:
                content = cells[root].cell_contents
            except (KeyError, ValueError):  # a cell of a nested function, or empty
                continue
            if isinstance(content, types.ModuleType):
                self.attributes(content, root, attrs, label)
        package = scope.get("__package__") or fn.__module__
        for module_name, level, attrs in refs.imported:  # imports inside the function
            module = _import(module_name, level, package)
            if module is not None:
                self.attributes(module, module_name, attrs, label)
            else:  # a library not imported yet (not imported here), or missing: named
                path = ".".join((module_name, *attrs)) if module_name else ".".join(attrs)
                self.frame(b"n", path.encode())
                self.named.add(path)
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is not None:
            self.reference(wrapped, f"the function {label} wraps")

    def attributes(self, module: Any, path: str, attrs: tuple[str, ...], label: str) -> None:
        """``module.attrs[0].attrs[1]...``, read by ``label``: followed through modules,
        down to the first value that is not one."""
        obj, owner = module, module.__name__
        for attr in attrs:
            if not isinstance(obj, types.ModuleType):
                break
            owner = obj.__name__
            try:
                obj = getattr(obj, attr, _MISSING)
            except Exception:  # a module __getattr__ that raises: as if missing
                obj = _MISSING
            path = f"{path}.{attr}"
            if obj is _MISSING:
                self.frame(b"a", f"{path} (missing)".encode())
                return
        if obj is module:
            return
        self.frame(b"a", path.encode())
        if isinstance(obj, types.ModuleType):
            self.frame(b"M", obj.__name__.encode())
        elif _library(owner) and not isinstance(obj, types.FunctionType | type):
            if type(obj) in _SIMPLE:  # a library's constant: math.pi, sys.maxsize...
                self.value(obj)
            else:  # os.environ, a library's state: not read
                self.frame(b"n", path.encode())
                self.named.add(path)
        else:
            self.reference(obj, f"{path}, which {label} reads")
            self._note_library(obj)

    def _note_library(self, value: Any) -> None:
        """A library's function or class that the user's code calls: named, not read,
        so the audit lists it among what the fingerprint did not follow."""
        if isinstance(value, types.FunctionType | types.BuiltinFunctionType | type):
            module = getattr(value, "__module__", None) or "builtins"
            if module != "builtins" and _library(module):
                self.named.add(f"{module}.{value.__qualname__}")

    def klass(self, cls: type) -> None:
        if _library(cls.__module__):
            self.frame(b"n", f"{qualified(cls)}{_version(cls.__module__)}".encode())
            return
        known = self.memo.get(id(cls))
        if known is not None and known[0] is cls:
            self.frame(b"K", known[1])
            return
        if id(cls) in self.building:
            self.frame(b"@", cls.__qualname__.encode())  # recursion: being included
            return
        scratch = _Scratch()
        sub = Code(scratch.update, strict=self.strict, memo=self.memo)
        sub.building, sub.named, sub.refused = self.building, self.named, self.refused
        sub.depth = self.depth
        self.building.add(id(cls))
        try:
            sub.class_body(cls)
        finally:
            self.building.discard(id(cls))
        digest = scratch.digest()
        self.memo[id(cls)] = (cls, digest)
        self.frame(b"K", digest)

    def class_body(self, cls: type) -> None:
        """A class of the user's: its name, source, bases, metaclass, methods (each
        followed) and class attributes."""
        self.frame(b"K", cls.__qualname__.encode())
        self.frame(b"S", (_source(cls) or "").encode())
        for base in cls.__bases__:
            self.value(base)
        if type(cls) is not type:
            self.value(type(cls))  # a metaclass
        for name, attr in cls.__dict__.items():
            if _skipped(name, attr):
                continue
            self.frame(b"k", name.encode())
            self.reference(attr, f"{cls.__qualname__}.{name}")
        for field in getattr(cls, "__dataclass_fields__", {}).values():
            factory = getattr(field, "default_factory", None)
            if callable(factory):
                self.reference(factory, f"the default_factory of {cls.__qualname__}.{field.name}")

    def bytecode(self, code: types.CodeType) -> None:
        self.frame(b"B", code.co_code)
        self.frame(b"n", repr(code.co_names).encode())
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.bytecode(const)
            else:
                self.value(const)  # not repr(): a frozenset's repr order is salted


class _Scratch:
    def __init__(self) -> None:
        import hashlib

        self._h = hashlib.sha256()
        self.update = self._h.update

    def digest(self) -> bytes:
        return self._h.digest()


def _skipped(name: str, attr: Any) -> bool:
    """Class attributes that are bookkeeping, not behaviour: dunder data (the source
    covers ``__slots__``, annotations...), enum and ABC internals."""
    if name.startswith("__") and name.endswith("__"):
        return not isinstance(attr, types.FunctionType | staticmethod | classmethod | property)
    return (len(name) > 2 and name[0] == name[-1] == "_" and name[1] != "_") or name == "_abc_impl"


def _source(obj: Any) -> str | None:
    memo = _sources.get(id(obj))
    if memo is not None and memo[0] is obj:
        return memo[1]
    try:
        text: str | None = textwrap.dedent(inspect.getsource(obj))
    except Exception:  # no source (REPL, exec): the bytecode stands alone
        text = None
    if len(_sources) >= _MEMO_LIMIT:
        _sources.clear()
    _sources[id(obj)] = (obj, text)
    return text


def _scan(code: types.CodeType) -> _Refs:
    memo = _scans.get(id(code))
    if memo is not None and memo[0] is code:
        return memo[1]
    names: set[str] = set()
    chains: set[tuple[str, tuple[str, ...]]] = set()
    cells: set[tuple[str, tuple[str, ...]]] = set()
    imported: set[tuple[str, int, tuple[str, ...]]] = set()
    _scan_into(code, names, chains, cells, imported, {})
    found: tuple[Any, ...] = (names, chains, cells, imported)
    refs = _Refs(*(tuple(sorted(x)) for x in found))
    if len(_scans) >= _MEMO_LIMIT:
        _scans.clear()
    _scans[id(code)] = (code, refs)
    return refs


_STORES = ("STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL")


def _scan_into(
    code: types.CodeType,
    names: set[str],
    chains: set[tuple[str, tuple[str, ...]]],
    cells: set[tuple[str, tuple[str, ...]]],
    imported: set[tuple[str, int, tuple[str, ...]]],
    aliases: dict[str, tuple[str, int, tuple[str, ...]]],
) -> None:
    """Collect the globals, attribute chains and imports of ``code``. ``aliases``:
    locals that hold what an import inside the function bound (``import settings``,
    ``from . import settings``), so that ``settings.FACTOR`` is followed there too."""
    ins = list(dis.get_instructions(code))
    aliases = dict(aliases)
    for i, op in enumerate(ins):
        if op.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            names.add(op.argval)
            attrs = _attrs_after(ins, i)
            if attrs:
                chains.add((op.argval, attrs))
        elif op.opname == "IMPORT_NAME" and i >= 2:
            level = ins[i - 2].argval if isinstance(ins[i - 2].argval, int) else 0
            module, j = op.argval, i + 1
            if ins[i - 1].argval:  # from module import a, b
                while j < len(ins) and ins[j].opname == "IMPORT_FROM":
                    imported.add((module, level, (ins[j].argval,)))
                    if j + 1 < len(ins) and ins[j + 1].opname in _STORES:
                        aliases[ins[j + 1].argval] = (module, level, (ins[j].argval,))
                    j += 2
                continue
            target = module.partition(".")[0]  # import a.b binds a
            while j < len(ins) and ins[j].opname == "IMPORT_FROM":  # import a.b as x binds a.b
                target, j = module, j + 1
            if j < len(ins) and ins[j].opname in _STORES:
                aliases[ins[j].argval] = (target, level, ())
        elif op.opname in ("LOAD_FAST", "LOAD_DEREF") and op.argval in aliases:
            attrs = _attrs_after(ins, i)
            module, level, prefix = aliases[op.argval]
            if prefix or attrs:
                imported.add((module, level, prefix + attrs))
        elif op.opname == "LOAD_DEREF":  # a closure cell: a module the outer code imported
            attrs = _attrs_after(ins, i)
            if attrs:
                cells.add((op.argval, attrs))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _scan_into(const, names, chains, cells, imported, aliases)


def _attrs_after(ins: list[dis.Instruction], i: int) -> tuple[str, ...]:
    attrs = []
    for op in ins[i + 1 :]:
        if op.opname not in ("LOAD_ATTR", "LOAD_METHOD"):
            break
        attrs.append(op.argval)
    return tuple(attrs)


def _import(name: str, level: int, package: str) -> Any:
    """The module of the user's that a function imports inside its body, imported now
    (as its first call would). None for a library's module that is not imported yet
    (importing it here could be slow, and its code is only named anyway) or a module
    that cannot be imported (the function will fail the same way when it runs)."""
    try:
        absolute = importlib.util.resolve_name("." * level + name, package) if level else name
        if absolute in sys.modules:
            return sys.modules[absolute]
        top = absolute.partition(".")[0]
        if top in sys.stdlib_module_names:
            return None
        spec = importlib.util.find_spec(top)
        origin = getattr(spec, "origin", None)
        if spec is None or (origin and os.path.realpath(origin).startswith(_library_dirs())):
            return None
        return importlib.import_module(absolute)
    except Exception:
        return None


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    dirs = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            dirs.add(paths[key])
    for getter in (site.getsitepackages, site.getusersitepackages):
        try:
            found = getter()
        except Exception:  # some virtualenv tools patch site
            continue
        dirs.update([found] if isinstance(found, str) else found)
    return tuple(sorted(os.path.realpath(d) + os.sep for d in dirs))


@functools.lru_cache(maxsize=4096)
def _library(module: str | None) -> bool:
    """Whether ``module`` is a library's (followed by name) rather than the user's."""
    if not module:
        return False  # made by exec() in a namespace of its own: the user's
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top in ("builtins", "conveyor"):
        return True
    loaded = sys.modules.get(module) or sys.modules.get(top)
    path = getattr(loaded, "__file__", None)
    if not path:
        return False  # made at run time (exec, a notebook): the user's
    return os.path.realpath(path).startswith(_library_dirs())


@functools.lru_cache(maxsize=4096)
def _version(module: str) -> str:
    top = sys.modules.get(module.partition(".")[0])
    version = getattr(top, "__version__", None)
    return f"@{version}" if isinstance(version, str) else ""
