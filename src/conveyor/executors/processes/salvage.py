"""Unpickling what can be unpickled: a message whose parts fail alone.

A task's units travel to a worker in one pickle, and its results come back in one:
the fast path, one call each way. When such a pickle cannot be loaded whole,
because a value in it cannot be rebuilt here (a class this process cannot import,
a constructor or ``__setstate__`` that raises), :func:`salvage` loads it again
with the standard library's pure-Python unpickler, catching failures opcode by
opcode. An opcode that runs user code (imports, constructors, ``__setstate__``,
``__setitem__``, ``append``, hashing) and raises leaves a :class:`Broken`
placeholder, holding the exception, where its value would be, and loading goes
on. Then :meth:`Salvaged.error_in` looks through each part (each unit, each
result) for a placeholder or for an object whose building failed half-way: the
parts that hold one failed, the others are exact. Objects shared between parts
are loaded once, as in the fast path, and a part that shares a broken object is
broken too.

Only the failure path pays for this: the pure-Python unpickler is slow, and it
runs only after the fast one has failed.
"""

from __future__ import annotations

import gc
import io
import pickle
import pickletools
import types
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["Broken", "Salvaged", "Tolerant", "salvage"]


class Broken:
    """Stands where a value that could not be unpickled would be; ``error`` says why.

    Later opcodes that would call, fill or set the state of the value leave the
    placeholder as it is, so one failure does not cascade into others."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, *args: Any, **kwargs: Any) -> Broken:
        return self

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<cannot be unpickled: {type(self.error).__name__}: {self.error}>"


# Opcodes that run code other than the unpickler's own; only these may fail on a
# well-formed pickle. The first four fill or set the state of the object below them.
_FILLS = {"BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"}
_USER_CODE = _FILLS | {
    "GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX",
    "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID", "DICT", "FROZENSET",
}  # fmt: skip


def _tolerant(info: pickletools.OpcodeInfo, load: Callable[[Any], None]) -> Callable[[Any], None]:
    """``load`` (the unpickler's method for opcode ``info``), made to leave a placeholder
    with the exception when it raises, and the stack as the opcode would have left it."""
    before = info.stack_before
    marked = pickletools.markobject in before
    below = before.index(pickletools.markobject) if marked else len(before)
    pushes = len(info.stack_after)
    fills = info.name in _FILLS

    def run(self: Any) -> None:  # self: a Tolerant
        if marked:  # its inputs: `below` objects under the mark, and all above it
            outer = self.metastack[-1]
            inputs = [*outer[len(outer) - below :], *self.stack]
            depth = len(self.metastack)
        else:
            depth = len(self.stack)
            inputs = self.stack[depth - below :]
        try:
            load(self)
        except Exception as exc:
            if marked:
                if len(self.metastack) == depth:  # it failed before taking the mark off
                    self.stack = self.metastack.pop()
                    self.append = self.stack.append
                del self.stack[len(self.stack) - below :]
            else:
                del self.stack[depth - below :]
            broken = next((x for x in inputs if isinstance(x, Broken)), None) or Broken(exc)
            if fills and inputs and not isinstance(inputs[0], Broken):
                # Half built, and maybe shared (memoised): a part that holds it is broken.
                self.spoiled[id(inputs[0])] = (inputs[0], broken)
            self.stack.extend([broken] * pushes)
            self.failures += 1

    return run


def _dispatch() -> dict[int, Callable[[Any], None]]:
    table: dict[int, Callable[[Any], None]] = dict(pickle._Unpickler.dispatch)
    for info in pickletools.opcodes:
        if info.name in _USER_CODE:
            code = info.code.encode("latin-1")[0]
            table[code] = _tolerant(info, table[code])
    return table


class Tolerant(pickle._Unpickler):
    """The pure-Python unpickler, with every opcode that runs user code made tolerant."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = _dispatch()

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.spoiled: dict[int, tuple[Any, Broken]] = {}
        self.failures = 0


# Objects whose references are code, not data: never looked through.
_OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.CodeType,
)


class Salvaged:
    """A salvaged pickle: ``value``, with placeholders where values failed."""

    def __init__(self, value: Any, spoiled: dict[int, tuple[Any, Broken]], failures: int) -> None:
        self.value = value
        self.failures = failures  # opcodes that failed (0: the value is whole)
        self._spoiled = spoiled

    def error_in(self, part: Any) -> BaseException | None:
        """Why ``part`` of the value could not be unpickled whole (None: it is whole)."""
        if not self.failures:
            return None
        seen: set[int] = set()
        todo = [part]
        while todo:
            obj = todo.pop()
            if isinstance(obj, Broken):
                return obj.error
            if id(obj) in seen or isinstance(obj, _OPAQUE):
                continue
            seen.add(id(obj))
            spoiled = self._spoiled.get(id(obj))
            if spoiled is not None and spoiled[0] is obj:
                return spoiled[1].error
            todo.extend(gc.get_referents(obj))
        return None


def salvage(data: bytes, unpickler: type[Tolerant] = Tolerant, **kwargs: Any) -> Salvaged:
    """Load ``data`` with ``unpickler`` (a :class:`Tolerant`; ``kwargs`` go to it),
    leaving placeholders where values fail. Raises only if ``data`` is not a pickle."""
    u = unpickler(io.BytesIO(data), **kwargs)
    value = u.load()
    return Salvaged(value, u.spoiled, u.failures)
