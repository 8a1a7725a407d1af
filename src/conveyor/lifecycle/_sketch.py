"""A feature's fixed-size summary (its sketch) and a window's counts against it (its tally).

- numeric: the bin edges at the reference's quantiles (``bins`` bins, fewer when values
  tie), counts per bin plus one bin for missing values (None, NaN, +-inf) after the
  largest, and n, mean, std, min, max of the finite values;
- categorical: the counts of the top values, of every other value, of missing ones;
- embedding: the centroid (mean row), and a numeric sketch of each row's cosine
  distance to it; a tally also keeps the sum of its rows, for the centroid shift.

A tally's arrays have the sketch's size whatever the number of rows it counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conveyor.errors import LifecycleError
from conveyor.lifecycle import _tests
from conveyor.lifecycle._columns import MISSING, category_counts, to_float, to_matrix


def _bins_of(edges: Any, x: Any) -> Any:
    """Counts of ``x`` per bin of ``edges``, the last bin for non-finite values."""
    finite = np.isfinite(x)
    seen = int(finite.sum())
    idx = np.searchsorted(edges, x if seen == len(x) else x[finite], side="right")
    counts = np.bincount(idx, minlength=len(edges) + 2)
    counts[-1] += len(x) - seen
    return counts.astype(np.int64)


class NumericSketch:
    kind = "numeric"
    test = "ks"

    def __init__(self, name: str, edges: Any, counts: Any, moments: dict[str, float]) -> None:
        self.name, self.edges, self.counts, self.moments = name, edges, counts, moments

    @classmethod
    def fit(cls, name: str, x: Any, bins: int, *, ordered: Any = None) -> NumericSketch:
        finite = np.sort(x[np.isfinite(x)]) if ordered is None else ordered
        if not len(finite):
            raise LifecycleError(
                f"drift column {name!r} has no finite value in the reference: fit it on rows "
                "where it is measured, or leave the column out"
            )
        at = np.round(np.linspace(0, len(finite) - 1, bins + 1)[1:-1]).astype(np.int64)
        edges = np.unique(finite[at])
        moments = {
            "n": float(len(finite)),
            "mean": float(finite.mean()),
            "std": float(finite.std()),
            "min": float(finite[0]),
            "max": float(finite[-1]),
        }
        return cls(name, edges, _bins_of(edges, x), moments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            **self.moments,
        }

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> NumericSketch:
        moments = {k: float(d[k]) for k in ("n", "mean", "std", "min", "max")}
        return cls(
            name,
            np.asarray(d["edges"], dtype=np.float64),
            np.asarray(d["counts"], dtype=np.int64),
            moments,
        )

    def tally(self) -> NumericTally:
        return NumericTally(self)

    def compare(self, tally: NumericTally) -> dict[str, Any]:
        ref, win = self.counts, tally.counts
        d, p = _tests.binned_ks(ref, win)
        lo = min(self.moments["min"], float(tally.bounds[0]))
        hi = max(self.moments["max"], float(tally.bounds[1]))
        w = _tests.binned_wasserstein(self.edges, ref[:-1], win[:-1], lo, hi)
        std = self.moments["std"]
        return {
            "test": self.test,
            "statistic": d,
            "p_value": p,
            "distance": w / std if std > 0 else w,
            "missing": _share(win[-1], win),
            "reference_missing": _share(ref[-1], ref),
        }


class NumericTally:
    def __init__(self, sketch: NumericSketch) -> None:
        self.sketch = sketch
        self.counts = np.zeros(len(sketch.counts), dtype=np.int64)
        self.bounds = np.array([np.inf, -np.inf])  # the window's finite min and max

    def add(self, values: Any) -> None:
        self.add_floats(to_float(self.sketch.name, values))

    def add_floats(self, x: Any) -> None:
        self.counts += _bins_of(self.sketch.edges, x)
        lo, hi = (float(np.min(x)), float(np.max(x))) if len(x) else (np.nan, np.nan)
        if not (np.isfinite(lo) and np.isfinite(hi)):  # rare: a NaN or inf among them
            finite = x[np.isfinite(x)]
            lo, hi = (
                (float(finite.min()), float(finite.max())) if len(finite) else (np.inf, -np.inf)
            )
        self.bounds[0] = min(self.bounds[0], lo)
        self.bounds[1] = max(self.bounds[1], hi)

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes + self.bounds.nbytes)


class CategoricalSketch:
    kind = "categorical"
    test = "chi2"

    def __init__(self, name: str, values: list[str], counts: Any) -> None:
        # counts: one per value in ``values``, then OTHER, then MISSING
        self.name, self.values, self.counts = name, values, counts
        self.index = {v: i for i, v in enumerate(values)}

    @classmethod
    def fit(cls, name: str, raw: Any, top: int) -> CategoricalSketch:
        seen = category_counts(raw)
        missing = seen.pop(MISSING, 0)
        ranked = sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))
        values = [v for v, _ in ranked[:top]]
        other = sum(c for _, c in ranked[top:])
        return cls(
            name, values, np.array([seen[v] for v in values] + [other, missing], dtype=np.int64)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": self.values, "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> CategoricalSketch:
        return cls(name, [str(v) for v in d["values"]], np.asarray(d["counts"], dtype=np.int64))

    def tally(self) -> CategoricalTally:
        return CategoricalTally(self)

    def compare(self, tally: CategoricalTally) -> dict[str, Any]:
        ref, win = self.counts, tally.counts
        stat, p = _tests.chi2_counts(ref, win)
        return {
            "test": self.test,
            "statistic": stat,
            "p_value": p,
            "distance": _tests.js_distance(ref, win),
            "missing": _share(win[-1], win),
            "reference_missing": _share(ref[-1], ref),
        }


class CategoricalTally:
    def __init__(self, sketch: CategoricalSketch) -> None:
        self.sketch = sketch
        self.counts = np.zeros(len(sketch.counts), dtype=np.int64)

    def add(self, values: Any) -> None:
        other, missing = len(self.counts) - 2, len(self.counts) - 1
        for key, c in category_counts(values).items():
            at = missing if key == MISSING else self.sketch.index.get(key, other)
            self.counts[at] += c

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes)


class EmbeddingSketch:
    kind = "embedding"
    test = "ks"

    def __init__(self, name: str, centroid: Any, distances: NumericSketch) -> None:
        self.name, self.centroid, self.distances = name, centroid, distances

    @classmethod
    def fit(cls, name: str, raw: Any, bins: int) -> EmbeddingSketch:
        rows = to_matrix(name, raw)
        usable = rows[np.isfinite(rows).all(axis=1)]
        centroid = usable.mean(axis=0) if len(usable) else np.zeros(rows.shape[1])
        if not np.linalg.norm(centroid) > 0:
            raise LifecycleError(
                f"embedding {name!r} has a zero centroid in the reference (its rows cancel out, "
                "or none is finite): the cosine distance to it is undefined; fit on more rows"
            )
        return cls(name, centroid, NumericSketch.fit(name, cosine_distances(rows, centroid), bins))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "centroid": self.centroid.tolist(),
            "distances": self.distances.to_dict(),
        }

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> EmbeddingSketch:
        return cls(
            name,
            np.asarray(d["centroid"], dtype=np.float64),
            NumericSketch.from_dict(name, d["distances"]),
        )

    def tally(self) -> EmbeddingTally:
        return EmbeddingTally(self)

    def compare(self, tally: EmbeddingTally) -> dict[str, Any]:
        ref, win = self.distances.counts, tally.distances.counts
        d, p = _tests.binned_ks(ref, win)
        shift = None
        if tally.used > 0:
            shift = float(cosine_distances(tally.total[None, :] / tally.used, self.centroid)[0])
        return {
            "test": self.test,
            "statistic": d,
            "p_value": p,
            "distance": _tests.js_distance(ref, win),
            "missing": _share(win[-1], win),
            "reference_missing": _share(ref[-1], ref),
            "centroid_shift": None if shift is None or shift != shift else shift,
        }


class EmbeddingTally:
    def __init__(self, sketch: EmbeddingSketch) -> None:
        self.sketch = sketch
        self.distances = NumericTally(sketch.distances)
        self.total = np.zeros(len(sketch.centroid))  # the sum of the finite rows
        self.used = 0

    def add(self, values: Any) -> None:
        rows = to_matrix(self.sketch.name, values, len(self.sketch.centroid))
        self.distances.add_floats(cosine_distances(rows, self.sketch.centroid))
        finite = np.isfinite(rows).all(axis=1)
        self.total += rows[finite].sum(axis=0)
        self.used += int(finite.sum())

    @property
    def nbytes(self) -> int:
        return int(self.distances.nbytes + self.total.nbytes)


def cosine_distances(rows: Any, centroid: Any) -> Any:
    """1 - cos(row, centroid) per row; NaN (missing) for a zero or non-finite row."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(centroid)
        out = 1.0 - (rows @ centroid) / norms
    out[~(norms > 0) | ~np.isfinite(norms)] = np.nan
    return out


def _share(part: Any, counts: Any) -> float:
    total = int(counts.sum())
    return int(part) / total if total else 0.0


SKETCHES: dict[str, Any] = {
    "numeric": NumericSketch,
    "categorical": CategoricalSketch,
    "embedding": EmbeddingSketch,
}
