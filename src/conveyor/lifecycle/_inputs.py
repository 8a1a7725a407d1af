"""What the gate is given, checked: settings, labels, each model's predictions, slice
labels. Every bad input is a LifecycleError that names the thing and the fix."""

from __future__ import annotations

import math
from typing import Any

from conveyor.errors import LifecycleError
from conveyor.lifecycle._metrics import numpy


def check_settings(
    confidence: float,
    resamples: int,
    min_effect: float,
    max_regression: float,
    seed: int,
    names: tuple[str, str],
) -> None:
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise LifecycleError(
            f"confidence={confidence!r} must lie strictly between 0 and 1, e.g. 0.95"
        )
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise LifecycleError(
            f"resamples={resamples!r} is too few for a bootstrap interval: use at least "
            "100 (2000, the default, keeps the bounds steady to about 0.1 of their width)"
        )
    if not isinstance(min_effect, (int, float)) or not math.isfinite(min_effect):
        raise LifecycleError(f"min_effect={min_effect!r} must be a finite number, e.g. 0.01")
    if not isinstance(max_regression, (int, float)) or not 0 <= max_regression < math.inf:
        raise LifecycleError(
            f"max_slice_regression={max_regression!r} must be a finite number >= 0, e.g. 0.02"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LifecycleError(f"seed={seed!r} must be an integer >= 0")
    if len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise LifecycleError(f"names={names!r} must be two strings, e.g. ('v7', 'v6')")


def check_bounds(minimum: Any, min_slice_rows: Any) -> None:
    if minimum is not None and (
        isinstance(minimum, bool)
        or not isinstance(minimum, (int, float))
        or not math.isfinite(minimum)
    ):
        raise LifecycleError(f"minimum={minimum!r} must be a finite number, e.g. 0.9")
    if (
        isinstance(min_slice_rows, bool)
        or not isinstance(min_slice_rows, int)
        or min_slice_rows < 2
    ):
        raise LifecycleError(
            f"min_slice_rows={min_slice_rows!r} must be an integer >= 2 (30, the default, "
            "keeps a group's interval meaningful)"
        )


def _nan_rows(values: Any) -> int:
    np = numpy()
    if values.dtype.kind in "fc":
        return int((~np.isfinite(values)).sum())
    if values.dtype.kind == "O":
        return sum(1 for v in values if v != v)
    return 0


def labels_of(y: Any, X: Any) -> Any:
    np = numpy()
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.ravel()
    if labels.ndim != 1:
        raise LifecycleError(f"y must hold one label per row; got shape {labels.shape}")
    if not len(labels) or (X is not None and hasattr(X, "__len__") and len(X) == 0):
        raise LifecycleError(
            "X and y are empty: the gate needs rows to evaluate on (a held-out set)"
        )
    if X is not None and hasattr(X, "__len__") and len(X) != len(labels):
        raise LifecycleError(
            f"X has {len(X):,} rows but y has {len(labels):,}: give one label per row of X"
        )
    if nan := _nan_rows(labels):
        raise LifecycleError(
            f"y has {nan:,} NaN or infinite labels: drop those rows before the gate"
        )
    return labels


def _shape(X: Any) -> str:
    shape = getattr(X, "shape", None)
    if shape is not None:
        return str(tuple(shape))
    return f"({len(X)},)" if hasattr(X, "__len__") else type(X).__name__


def predictions_of(model: Any, name: str, X: Any, n: int) -> Any:
    np = numpy()
    if callable(model):
        try:
            out = model(X)
        except Exception as exc:
            raise LifecycleError(
                f"the {name} raised {type(exc).__name__}: {exc} on X of shape {_shape(X)}; "
                f"it is called once as {name}(X) and must return one prediction per row"
            ) from exc
    else:
        out = model
    preds = np.asarray(out)
    if preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds.ravel()
    if preds.ndim != 1:
        raise LifecycleError(
            f"the {name}'s predictions have shape {preds.shape}: give one prediction per "
            "row (for class probabilities, the labels: proba.argmax(axis=1))"
        )
    if len(preds) != n:
        raise LifecycleError(
            f"the {name}'s predictions have {len(preds):,} rows but y has {n:,}: give one "
            "prediction per row, in the order of y"
        )
    if nan := _nan_rows(preds):
        raise LifecycleError(
            f"the {name}'s predictions hold {nan:,} NaN or infinite values: a model must predict "
            "every row (fill or fix them before the gate)"
        )
    return preds


def slice_labels(name: str, spec: Any, X: Any, n: int) -> Any:
    np = numpy()
    if callable(spec):
        try:
            spec = spec(X)
        except Exception as exc:
            raise LifecycleError(
                f"slice {name!r} raised {type(exc).__name__}: {exc} on X of shape "
                f"{_shape(X)}; a slice callable takes X and returns one label per row"
            ) from exc
    labels = np.asarray(spec)
    if labels.ndim != 1 or len(labels) != n:
        raise LifecycleError(
            f"slice {name!r} has {len(labels) if labels.ndim else 0:,} labels (shape "
            f"{labels.shape}) for {n:,} rows: give one group label per row, in the order of y"
        )
    return labels
