"""Fingerprints: stable digests of values and of a function's code.

A fingerprint is the SHA-256 of a typed encoding (:mod:`conveyor.cache._values`),
so it is the same in every process and every run (never ``hash()``, which is salted
per process), and values of different types never collide: ``1``, ``1.0``,
``True``, ``"1"`` and ``b"1"`` all differ, as do ``[1, 2]`` and ``(1, 2)``.

    fingerprint_value(obj)      the input's half of a cache key; None when ``obj``
                                holds something it cannot encode faithfully
    fingerprint_function(fn)    the code's half: what the function computes with,
                                followed transitively (:mod:`conveyor.cache._code`);
                                FingerprintError when some of that cannot be
                                fingerprinted
    register_fingerprint(cls, encode)
                                teach both a type of your own (or a library's)
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Any

from conveyor.cache._code import Code
from conveyor.cache._values import _SIMPLE, Refused, register_fingerprint
from conveyor.errors import FingerprintError

__all__ = [
    "CodeFingerprint",
    "code_fingerprint",
    "explain_value",
    "fingerprint_function",
    "fingerprint_pipeline",
    "fingerprint_value",
    "register_fingerprint",
]

FORMAT = b"conveyor-fingerprint/2"


def fingerprint_value(obj: Any) -> str | None:
    """A stable hex digest of ``obj``'s content, or None when it cannot be fingerprinted
    (an open file, a lock, a reference cycle...)."""
    digest, _ = explain_value(obj)
    return digest


def explain_value(
    obj: Any, *, memo: dict[int, tuple[type, bytes]] | None = None
) -> tuple[str | None, str | None]:
    """``(digest, None)``, or ``(None, what)`` naming the part that cannot be
    fingerprinted, e.g. ``"a _thread.lock"``. ``memo``: the digests of classes met
    so far, shared by the inputs of one task so that a class is walked once there."""
    h = hashlib.sha256(FORMAT)
    simple = _SIMPLE.get(type(obj))
    if simple is not None:  # the common case, without a walker
        tag, encode = simple
        payload = encode(obj)
        h.update(tag + struct.pack(">Q", len(payload)) + payload)
        return h.hexdigest(), None
    try:
        Code(h.update, memo=memo).value(obj)
    except Refused as exc:
        return None, exc.what
    except RecursionError:
        return None, "a value nested too deeply"
    except Exception as exc:  # an object that misbehaves when looked at: not cacheable
        return None, f"a {type(obj).__qualname__} (reading it raised {type(exc).__name__}: {exc})"
    return h.hexdigest(), None


@dataclasses.dataclass(frozen=True)
class CodeFingerprint:
    """A function's code fingerprint, with what it did not read: ``named`` (library
    functions and state, and builtins such as ``open``, followed by name only) and
    ``refused`` (values counted by their type alone, when not strict)."""

    digest: str
    named: tuple[str, ...]
    refused: tuple[str, ...]


def code_fingerprint(fn: Any, *, strict: bool = True) -> CodeFingerprint:
    """:func:`fingerprint_function`, with what it covered by name only. ``strict=False``
    counts a value that cannot be fingerprinted by its type instead of raising."""
    from conveyor.core.stage import Stage

    if isinstance(fn, Stage):
        fn = fn.fn
    label = getattr(fn, "__qualname__", type(fn).__qualname__)
    if not callable(fn):
        raise FingerprintError(f"cannot fingerprint {label}: {fn!r} is not callable")
    h = hashlib.sha256(FORMAT + b"/function")
    walker = Code(h.update, strict=strict)
    try:
        walker.reference(fn, label)
    except Refused as exc:
        raise FingerprintError(
            f"cannot fingerprint {exc.where or label}: it holds {exc.what}"
        ) from None
    except RecursionError:
        raise FingerprintError(
            f"cannot fingerprint {label}: what it refers to is nested too deeply"
        ) from None
    return CodeFingerprint(h.hexdigest(), tuple(sorted(walker.named)), tuple(walker.refused))


def fingerprint_function(fn: Any) -> str:
    """A stable hex digest of what ``fn`` computes with: its source and bytecode, the
    values its closure holds, its defaults, and every global it reads, followed
    transitively through the user's functions, classes (their methods and class
    attributes) and instances (their state), and through attributes read on modules
    (``settings.FACTOR``). Library code is named with its version, not read. A
    ``functools.partial`` counts its arguments, a bound method or callable object its
    instance, a :class:`~conveyor.Stage` its function.

    Raises FingerprintError naming the variable whose value cannot be fingerprinted.
    """
    return code_fingerprint(fn).digest


def fingerprint_pipeline(pipeline: Any) -> str:
    """A stable hex digest of a pipeline's shape and code: each stage's name, policy
    and function fingerprint, and its edges. Values that cannot be fingerprinted count
    by their type here: this fingerprint tells whether a recorded run's pipeline
    changed, it keys no cached result."""
    h = hashlib.sha256(FORMAT + b"/pipeline")
    walker = Code(h.update, strict=False)
    walker.frame(b"P", pipeline.name.encode())
    for name in pipeline.order:
        s = pipeline.stages[name]
        version = getattr(s, "cache_version", None)
        walker.value((name, s.kind, s.size, s.split, tuple(pipeline.successors[name]), version))
        walker.frame(b"c", bytes.fromhex(code_fingerprint(s.fn, strict=False).digest))
    return h.hexdigest()
