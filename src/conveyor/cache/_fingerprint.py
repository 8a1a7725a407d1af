"""Fingerprints: stable digests of values and of a function's code.

A fingerprint is the SHA-256 of a typed encoding, so it is the same in every
process and every run (never ``hash()``, which is salted per process), and values
of different types never collide: ``1``, ``1.0``, ``True``, ``"1"`` and ``b"1"``
all differ, as do ``[1, 2]`` and ``(1, 2)``. Dicts and sets are order-insensitive.

    fingerprint_value(obj)      the input's half of a cache key; None when ``obj``
                                holds something it cannot encode faithfully
    fingerprint_function(fn)    the code's half: source text, closed-over values,
                                referenced module constants and helper functions,
                                defaults, partial arguments; FingerprintError when
                                some of that cannot be fingerprinted

What a value's encoding covers: None, bool, int, float, complex, str, bytes,
bytearray, tuples, lists, dicts, sets, frozensets, dataclass instances (class and
fields), enums, dates and times, Decimal, Fraction, UUID, paths, NumPy arrays and
scalars (dtype, shape, bytes; object arrays are refused). Subclasses of these carry
their class's qualified name, so a NamedTuple differs from a plain tuple.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import hashlib
import inspect
import pathlib
import struct
import textwrap
import types
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from conveyor.errors import FingerprintError

FORMAT = b"conveyor-fingerprint/1"
MAX_DEPTH = 200


class _Refused(Exception):
    """Internal: the value holds something with no faithful encoding."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def fingerprint_value(obj: Any) -> str | None:
    """A stable hex digest of ``obj``'s content, or None when it cannot be fingerprinted
    (an open file, a lock, an object array, a reference cycle...)."""
    digest, _ = explain_value(obj)
    return digest


def explain_value(obj: Any) -> tuple[str | None, str | None]:
    """``(digest, None)``, or ``(None, what)`` naming the part that cannot be
    fingerprinted, e.g. ``"a socket inside a dict"``."""
    h = hashlib.sha256(FORMAT)
    try:
        _encode(obj, h.update, set(), 0)
    except _Refused as exc:
        return None, exc.what
    return h.hexdigest(), None


def _digest(obj: Any, active: set[int], depth: int) -> bytes:
    h = hashlib.sha256()
    _encode(obj, h.update, active, depth)
    return h.digest()


def _name(cls: type) -> bytes:
    return f"{cls.__module__}.{cls.__qualname__}".encode()


def _frame(feed: Callable[[bytes], object], tag: bytes, payload: bytes) -> None:
    feed(tag + struct.pack(">Q", len(payload)) + payload)


def _encode(obj: Any, feed: Callable[[bytes], object], active: set[int], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Refused(f"a value nested deeper than {MAX_DEPTH} levels")
    cls = type(obj)
    simple = _SIMPLE.get(cls)
    if simple is not None:
        tag, encode = simple
        _frame(feed, tag, encode(obj))
        return
    if cls.__module__ == "numpy" or cls.__module__.startswith("numpy."):
        _encode_numpy(obj, feed)
        return
    if isinstance(obj, enum.Enum):
        _frame(feed, b"E", _name(cls))
        _encode(obj.value, feed, active, depth + 1)
        return
    if id(obj) in active:
        raise _Refused(f"a reference cycle through a {cls.__name__}")
    active.add(id(obj))
    try:
        _encode_composite(obj, cls, feed, active, depth)
    finally:
        active.discard(id(obj))


def _encode_composite(
    obj: Any, cls: type, feed: Callable[[bytes], object], active: set[int], depth: int
) -> None:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _frame(feed, b"D", _name(cls))
        for f in dataclasses.fields(obj):
            _frame(feed, b"k", f.name.encode())
            _encode(getattr(obj, f.name), feed, active, depth + 1)
        return
    for base, tag in _CONTAINERS:
        if isinstance(obj, base):
            container: Any = obj
            if cls is not base:  # a subclass (NamedTuple, OrderedDict...): name it
                _frame(feed, b"C", _name(cls))
            if base is dict:
                _encode_unordered(
                    (
                        _digest(k, active, depth + 1) + _digest(v, active, depth + 1)
                        for k, v in container.items()
                    ),
                    tag,
                    len(container),
                    feed,
                )
            elif base in (set, frozenset):
                digests = (_digest(x, active, depth + 1) for x in container)
                _encode_unordered(digests, tag, len(container), feed)
            else:
                feed(tag + struct.pack(">Q", len(container)))
                for x in container:
                    _encode(x, feed, active, depth + 1)
            return
    for base, (tag, encode) in _SIMPLE.items():
        if isinstance(obj, base):  # a subclass of a scalar (IntFlag-like, str subclass)
            _frame(feed, b"C", _name(cls))
            _frame(feed, tag, encode(obj))
            return
    raise _Refused(f"a {cls.__module__}.{cls.__qualname__}")


def _encode_unordered(
    digests: Iterable[bytes], tag: bytes, n: int, feed: Callable[[bytes], object]
) -> None:
    feed(tag + struct.pack(">Q", n))
    for d in sorted(digests):
        feed(d)


def _encode_numpy(obj: Any, feed: Callable[[bytes], object]) -> None:
    import numpy as np

    if isinstance(obj, np.ndarray | np.generic):
        arr = np.asarray(obj)
        if arr.dtype.hasobject:
            raise _Refused("a NumPy array of Python objects (dtype=object)")
        tag = b"A" if isinstance(obj, np.ndarray) else b"G"
        _frame(feed, tag, arr.dtype.str.encode() + repr(arr.dtype.descr).encode())
        feed(struct.pack(">Q", arr.ndim) + b"".join(struct.pack(">Q", n) for n in arr.shape))
        _frame(feed, b"b", np.ascontiguousarray(arr).tobytes())
        return
    if isinstance(obj, np.dtype):
        _frame(feed, b"T", obj.str.encode() + repr(obj.descr).encode())
        return
    raise _Refused(f"a {type(obj).__module__}.{type(obj).__qualname__}")


def _float(x: float) -> bytes:
    return struct.pack(">d", x)


_SIMPLE: dict[type, tuple[bytes, Callable[[Any], bytes]]] = {
    type(None): (b"N", lambda _: b""),
    bool: (b"B", lambda b: b"1" if b else b"0"),
    int: (b"i", lambda i: str(i).encode()),
    float: (b"f", _float),
    complex: (b"z", lambda z: _float(z.real) + _float(z.imag)),
    str: (b"s", lambda s: s.encode("utf-8", "surrogatepass")),
    bytes: (b"y", bytes),
    bytearray: (b"Y", bytes),
    memoryview: (b"M", lambda m: m.tobytes()),
    decimal.Decimal: (b"d", lambda d: str(d).encode()),
    fractions.Fraction: (b"q", lambda q: f"{q.numerator}/{q.denominator}".encode()),
    uuid.UUID: (b"u", lambda u: u.bytes),
    datetime.datetime: (b"t", lambda t: t.isoformat().encode()),
    datetime.date: (b"a", lambda t: t.isoformat().encode()),
    datetime.time: (b"h", lambda t: t.isoformat().encode()),
    datetime.timedelta: (
        b"r",
        lambda t: f"{t.days},{t.seconds},{t.microseconds}".encode(),
    ),
    pathlib.PurePosixPath: (b"p", lambda p: str(p).encode()),
    pathlib.PureWindowsPath: (b"w", lambda p: str(p).encode()),
    pathlib.PosixPath: (b"p", lambda p: str(p).encode()),
    pathlib.WindowsPath: (b"w", lambda p: str(p).encode()),
    range: (b"R", lambda r: f"{r.start},{r.stop},{r.step}".encode()),
}

_CONTAINERS: tuple[tuple[type, bytes], ...] = (
    (tuple, b"("),
    (list, b"["),
    (dict, b"{"),
    (frozenset, b"F"),
    (set, b"S"),
)


# --- functions ----------------------------------------------------------------------


def fingerprint_function(fn: Any) -> str:
    """A stable hex digest of what ``fn`` computes with: its source text (or, without
    source, its bytecode and constants), the values its closure holds, the module-level
    values it refers to (constants are fingerprinted, functions of the same module
    followed recursively; modules, classes and builtins are not followed), its
    defaults, a ``functools.partial``'s arguments, and for a callable object its class
    source and instance ``__dict__``. A :class:`~conveyor.Stage` is fingerprinted by
    its function.

    Raises FingerprintError naming the variable whose value cannot be fingerprinted.
    """
    h = hashlib.sha256(FORMAT + b"/function")
    _Walker(h.update).function(fn, getattr(fn, "__qualname__", type(fn).__qualname__))
    return h.hexdigest()


def fingerprint_pipeline(pipeline: Any) -> str:
    """A stable hex digest of a pipeline's shape and code: each stage's name, policy
    and function fingerprint, and its edges. FingerprintError as for a function."""
    h = hashlib.sha256(FORMAT + b"/pipeline")
    _frame(h.update, b"P", pipeline.name.encode())
    for name in pipeline.order:
        s = pipeline.stages[name]
        policy = (name, s.kind, s.size, s.split, tuple(pipeline.successors[name]))
        _frame(h.update, b"s", bytes.fromhex(_must(policy, f"stage {name!r}'s policy")))
        _frame(h.update, b"c", bytes.fromhex(fingerprint_function(s.fn)))
    return h.hexdigest()


def _must(value: Any, what: str) -> str:
    digest, refused = explain_value(value)
    if digest is None:
        raise FingerprintError(
            f"cannot fingerprint {what}: it holds {refused}; make it a plain value "
            "(numbers, strings, tuples, dicts, dataclasses) or turn caching off for the stage"
        )
    return digest


class _Walker:
    def __init__(self, feed: Callable[[bytes], object]) -> None:
        self.feed = feed
        self.seen: set[int] = set()
        self.home: str | None = None  # the module whose helper functions are followed

    def function(self, fn: Any, where: str) -> None:
        feed = self.feed
        if id(fn) in self.seen:
            _frame(feed, b"@", where.encode())  # recursion: already included
            return
        self.seen.add(id(fn))
        from conveyor.core.stage import Stage

        if isinstance(fn, Stage):
            fn = fn.fn
        if isinstance(fn, functools.partial):
            _frame(feed, b"P", b"partial")
            self.function(fn.func, where)
            self.value(fn.args, f"the arguments of partial {where}")
            self.value(fn.keywords, f"the keyword arguments of partial {where}")
            return
        if isinstance(fn, types.MethodType):
            _frame(feed, b"m", b"method")
            self.function(fn.__func__, where)
            self.instance(fn.__self__, where)
            return
        if isinstance(fn, types.FunctionType):
            self.plain_function(fn, where)
            return
        if isinstance(fn, types.BuiltinFunctionType | type):
            _frame(feed, b"n", f"{getattr(fn, '__module__', '')}.{fn.__qualname__}".encode())
            return
        if callable(fn):  # a callable object: its class's code and its state
            cls = type(fn)
            _frame(feed, b"O", _name(cls))
            _frame(feed, b"S", _source(cls).encode())
            call = inspect.getattr_static(cls, "__call__", None)
            if isinstance(call, types.FunctionType):
                self.plain_function(call, f"{cls.__qualname__}.__call__")
            self.instance(fn, where)
            return
        raise FingerprintError(f"cannot fingerprint {where}: {fn!r} is not callable")

    def instance(self, obj: Any, where: str) -> None:
        state = getattr(obj, "__dict__", None)
        if state is None:
            return
        for name in sorted(state):
            value = state[name]
            _frame(self.feed, b"a", name.encode())
            if callable(value) and not isinstance(value, type):
                self.function(value, f"{where}.{name}")
            else:
                self.value(value, f"attribute {name!r} of {where}")

    def plain_function(self, fn: types.FunctionType, where: str) -> None:
        feed = self.feed
        code = fn.__code__
        if self.home is None:
            self.home = fn.__module__
        _frame(feed, b"f", fn.__qualname__.encode())
        try:
            _frame(feed, b"S", textwrap.dedent(inspect.getsource(fn)).encode())
        except (OSError, TypeError):  # no source (REPL, exec): the bytecode stands in
            self.code(code)
        self.value(fn.__defaults__, f"the defaults of {where}")
        self.value(fn.__kwdefaults__, f"the keyword defaults of {where}")
        for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=True):
            _frame(feed, b"v", name.encode())
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell: a name bound later
                _frame(feed, b"e", b"")
                continue
            self.reference(content, name, where, "closes over")
        module = fn.__globals__
        for name in sorted(_global_names(code)):
            if name not in module:
                continue  # a builtin, or not defined yet
            _frame(feed, b"g", name.encode())
            self.reference(module[name], name, where, "refers to the global")
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is not None:
            self.function(wrapped, f"{where} (wrapped)")

    def reference(self, value: Any, name: str, where: str, how: str) -> None:
        """A value the function uses by name: functions followed, modules and classes
        named (a class of the user's also by its source), everything else fingerprinted
        by value. A global that cannot be fingerprinted (a logger, a client) counts by
        its type only; a closed-over one raises FingerprintError."""
        feed = self.feed
        if isinstance(value, types.ModuleType):
            _frame(feed, b"M", value.__name__.encode())
        elif isinstance(value, type):
            _frame(feed, b"K", _name(value))
            _frame(feed, b"S", _source(value).encode())
        elif isinstance(value, types.BuiltinFunctionType):
            _frame(feed, b"n", f"{value.__module__}.{value.__qualname__}".encode())
        elif how == "closes over":
            if callable(value) and not _plain(value):
                self.function(value, f"{name}, which {where} {how}")
            else:
                self.value(value, f"{name!r}, which {where} {how}")
        elif isinstance(value, types.FunctionType) and value.__module__ != self.home:
            # Another module's function (a library's): named, not followed.
            _frame(feed, b"n", f"{value.__module__}.{value.__qualname__}".encode())
        else:
            # Globals: fingerprint into a scratch hash, so a refusal leaves no trace.
            scratch = hashlib.sha256()
            walker = _Walker(scratch.update)
            walker.seen, walker.home = self.seen, self.home
            try:
                if callable(value) and not _plain(value):
                    walker.function(value, f"{name}, which {where} {how}")
                else:
                    walker.value(value, name)
            except FingerprintError:
                _frame(feed, b"X", _name(type(value)))
                return
            _frame(feed, b"V", scratch.digest())

    def value(self, value: Any, what: str) -> None:
        _frame(self.feed, b"V", bytes.fromhex(_must(value, what)))

    def code(self, code: types.CodeType) -> None:
        _frame(self.feed, b"B", code.co_code)
        _frame(self.feed, b"n", repr(code.co_names).encode())
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.code(const)
            else:
                _frame(self.feed, b"k", repr(const).encode())


def _plain(value: Any) -> bool:
    """A callable that is also a plain value (an enum member, say)."""
    return isinstance(value, enum.Enum)


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the code nested in it) may look up as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _source(obj: Any) -> str:
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return ""
