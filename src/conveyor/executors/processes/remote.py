"""Exceptions across the process boundary: a worker's exception comes back as itself.

The worker sends what a unit raised as :func:`pack` makes it: the exception pickled,
when it survives a round trip there, and always a description (its class's module,
qualified name and bases, its message; when it does not pickle whole, its
arguments and each attribute that pickles on its own). The driver's
:func:`rebuild` returns, in order of preference:

1. the exception itself, unpickled;
2. when that fails (a constructor that takes other arguments than its message, an
   attribute that cannot be pickled), an instance of a *proxy* of its class: a
   subclass named like it, made without calling its constructor, with its
   arguments, the attributes that pickled, and ``str()`` as the worker printed it.
   ``isinstance`` and ``except`` treat it as the original, so retry filters behave
   as they do on threads;
3. when its class cannot be imported here (made by a factory or in a function, or
   in a module the driver cannot import), a :class:`~conveyor.RemoteError` that
   carries the class's qualified name and its bases', which retry filters match
   by name.

Either way its ``__cause__`` is the worker's traceback (a ``RemoteTraceback``).
Proxies pickle (as proxies), so they can be stored or sent on like any exception.
"""

from __future__ import annotations

import importlib
import pickle
import threading
from typing import Any, NamedTuple

from conveyor.errors import RemoteError, RemoteTraceback

__all__ = ["Packed", "pack", "qualified_name", "rebuild"]


class Packed(NamedTuple):
    """An exception as a worker sends it: picklable whatever the exception was."""

    blob: bytes | None  # the exception pickled, if it survived a round trip in the worker
    module: str
    qualname: str
    type_names: tuple[str, ...]  # qualified names of its class and bases, most derived first
    message: str  # str() of it, in the worker
    args: bytes | None  # when blob is None: its args pickled, if they pickle
    attributes: dict[str, bytes]  # when blob is None: each attribute that pickles on its own

    @property
    def describe(self) -> str:
        """``"Type: message"``, for error messages."""
        return f"{self.qualname}: {self.message}" if self.message else self.qualname


def qualified_name(cls: type) -> str:
    """``"module.Qualname"``: how retry filters name a class across processes."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _round_trip(value: Any) -> bytes | None:
    try:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)
    except Exception:
        return None
    return blob


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as err:  # its __str__ is broken: say so rather than die
        return f"<str() of this {type(exc).__name__} raised {type(err).__name__}>"


def pack(exc: BaseException) -> Packed:
    """``exc`` as a process worker sends it (call in the worker)."""
    cls = type(exc)
    names = tuple(qualified_name(c) for c in cls.__mro__ if c is not object)
    blob = _round_trip(exc)
    if blob is not None:
        return Packed(blob, cls.__module__, cls.__qualname__, names, _message(exc), None, {})
    attributes: dict[str, bytes] = {}
    for name, value in getattr(exc, "__dict__", {}).items():
        data = _round_trip(value)
        if data is not None:
            attributes[name] = data
    args = _round_trip(exc.args)
    return Packed(None, cls.__module__, cls.__qualname__, names, _message(exc), args, attributes)


def rebuild(packed: Packed, traceback: str) -> BaseException:
    """The exception ``packed`` stands for, with ``traceback`` as its ``__cause__``."""
    exc: Any = None
    if packed.blob is not None:
        try:
            exc = pickle.loads(packed.blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = _stand_in(packed)
    exc.__cause__ = RemoteTraceback(traceback)
    return exc


def _loads(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return pickle.loads(data)
    except Exception:
        return None


def _stand_in(packed: Packed) -> BaseException:
    """A proxy of the exception's class if there can be one, else a RemoteError."""
    args = _loads(packed.args)
    attributes = {}
    for name, data in packed.attributes.items():
        value = _loads(data)
        if value is not None or data == _NONE:
            attributes[name] = value
    remote = _Remote(packed.module, packed.qualname, packed.type_names, packed.message)
    return _proxy(remote, args if isinstance(args, tuple) else None, attributes)


_NONE = pickle.dumps(None, protocol=pickle.HIGHEST_PROTOCOL)


class _Remote(NamedTuple):
    module: str
    qualname: str
    type_names: tuple[str, ...]
    message: str


def _proxy(remote: _Remote, args: tuple[Any, ...] | None, state: dict[str, Any]) -> BaseException:
    cls = _proxy_class(remote.module, remote.qualname)
    if cls is not None:
        try:
            exc = _new(cls)
            exc.args = args if args is not None else (remote.message,)
            exc.__dict__.update(state)
            exc._conveyor_remote = remote
            return exc
        except Exception:
            pass
    type_name = f"{remote.module}.{remote.qualname}"
    return RemoteError(
        f"{type_name}: {remote.message} (raised in a process worker; it cannot be rebuilt "
        "as its own class here, which cannot be imported or refuses subclasses, so it "
        "arrives as conveyor.RemoteError, which retry filters match by the class's name; "
        "define the class at the top level of an importable module to get it back as itself)",
        type_name=type_name,
        type_names=remote.type_names,
        remote_message=remote.message,
        attributes=state,
    )


_proxies: dict[type, type | None] = {}
_proxies_lock = threading.Lock()


def _find(module: str, qualname: str) -> type | None:
    if "<" in qualname:
        return None  # made in a function: no import finds it
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


def _proxy_class(module: str, qualname: str) -> type | None:
    """The proxy subclass of the class ``module.qualname`` (None if there can be none)."""
    cls = _find(module, qualname)
    if cls is None:
        return None
    with _proxies_lock:
        if cls not in _proxies:
            namespace = {
                "__slots__": ("_conveyor_remote",),
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": f"{cls.__qualname__} as raised in a process worker: made without "
                "calling its constructor, with its message, arguments and the attributes "
                "that could be sent.",
                "__str__": _proxy_str,
                "__reduce__": _proxy_reduce,
            }
            try:
                _proxies[cls] = type(cls.__name__, (cls,), namespace)
            except Exception:  # final classes, __init_subclass__ that refuses, metaclasses
                _proxies[cls] = None
        return _proxies[cls]


def _new(cls: Any) -> Any:
    # Skip the class's own __new__ (user code that may want other arguments): the
    # nearest builtin one (BaseException's, OSError's) makes the instance.
    for base in cls.__mro__:
        if base.__module__ == "builtins" and "__new__" in vars(base):
            return base.__new__(cls)
    raise TypeError(f"no builtin __new__ for {cls!r}")  # pragma: no cover


def _proxy_str(self: Any) -> str:
    return str(self._conveyor_remote.message)


def _proxy_reduce(self: Any) -> tuple[Any, ...]:
    return (_unpickle_proxy, (tuple(self._conveyor_remote), self.args, dict(self.__dict__)))


def _unpickle_proxy(
    remote: tuple[str, str, tuple[str, ...], str], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    return _proxy(_Remote(*remote), args, state)
