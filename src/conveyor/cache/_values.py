"""The typed encoding of values that fingerprints hash.

Every value is fed to a hash as framed, tagged bytes, so that values of different
types never collide (``1``, ``1.0``, ``True``, ``"1"``, ``b"1"`` all differ) and the
encoding is the same in every process (never ``hash()``, which is salted):

- plain scalars, bytes, strings, Decimal, Fraction, UUID, paths, ranges: by value;
- tuples, lists and dicts in order (a dict's order is visible to the code that
  reads it); sets and frozensets without order (their order is not reproducible);
- datetimes and times with their ``fold`` and their zone's identity (a ZoneInfo by
  its key, a fixed offset by its offset and name, any other tzinfo by its state);
- NumPy arrays by dtype, shape and bytes; masked arrays with their mask and fill
  value; object arrays element by element;
- types registered with :func:`register_fingerprint` by what their encoder returns;
- functions, classes and modules by their code (see :mod:`conveyor.cache._code`);
- any other object by what pickle would save of it (``__reduce_ex__``): its class
  (followed as code) and its state, so subclasses of built-ins with attributes of
  their own, dataclasses (their fields and any extra attribute) and plain instances
  all count whole.

What has no faithful encoding (a lock, an open file, a socket, a reference cycle, a
bare ``object()``) raises :class:`Refused` naming it.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import hashlib
import pathlib
import struct
import sys
import types
import uuid
from collections.abc import Callable, Iterable
from typing import Any

MAX_DEPTH = 100

Encoder = Callable[[Any], Any]
_registry: dict[type, Encoder] = {}
_by_name: dict[str, Encoder] = {}  # "module.QualName", matched without importing it
_resolved: dict[type, Encoder | None] = {}


class Refused(Exception):
    """The value holds something with no faithful encoding; ``what`` names it and
    ``where`` (set by the code walker) the variable it was found in."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.where: str | None = None


def register_fingerprint(cls: type | str, encode: Encoder) -> None:
    """Teach fingerprints a type: ``encode(obj)`` returns a value conveyor can
    fingerprint (bytes, numbers, strings, tuples, NumPy arrays...) holding everything
    about ``obj`` that a stage could read. It covers subclasses too, unless they have
    an encoder of their own. ``cls`` may be given as ``"module.QualName"``, so that
    registering it does not import the library. Register at the top level of the
    module that defines the stage, so that process workers register it too.

    Example: ``register_fingerprint("pandas.DataFrame", lambda df: (list(df.columns),
    list(map(str, df.dtypes)), df.index.to_numpy(), df.to_numpy()))``.
    """
    if not callable(encode):
        raise TypeError(f"register_fingerprint: {encode!r} is not callable")
    if isinstance(cls, str):
        if "." not in cls:
            raise ValueError(f"register_fingerprint: give 'module.QualName', not {cls!r}")
        _by_name[cls] = encode
    elif isinstance(cls, type):
        _registry[cls] = encode
    else:
        raise TypeError(f"register_fingerprint: {cls!r} is not a class or 'module.QualName'")
    _resolved.clear()


def registered_encoder(cls: type) -> Encoder | None:
    try:
        return _resolved[cls]
    except KeyError:
        pass
    found = None
    for base in cls.__mro__:
        found = _registry.get(base) or _by_name.get(f"{base.__module__}.{base.__qualname__}")
        if found is not None:
            break
    _resolved[cls] = found
    return found


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _float(x: float) -> bytes:
    return struct.pack(">d", x)


def _memoryview(m: memoryview) -> bytes:
    return f"{m.format}|{m.shape}|".encode() + m.tobytes()


_SIMPLE: dict[type, tuple[bytes, Callable[[Any], bytes]]] = {
    type(None): (b"N", lambda _: b""),
    bool: (b"B", lambda b: b"1" if b else b"0"),
    int: (b"i", lambda i: str(i).encode()),
    float: (b"f", _float),
    complex: (b"z", lambda z: _float(z.real) + _float(z.imag)),
    str: (b"s", lambda s: s.encode("utf-8", "surrogatepass")),
    bytes: (b"y", bytes),
    bytearray: (b"Y", bytes),
    memoryview: (b"M", _memoryview),
    decimal.Decimal: (b"d", lambda d: str(d).encode()),
    fractions.Fraction: (b"q", lambda q: f"{q.numerator}/{q.denominator}".encode()),
    uuid.UUID: (b"u", lambda u: u.bytes),
    datetime.date: (b"a", lambda t: t.isoformat().encode()),
    datetime.timedelta: (b"r", lambda t: f"{t.days},{t.seconds},{t.microseconds}".encode()),
    pathlib.PurePosixPath: (b"p", lambda p: str(p).encode()),
    pathlib.PureWindowsPath: (b"w", lambda p: str(p).encode()),
    pathlib.PosixPath: (b"p", lambda p: str(p).encode()),
    pathlib.WindowsPath: (b"w", lambda p: str(p).encode()),
    range: (b"R", lambda r: f"{r.start},{r.stop},{r.step}".encode()),
}

# Values of these types are code: the code walker encodes them (Values.code).
CODE_TYPES = (
    types.ModuleType,
    types.FunctionType,
    types.MethodType,
    type,
    types.BuiltinFunctionType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    staticmethod,
    classmethod,
    property,
    types.CodeType,
)


class Values:
    """Feeds the typed encoding of values to ``feed`` (``hashlib``'s ``update``)."""

    def __init__(self, feed: Callable[[bytes], object]) -> None:
        self.feed = feed
        self.active: set[int] = set()  # composites on the current path: a cycle check
        self.depth = 0

    def frame(self, tag: bytes, payload: bytes) -> None:
        self.feed(tag + struct.pack(">Q", len(payload)) + payload)

    def code(self, obj: Any) -> None:
        """Encode a function, class or module: the code walker's part."""
        raise Refused(f"a {qualified(type(obj))}")

    def value(self, obj: Any) -> None:
        cls = type(obj)
        simple = _SIMPLE.get(cls)
        if simple is not None:
            tag, encode = simple
            self.frame(tag, encode(obj))
            return
        if self.depth >= MAX_DEPTH:
            raise Refused(f"a value nested deeper than {MAX_DEPTH} levels")
        self.depth += 1
        try:
            self._value(obj, cls)
        finally:
            self.depth -= 1

    def _value(self, obj: Any, cls: type) -> None:
        encode = registered_encoder(cls)
        if encode is not None:
            self._registered(obj, cls, encode)
            return
        exact = _EXACT.get(cls)
        if exact is not None:
            exact(self, obj)
            return
        np = sys.modules.get("numpy")
        if np is not None and isinstance(obj, np.ndarray | np.generic | np.dtype):
            self._numpy(obj, np)
            return
        if isinstance(obj, enum.Enum):
            self.frame(b"E", qualified(cls).encode())
            self.value(obj.value)
            return
        if isinstance(obj, CODE_TYPES):
            self.code(obj)
            return
        self._object(obj, cls)

    def digest(self, obj: Any) -> bytes:
        """``obj``'s encoding hashed on its own (an element of an unordered set)."""
        h = hashlib.sha256()
        feed, self.feed = self.feed, h.update
        try:
            self.value(obj)
        finally:
            self.feed = feed
        return h.digest()

    # --- composites -------------------------------------------------------------------

    def enter(self, obj: Any) -> None:
        if id(obj) in self.active:
            raise Refused(f"a reference cycle through a {type(obj).__name__}")
        self.active.add(id(obj))

    def _sequence(self, obj: Any, tag: bytes) -> None:
        self.enter(obj)
        try:
            self.feed(tag + struct.pack(">Q", len(obj)))
            for x in obj:
                self.value(x)
        finally:
            self.active.discard(id(obj))

    def _mapping(self, obj: dict[Any, Any]) -> None:
        self.enter(obj)
        try:
            self.feed(b"{" + struct.pack(">Q", len(obj)))
            for k, v in obj.items():
                self.value(k)
                self.value(v)
        finally:
            self.active.discard(id(obj))

    def _unordered(self, obj: Iterable[Any], tag: bytes, n: int) -> None:
        self.enter(obj)
        try:
            self.feed(tag + struct.pack(">Q", n))
            for d in sorted(self.digest(x) for x in obj):
                self.feed(d)
        finally:
            self.active.discard(id(obj))

    def _items(self, tag: bytes, items: Iterable[Any]) -> None:
        self.feed(tag)
        n = 0
        for x in items:
            self.value(x)
            n += 1
        self.feed(b"." + struct.pack(">Q", n))

    # --- dates and times --------------------------------------------------------------

    def _datetime(self, obj: datetime.datetime | datetime.time) -> None:
        tag = b"t" if isinstance(obj, datetime.datetime) else b"h"
        self.frame(tag, obj.replace(tzinfo=None).isoformat().encode() + b"|%d" % obj.fold)
        self.tz(obj.tzinfo)

    def tz(self, tz: datetime.tzinfo | None) -> None:
        """A zone's identity: ``Europe/Paris`` differs from a fixed ``+01:00``."""
        if tz is None:
            self.frame(b"Z", b"")
        elif type(tz) is datetime.timezone:
            self.frame(b"Z", b"fixed")
            self.value(tz.__getinitargs__())  # type: ignore[attr-defined]  # (offset[, name])
        elif _is_zoneinfo(tz):
            key = getattr(tz, "key", None)
            if key is None:
                raise Refused("a ZoneInfo read from a file (it has no key to name the zone)")
            self.frame(b"Z", f"zone:{qualified(type(tz))}:{key}".encode())
        else:  # pytz, dateutil...: by class and state
            self.frame(b"Z", b"other")
            self._object(tz, type(tz))

    # --- NumPy ------------------------------------------------------------------------

    def _numpy(self, obj: Any, np: Any) -> None:
        if isinstance(obj, np.dtype):
            self.frame(b"T", obj.str.encode() + repr(obj.descr).encode())
            return
        if isinstance(obj, np.generic):
            if obj.dtype.hasobject:
                raise Refused(f"a NumPy scalar of dtype {obj.dtype} holding Python objects")
            self._array(np.asarray(obj), np, b"G")
            return
        cls = type(obj)
        if cls is np.ndarray:
            self._array(obj, np, b"A")
            return
        self.frame(b"C", b"ndarray subclass")
        self.value(cls)
        if isinstance(obj, np.ma.MaskedArray):
            self._array(np.ma.getdata(obj), np, b"A")
            self.frame(b"k", b"mask")
            self.value(obj.mask)
            self.frame(b"k", b"fill_value")
            self.value(obj.fill_value)
            self.frame(b"k", b"hardmask")
            self.value(bool(obj.hardmask))
            return
        self._array(obj.view(np.ndarray), np, b"A")
        if not isinstance(obj, np.memmap):  # a memmap's extra state is where it came from
            state = getattr(obj, "__dict__", None)
            if state:
                self.value(state)

    def _array(self, arr: Any, np: Any, tag: bytes) -> None:
        dtype = arr.dtype
        self.frame(tag, dtype.str.encode() + repr(dtype.descr).encode())
        self.feed(struct.pack(">Q", arr.ndim) + b"".join(struct.pack(">Q", n) for n in arr.shape))
        if not dtype.hasobject:
            self.frame(b"b", np.ascontiguousarray(arr).tobytes())
            return
        if dtype.kind != "O":
            raise Refused("a structured NumPy array with fields of Python objects")
        self.enter(arr)
        try:
            self._items(b"o", arr.ravel(order="C"))  # an object array: element by element
        finally:
            self.active.discard(id(arr))

    # --- registered types and any other object -----------------------------------------

    def _registered(self, obj: Any, cls: type, encode: Encoder) -> None:
        try:
            content = encode(obj)
        except Refused:
            raise
        except Exception as exc:
            raise Refused(
                f"a {qualified(cls)} (its registered fingerprint raised "
                f"{type(exc).__name__}: {exc})"
            ) from None
        self.frame(b"X", qualified(cls).encode())
        self.enter(obj)
        try:
            self.value(content)
        finally:
            self.active.discard(id(obj))

    def _object(self, obj: Any, cls: type) -> None:
        """By what pickle would save: the reconstructor (code), its arguments (the
        class among them, followed as code) and the state."""
        if cls is object:
            raise Refused("an object() (it has no content, only an identity)")
        self.enter(obj)
        try:
            try:
                reduced = obj.__reduce_ex__(5)
            except Exception:
                raise Refused(f"a {qualified(cls)}") from None
            if isinstance(reduced, str):  # a module-level singleton, pickled by name
                module = getattr(obj, "__module__", None) or cls.__module__
                self.frame(b"g", f"{module}.{reduced}".encode())
                return
            if not isinstance(reduced, tuple) or not 2 <= len(reduced) <= 6:
                raise Refused(f"a {qualified(cls)}")
            rebuild, args, state, listitems, dictitems = (*reduced, None, None, None)[:5]
            self.frame(b"O", b"")
            self.value(rebuild)
            self.value(args)
            self.value(state)
            if listitems is not None:
                self._items(b"l", listitems)
            if dictitems is not None:
                self._items(b"m", dictitems)
        finally:
            self.active.discard(id(obj))


def _is_zoneinfo(tz: Any) -> bool:
    zoneinfo = sys.modules.get("zoneinfo")
    return zoneinfo is not None and isinstance(tz, zoneinfo.ZoneInfo)


_EXACT: dict[type, Callable[[Values, Any], None]] = {
    tuple: lambda v, x: v._sequence(x, b"("),
    list: lambda v, x: v._sequence(x, b"["),
    dict: lambda v, x: v._mapping(x),
    set: lambda v, x: v._unordered(x, b"S", len(x)),
    frozenset: lambda v, x: v._unordered(x, b"F", len(x)),
    datetime.datetime: lambda v, x: v._datetime(x),
    datetime.time: lambda v, x: v._datetime(x),
}


# --- built-in registrations for extras' types, matched by name -------------------------


def _torch_tensor(t: Any) -> tuple[Any, ...]:
    import torch

    if t.layout != torch.strided or t.is_quantized:
        raise Refused(f"a torch tensor with layout {t.layout} (only dense tensors are read)")
    dense = t.detach().resolve_conj().resolve_neg().to("cpu").contiguous()
    raw = dense.reshape(-1).view(torch.uint8).numpy().tobytes()
    return (str(t.dtype), tuple(t.shape), t.device.type, bool(t.requires_grad), raw)


register_fingerprint("torch.Tensor", _torch_tensor)
