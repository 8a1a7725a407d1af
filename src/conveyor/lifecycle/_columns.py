"""The data forms a drift reference or window takes, made into named columns.

A mapping ``name -> 1-D values`` (or ONE row: ``name -> scalar``), a 2-D NumPy array
(columns ``x0``..``xN-1`` unless named), a list of dict rows, or a pandas DataFrame
(duck-typed: anything with ``columns`` and ``to_numpy``). An embedding column holds a
2-D array (rows x dims), a list of vectors, or one vector for one row.

Imported only when a drift check runs: NumPy is the lifecycle extra.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from conveyor.errors import LifecycleError

MISSING = "<missing>"  # the category of None, NaN and a missing key
OTHER = "<other>"  # the category of values outside the reference's top values


def as_columns(
    data: Any, *, columns: Sequence[str] | None = None, embeddings: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], int]:
    """``data`` as ``({name: values}, rows)``; values stay as given (converted later,
    once the column's kind is known)."""
    if data is None:
        return {}, 0
    if hasattr(data, "columns") and hasattr(data, "to_numpy") and not isinstance(data, np.ndarray):
        cols = {str(c): data[c].to_numpy() for c in data.columns}
    elif isinstance(data, np.ndarray):
        cols = _from_array(data, columns)
    elif isinstance(data, Mapping):
        cols = _from_mapping(data, embeddings)
    elif isinstance(data, (list, tuple)):
        cols = _from_rows(data)
    else:
        raise LifecycleError(
            f"drift data of type {type(data).__name__} is not understood: pass a mapping of "
            "columns, a 2-D NumPy array, a list of dict rows or a pandas DataFrame"
        )
    lengths = {name: len(values) for name, values in cols.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise LifecycleError(
            f"drift data's columns have different lengths ({shown}): pass one value per row in every column"
        )
    return cols, next(iter(lengths.values()), 0)


def _from_array(data: Any, columns: Sequence[str] | None) -> dict[str, Any]:
    if data.ndim != 2:
        raise LifecycleError(
            f"a NumPy array of drift data must be 2-D (rows x columns), not {data.ndim}-D: "
            "reshape it, or pass {'name': values}"
        )
    names = (
        [f"x{i}" for i in range(data.shape[1])] if columns is None else [str(c) for c in columns]
    )
    if len(names) != data.shape[1]:
        raise LifecycleError(
            f"columns= names {len(names)} columns but the array has {data.shape[1]}: name each column once"
        )
    return {name: data[:, i] for i, name in enumerate(names)}


def _from_mapping(data: Mapping[Any, Any], embeddings: frozenset[str]) -> dict[str, Any]:
    def scalar(name: str, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or value is None:
            return name not in embeddings
        try:
            return bool(np.ndim(value) == (1 if name in embeddings else 0))
        except ValueError:  # a ragged list
            return False

    cols = {str(k): v for k, v in data.items()}
    if cols and all(scalar(k, v) for k, v in cols.items()):  # one row
        return {
            k: (np.asarray([v], dtype=float) if k in embeddings else _one(v))
            for k, v in cols.items()
        }
    for name, values in cols.items():
        if not hasattr(values, "__len__") or isinstance(values, (str, bytes)):
            raise LifecycleError(
                f"drift column {name!r} holds one value ({type(values).__name__}) while others "
                "hold many: pass one value per row in every column, or one row {'name': value}"
            )
    return cols


def _one(value: Any) -> Any:
    out = np.empty(1, dtype=object)
    out[0] = value
    return out


def _from_rows(rows: Sequence[Any]) -> dict[str, Any]:
    keys: dict[str, None] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise LifecycleError(
                f"a list of drift rows must hold dicts, but row {i} is a {type(row).__name__}: "
                "pass [{'name': value, ...}, ...] or {'name': values}"
            )
        keys.update(dict.fromkeys(str(k) for k in row))
    cols: dict[str, Any] = {}
    for key in keys:
        col = np.empty(len(rows), dtype=object)
        col[:] = [row.get(key) for row in rows]
        cols[key] = col
    return cols


def as_1d(name: str, values: Any) -> Any:
    try:
        arr = np.asarray(values)
    except ValueError:
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
    if arr.ndim != 1:
        raise LifecycleError(
            f"drift column {name!r} must be 1-D (one value per row), not shape {arr.shape}"
        )
    return arr


def is_text(arr: Any) -> bool:
    """The column holds strings, bools or other non-numbers (categorical by default)."""
    if arr.dtype.kind in "USb":
        return True
    if arr.dtype.kind != "O":
        return False
    return any(
        isinstance(v, (str, bytes, bool, np.bool_))
        or not (absent(v) or isinstance(v, (int, float, np.number)))
        for v in arr
    )


def to_float(name: str, values: Any) -> Any:
    """A numeric column as float64; None becomes NaN (missing). Strings are refused."""
    arr = as_1d(name, values)
    kind = arr.dtype.kind
    if kind in "fiub":
        return arr.astype(np.float64, copy=False)
    for row, v in enumerate(arr.tolist() if kind != "O" else arr):
        if not (absent(v) or isinstance(v, (int, float, np.number))) or isinstance(v, bool):
            raise LifecycleError(
                f"drift column {name!r} is numeric in the reference but row {row} holds "
                f"{v!r} ({type(v).__name__}): send numbers (None or NaN for a missing value), "
                f"or fit the reference with categorical=[{name!r}]"
            )
    return np.array([np.nan if absent(v) else float(v) for v in arr], dtype=np.float64)


def absent(value: Any) -> bool:
    """None, or pandas' NA and NaT (duck-typed: pandas is not needed)."""
    return value is None or type(value).__name__ in ("NAType", "NaTType")


def category_counts(values: Any) -> Counter[str]:
    """How many times each value occurs, by its key (see :func:`category_key`)."""
    arr = as_1d("", values)
    if arr.dtype.kind in "fiu":
        x = arr.astype(np.float64, copy=False)
        nan = np.isnan(x)
        uniq, counts = np.unique(x[~nan], return_counts=True)
        out: Counter[str] = Counter()
        for u, c in zip(uniq.tolist(), counts.tolist(), strict=True):
            out[category_key(u)] += c
        if nan.any():
            out[MISSING] += int(nan.sum())
        return out
    if arr.dtype.kind in "USb":
        uniq, counts = np.unique(arr, return_counts=True)
        return Counter(
            {category_key(u): int(c) for u, c in zip(uniq.tolist(), counts.tolist(), strict=True)}
        )
    return Counter(category_key(v) for v in arr)


def category_key(value: Any) -> str:
    """One category's name: 1 and 1.0 are the same, None and NaN are missing."""
    if absent(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.number)):
        x = float(value)
        if x != x:
            return MISSING
        return str(int(x)) if x.is_integer() else repr(x)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def to_matrix(name: str, values: Any, dims: int | None = None) -> Any:
    """An embedding column as a float64 matrix (rows x dims)."""
    try:
        arr = (
            np.asarray(values, dtype=np.float64)
            if not _object_rows(values)
            else np.stack(list(values)).astype(np.float64)
        )
    except (TypeError, ValueError) as exc:
        raise LifecycleError(
            f"embedding {name!r} must be numbers, one vector of the same length per row: {exc}"
        ) from None
    if arr.ndim != 2 or (arr.shape[0] and arr.shape[1] == 0):
        raise LifecycleError(f"embedding {name!r} must be 2-D (rows x dims), not shape {arr.shape}")
    if dims is not None and arr.shape[0] and arr.shape[1] != dims:
        raise LifecycleError(
            f"embedding {name!r} has {dims} dims in the reference but {arr.shape[1]} here: "
            "send vectors from the same model, or fit a new reference"
        )
    return arr


def _object_rows(values: Any) -> bool:
    return isinstance(values, np.ndarray) and values.dtype.kind == "O" and values.ndim == 1
