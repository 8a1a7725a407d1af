"""The gate's metrics and its paired bootstrap, on NumPy.

Resampling rows with replacement only changes how many times each row is drawn, and
most metrics only depend on how many rows of each kind there are: accuracy on the
counts of (right, wrong) pairs, F1 on the confusion counts. So the rows are folded
into *cells* (the distinct values a metric can see: a pair of per-row scores, or a
(label, candidate, champion) triple) and a resample is one multinomial draw of cell
counts, the exact distribution of the bootstrap, at the cost of the number of cells
instead of the number of rows. Accuracy on a million rows has at most four cells.
When the cells are nearly as many as the rows (an MAE on continuous values), rows are
drawn as indices instead, a chunk of resamples at a time. A metric given as a callable
is recomputed on each resample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.errors import LifecycleError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    Array = NDArray[Any]

# Elements of one chunk of resampled indices or counts (float64: 32 MiB).
_CHUNK_ELEMENTS = 1 << 22


def numpy() -> Any:
    """NumPy, or one line saying which extra to install."""
    try:
        import numpy as np
    except ImportError:
        raise LifecycleError(
            "the gate needs the lifecycle extra: pip install 'conveyor[lifecycle]'"
        ) from None
    return np


@dataclass(frozen=True)
class Metric:
    """A metric the gate knows: per-row scores (``rowwise``, whose mean is the metric)
    or a whole-sample function (``fn``)."""

    name: str
    greater_is_better: bool
    rowwise: Callable[[Array, Array], Array] | None = None
    fn: Callable[[Any, Any], float] | None = None
    unit: bool = False  # a score between 0 and 1, shown with 3 decimals


def _correct(y: Array, p: Array) -> Array:
    return (y == p).astype(float)


def _wrong(y: Array, p: Array) -> Array:
    return (y != p).astype(float)


def _absolute(y: Array, p: Array) -> Array:
    return abs(y.astype(float) - p.astype(float))


def _squared(y: Array, p: Array) -> Array:
    return (y.astype(float) - p.astype(float)) ** 2


METRICS = {
    "accuracy": Metric("accuracy", True, rowwise=_correct, unit=True),
    "error_rate": Metric("error_rate", False, rowwise=_wrong, unit=True),
    "mae": Metric("mae", False, rowwise=_absolute),
    "mse": Metric("mse", False, rowwise=_squared),
    "f1_macro": Metric("f1_macro", True, unit=True),
}


def resolve_metric(metric: Any, greater_is_better: bool) -> Metric:
    if callable(metric):
        name = getattr(metric, "__name__", type(metric).__name__)
        return Metric(name, bool(greater_is_better), fn=metric)
    if isinstance(metric, str) and metric in METRICS:
        return METRICS[metric]
    raise LifecycleError(
        f"unknown metric {metric!r}: use one of {', '.join(sorted(METRICS))}, or pass a "
        "callable (y_true, y_pred) -> float with metric_greater_is_better="
    )


# --- cells and counts ---------------------------------------------------------------------


def _count_chunks(inverse: Array, cells: int, resamples: int, rng: Any) -> Iterator[Array]:
    """Cell counts of ``resamples`` bootstrap resamples of the rows, in chunks of shape
    (b, cells): multinomial draws when the cells are few, drawn indices otherwise."""
    np = numpy()
    n = len(inverse)
    if cells <= max(1, n // 4):
        p = np.bincount(inverse, minlength=cells) / n
        per = max(1, _CHUNK_ELEMENTS // cells)
        for start in range(0, resamples, per):
            yield rng.multinomial(n, p, size=min(per, resamples - start)).astype(float)
        return
    per = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, resamples, per):
        b = min(per, resamples - start)
        idx = _indices(rng, n, b)
        codes = inverse[idx] + (np.arange(b) * cells)[:, None]
        yield np.bincount(codes.ravel(), minlength=b * cells).reshape(b, cells).astype(float)


def _rowwise_samples(
    metric: Metric, y: Array, preds: list[Array], resamples: int, rng: Any
) -> tuple[list[float], list[Array]]:
    np = numpy()
    assert metric.rowwise is not None
    scores = [metric.rowwise(y, p) for p in preds]
    points = [float(s.mean()) for s in scores]
    n = len(y)
    distinct = [np.unique(s, return_inverse=True) for s in scores]
    if max(len(values) for values, _ in distinct) > n // 4:
        # continuous scores: about as many cells as rows, so draw indices
        out: list[list[Array]] = [[] for _ in preds]
        per = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, resamples, per):
            idx = _indices(rng, n, min(per, resamples - start))
            for j, s in enumerate(scores):
                out[j].append(s[idx].mean(axis=1))
        return points, [np.concatenate(o) for o in out]
    # A cell is a distinct tuple of per-row scores, one score per model.
    code = distinct[0][1].ravel().astype(np.int64)
    for values, inverse in distinct[1:]:
        code = code * len(values) + inverse.ravel()
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    cells = np.stack([s[first] for s in scores], axis=1)
    chunks = _count_chunks(inverse.ravel(), len(first), resamples, rng)
    drawn = np.concatenate([c @ cells / n for c in chunks])
    return points, [drawn[:, j] for j in range(len(preds))]


def _indices(rng: Any, n: int, b: int) -> Array:
    """``b`` resamples of ``n`` row indices (32-bit where they fit: faster to draw)."""
    np = numpy()
    return rng.integers(0, n, size=(b, n), dtype=np.int32 if n < 2**31 else np.int64)


def _f1_from_counts(counts: Array, y: Array, p: Array, classes: int) -> Array:
    """Macro F1 for each row of cell counts (cells labelled ``y``, predicted ``p``), as
    scikit-learn computes it: over the classes that occur in the labels or the
    predictions of that resample."""
    np = numpy()
    onehot_y = np.eye(classes)[y]
    onehot_p = np.eye(classes)[p]
    tp = counts @ (onehot_y * onehot_p)
    true = counts @ onehot_y
    predicted = counts @ onehot_p
    denom = true + predicted
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _f1_samples(
    y: Array, preds: list[Array], resamples: int, rng: Any
) -> tuple[list[float], list[Array]]:
    np = numpy()
    labels, codes = np.unique(np.concatenate([y, *preds]), return_inverse=True)
    k = len(labels)
    codes = codes.ravel().reshape(len(preds) + 1, len(y))  # rows: y, each model
    if k ** len(codes) < 2**62:  # one integer per (label, predictions) cell
        flat = np.zeros(len(y), dtype=np.int64)
        for c in codes:
            flat = flat * k + c
        _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
        cells = codes[:, first].T
    else:
        cells, inverse = np.unique(codes.T, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    whole = np.bincount(inverse, minlength=len(cells)).astype(float)[None, :]
    points = [
        float(_f1_from_counts(whole, cells[:, 0], cells[:, j + 1], k)[0]) for j in range(len(preds))
    ]
    samples: list[list[Array]] = [[] for _ in preds]
    for counts in _count_chunks(inverse, len(cells), resamples, rng):
        for j in range(len(preds)):
            samples[j].append(_f1_from_counts(counts, cells[:, 0], cells[:, j + 1], k))
    return points, [np.concatenate(s) for s in samples]


def _callable_samples(
    metric: Metric, y: Array, preds: list[Array], resamples: int, rng: Any
) -> tuple[list[float], list[Array]]:
    np = numpy()
    assert metric.fn is not None
    fn = metric.fn

    def score(yy: Array, pp: Array) -> float:
        try:
            value = float(fn(yy, pp))
        except Exception as exc:
            raise LifecycleError(
                f"the metric {metric.name} raised {type(exc).__name__}: {exc}; it is called "
                "as metric(y_true, y_pred) with two NumPy arrays and must return a number"
            ) from exc
        if value != value:
            raise LifecycleError(
                f"the metric {metric.name} returned NaN; it must return a number for "
                "every resample of the rows"
            )
        return value

    points = [score(y, p) for p in preds]
    n = len(y)
    samples = np.empty((resamples, len(preds)))
    for i in range(resamples):
        idx = rng.integers(0, n, size=n)
        for j, p in enumerate(preds):
            samples[i, j] = score(y[idx], p[idx])
    return points, [samples[:, j] for j in range(len(preds))]


def bootstrap(
    metric: Metric, y: Array, preds: list[Array], resamples: int, seed: Any
) -> tuple[list[float], list[Array]]:
    """Each model's score on the rows, and its scores on ``resamples`` paired resamples
    of them (the same rows for every model, resample i of one with resample i of the
    other)."""
    np = numpy()
    rng = np.random.default_rng(seed)
    if metric.rowwise is not None:
        return _rowwise_samples(metric, y, preds, resamples, rng)
    if metric.fn is None:
        return _f1_samples(y, preds, resamples, rng)
    return _callable_samples(metric, y, preds, resamples, rng)


def interval(samples: Array, confidence: float) -> tuple[float, float]:
    """The percentile interval of bootstrap ``samples`` at ``confidence``."""
    np = numpy()
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
