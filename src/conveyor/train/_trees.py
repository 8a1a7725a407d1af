"""What layers pass each other: a tensor, or nested tuples, lists and dicts of tensors.

An ``nn.Sequential`` hands each layer's output, whole, to the next, so a layer may
return ``(hidden, mask)`` or ``{"hidden": h, "mask": m}`` and the next take it.
The profiler needs the tensors inside (to time, to ask gradients of, to count
bytes) and the same structure back (to call the next layer); these helpers walk
tuples (named ones too), lists and dicts, and leave any other value as it is.

    leaves(({"h": h}, mask))          [h, mask]
    map_tensors(f, ({"h": h}, mask))  ({"h": f(h)}, f(mask))
    describe(({"h": h}, mask))        "({'h': (32, 8)}, (32,) bool)"

No torch import: a tensor is anything with ``shape``, ``dtype`` and ``numel``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "crosses_a_cut",
    "describe",
    "is_tensor",
    "leaves",
    "map_tensors",
    "nbytes",
    "rows_of",
    "signature",
    "take_rows",
]


def is_tensor(obj: Any) -> bool:
    """True for a tensor itself (anything with a shape, a dtype and a numel)."""
    return hasattr(obj, "shape") and hasattr(obj, "dtype") and hasattr(obj, "numel")


def crosses_a_cut(obj: Any) -> bool:
    """True when a stage boundary can pass ``obj``: a tensor, or a non-empty tuple, list
    or dict of tensors (what the runtime's stage modules send and pack back)."""
    if is_tensor(obj):
        return True
    values = list(obj.values()) if isinstance(obj, dict) else obj
    return isinstance(values, (tuple, list)) and bool(values) and all(map(is_tensor, values))


def map_tensors(fn: Callable[[Any], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it, the structure kept."""
    if is_tensor(obj):
        return fn(obj)
    if isinstance(obj, tuple):
        items = [map_tensors(fn, x) for x in obj]
        # a named tuple is rebuilt by field, a plain one from the list
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [map_tensors(fn, x) for x in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    return obj


def leaves(obj: Any) -> list[Any]:
    """Every tensor in ``obj``, depth first, dicts in their own order."""
    out: list[Any] = []
    map_tensors(out.append, obj)
    return out


def take_rows(obj: Any, rows: int) -> Any:
    """The first ``rows`` rows (along dimension 0) of every tensor with at least one dimension."""
    return map_tensors(lambda t: t[:rows] if len(t.shape) else t, obj)


def rows_of(obj: Any) -> int:
    """Dimension 0 of the first tensor that has one; raises ValueError when none has."""
    for t in leaves(obj):
        if len(t.shape):
            return int(t.shape[0])
    raise ValueError("no tensor with a batch dimension")


def nbytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj``."""
    return sum(int(t.numel()) * int(t.element_size()) for t in leaves(obj))


def _shape(t: Any) -> str:
    dims = tuple(int(d) for d in t.shape)
    kind = str(t.dtype).replace("torch.", "")
    return f"{dims}" if kind == "float32" else f"{dims} {kind}"


def describe(obj: Any) -> str:
    """Shapes (and dtypes other than float32) in ``obj``'s structure, for error messages."""
    if is_tensor(obj):
        return _shape(obj)
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(describe(x) for x in obj)
        return (
            f"({inner}{',' if len(obj) == 1 else ''})" if isinstance(obj, tuple) else f"[{inner}]"
        )
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in obj.items()) + "}"
    return type(obj).__name__


def signature(obj: Any) -> Any:
    """``obj``'s structure with each tensor as ``[shape, dtype]``: JSON-ready, for cache keys."""
    if is_tensor(obj):
        return [[int(d) for d in obj.shape], str(obj.dtype)]
    if isinstance(obj, (tuple, list)):
        return [type(obj).__name__, [signature(x) for x in obj]]
    if isinstance(obj, dict):
        return ["dict", [[str(k), signature(v)] for k, v in obj.items()]]
    return [type(obj).__name__, repr(obj)]
