"""Drift monitoring: does the data a model sees now still look like what it was trained on?

    ref = Reference.fit(train_features, embeddings={"text": vectors})
    window = ref.window()
    window.update(batch)                      # as often as batches come; counts only
    report = window.check(level=0.01)
    if report.drifted:
        print(report.summary())               # drift in 1 of 21 features: x3 (KS p=2e-09, W=0.31)

What a reference keeps (fixed size, whatever its rows; see ``_sketch``): per numeric
feature the bin edges at its quantiles with the counts per bin (missing values -- None,
NaN, +-inf -- in a bin after the largest), n, mean, std, min, max; per categorical
feature the counts of its top values, of the others, of missing ones; per embedding its
centroid and the binned cosine distances of its rows to it. A window keeps the same
counts for the rows it has seen: its memory does not grow with them.

The tests (Evidently's choices for a small reference, made to scale by binning):

- numeric: two-sample Kolmogorov-Smirnov on the reference's quantile bins. D measured
  at the bin edges is <= the exact D (and within one bin's share of it), so the p-value
  is conservative. The p-value is the Kolmogorov distribution's at the effective
  n = n*m/(n+m). Effect size: the Wasserstein distance over the reference's std.
  A rising share of missing values moves the CDF like any shift, and is caught alike.
- categorical (strings, bools, or <= 5 distinct values, or named in ``categorical=``):
  chi-squared on the 2 x k table of reference and window counts, a value the reference
  never saw counted as "other". Effect size: the Jensen-Shannon distance (base 2).
- embedding: the same KS on the distances to the reference centroid; effect size the
  Jensen-Shannon distance of those binned distances; the cosine distance between the
  two centroids is reported as ``centroid_shift``.

The alarm: a feature drifts when its p-value < ``level`` / (number of features)
(Bonferroni) and its distance >= ``min_distance``. So an unchanged source raises the
dataset alarm in at most ``level`` of windows. With huge windows any test flags tiny,
harmless shifts: ``min_distance`` (e.g. 0.1, Evidently's threshold) asks for a shift
that matters as well as one that is certain.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from conveyor.errors import LifecycleError

FORMAT = "conveyor.drift.reference"
VERSION = 1
CATEGORICAL_AT_MOST = 5  # distinct values: at most this many makes a column categorical
SUMMARY_FEATURES = 5  # drifted features named in a report's one-line summary
KINDS = ("numeric", "categorical", "embedding")


def _engine() -> Any:
    """The modules that need NumPy and SciPy, or one clear line saying how to get them."""
    try:
        from conveyor.lifecycle import _columns, _sketch
    except ImportError:
        raise LifecycleError(
            "drift checks need the lifecycle extra: pip install 'conveyor[lifecycle]'"
        ) from None
    return _columns, _sketch


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's test against the reference. ``distance`` is the effect size: the
    Wasserstein distance over the reference's std (numeric), the Jensen-Shannon
    distance (categorical, embedding). ``missing`` and ``reference_missing`` are the
    shares of missing values in the window and the reference."""

    name: str
    kind: str
    test: str
    statistic: float
    p_value: float
    distance: float
    drifted: bool
    missing: float = 0.0
    reference_missing: float = 0.0
    centroid_shift: float | None = None


@dataclass(frozen=True)
class DriftReport:
    """A window's check: one :class:`FeatureDrift` per reference column."""

    features: list[FeatureDrift]
    rows: int
    level: float
    min_distance: float = 0.0
    threshold: float = field(default=0.0)  # the p-value under which a feature drifts

    @property
    def drifted(self) -> bool:
        """The dataset-level alarm: at least one feature drifted."""
        return any(f.drifted for f in self.features)

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def summary(self) -> str:
        """One human line: ``drift in 3 of 64 features: x12 (KS p=2e-09, W=0.41), ...``,
        naming the ``SUMMARY_FEATURES`` most significant (the larger distance first among
        equal p-values) and counting the rest."""
        n = len(self.features)
        drifted = [f for f in self.features if f.drifted]
        if not drifted:
            return f"no drift in {n} features ({self.rows:,} rows, level {self.level:g})"
        ranked = sorted(drifted, key=lambda f: (f.p_value, -f.distance))
        shown = ", ".join(f"{f.name} ({_describe(f)})" for f in ranked[:SUMMARY_FEATURES])
        more = len(ranked) - SUMMARY_FEATURES
        if more > 0:
            shown += f" and {more} more (the evidence lists each)"
        return f"drift in {len(drifted)} of {n} features: {shown}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the evidence kept in the run store)."""
        return {
            "drifted": self.drifted,
            "rows": self.rows,
            "level": self.level,
            "min_distance": self.min_distance,
            "threshold": self.threshold,
            "drifted_features": self.drifted_features,
            "features": [asdict(f) for f in self.features],
        }


def _describe(f: FeatureDrift) -> str:
    test = "KS" if f.test == "ks" else f.test
    effect = "W" if f.kind == "numeric" else "JS"
    text = f"{test} p={f.p_value:.2g}, {effect}={f.distance:.2f}"
    if f.missing > f.reference_missing:
        text += f", missing {f.missing:.1%}"
    if f.centroid_shift is not None:
        text += f", centroid shift {f.centroid_shift:.3g}"
    return text


class Reference:
    """What "normal" looks like: fixed-size summaries of a data set's columns. Make one
    with :meth:`fit`, keep it with :meth:`to_bytes`, compare windows with :meth:`window`
    or :func:`check_drift`."""

    def __init__(self, sketches: Mapping[str, Any], *, rows: int, bins: int, top: int) -> None:
        self.sketches = dict(sketches)
        self.rows, self.bins, self.top = rows, bins, top

    @classmethod
    def fit(
        cls,
        data: Any = None,
        *,
        categorical: Iterable[str] | None = None,
        embeddings: Mapping[str, Any] | None = None,
        bins: int = 100,
        top: int = 20,
        columns: Sequence[str] | None = None,
    ) -> Reference:
        """Summarise ``data`` (a mapping of columns, a 2-D array, dict rows, a DataFrame).

        ``categorical`` names columns to treat as categories whatever their values;
        ``embeddings`` maps a name to a 2-D array (rows x dims); ``bins`` is the number
        of quantile bins per numeric feature; ``top`` the number of values a categorical
        feature keeps counts of (the rest count as one "other")."""
        _columns, _sketch = _engine()
        if not (isinstance(bins, int) and 2 <= bins <= 100_000):
            raise LifecycleError(
                f"bins={bins!r}: pass an int from 2 to 100000 (100 to 200 is usual)"
            )
        if not (isinstance(top, int) and top >= 1):
            raise LifecycleError(
                f"top={top!r}: pass the number of values a categorical feature keeps, >= 1"
            )
        cols, rows = _columns.as_columns(data, columns=columns)
        forced = set(categorical or ())
        unknown = forced - set(cols)
        if unknown:
            raise LifecycleError(
                f"categorical= names {sorted(unknown)} that the data lacks (it has {sorted(cols)})"
            )
        sketches: dict[str, Any] = {}
        for name, values in cols.items():
            if rows == 0:
                break
            sketches[name] = _fit_feature(
                _columns, _sketch, name, values, name in forced, bins, top
            )
        for name, matrix in (embeddings or {}).items():
            if name in sketches:
                raise LifecycleError(f"{name!r} is both a column and an embedding: name them apart")
            sketches[str(name)] = _sketch.EmbeddingSketch.fit(str(name), matrix, bins)
            rows = max(rows, len(matrix))
        if not sketches or rows == 0:
            raise LifecycleError(
                "a drift reference needs data: pass at least one row of at least one column"
            )
        return cls(sketches, rows=rows, bins=bins, top=top)

    @property
    def columns(self) -> list[str]:
        """The names of the features and embeddings, in order."""
        return list(self.sketches)

    def kinds(self) -> dict[str, str]:
        """Each column's kind: "numeric", "categorical" or "embedding"."""
        return {name: s.kind for name, s in self.sketches.items()}

    def window(self) -> DriftWindow:
        """An empty window of counts against this reference."""
        return DriftWindow(self)

    def to_bytes(self) -> bytes:
        """Compact, versioned JSON; :meth:`from_bytes` reads it back."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "rows": self.rows,
            "bins": self.bins,
            "top": self.top,
            "columns": [{"name": name, **s.to_dict()} for name, s in self.sketches.items()],
        }
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        _, _sketch = _engine()
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LifecycleError(
                f"these bytes are not a drift reference ({exc}): pass what Reference.to_bytes() gave"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise LifecycleError(
                "these bytes are not a drift reference: pass what Reference.to_bytes() gave"
            )
        version = doc.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise LifecycleError(
                f"this drift reference has format version {version}, newer than this conveyor "
                f"reads ({VERSION}): upgrade conveyor, or fit the reference again"
            )
        try:
            sketches = {
                c["name"]: _sketch.SKETCHES[c["kind"]].from_dict(c["name"], c)
                for c in doc["columns"]
            }
            return cls(sketches, rows=int(doc["rows"]), bins=int(doc["bins"]), top=int(doc["top"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LifecycleError(
                f"this drift reference is damaged ({exc!r}): fit it again"
            ) from None

    def __repr__(self) -> str:
        kinds = list(self.kinds().values())
        counted = ", ".join(f"{kinds.count(k)} {k}" for k in KINDS if k in kinds)
        return f"<Reference {self.rows:,} rows: {counted}>"


def _fit_feature(
    _columns: Any, _sketch: Any, name: str, values: Any, forced: bool, bins: int, top: int
) -> Any:
    import numpy as np

    arr = _columns.as_1d(name, values)
    if forced or _columns.is_text(arr):
        return _sketch.CategoricalSketch.fit(name, arr, top)
    x = _columns.to_float(name, arr)
    ordered = np.sort(x[np.isfinite(x)])
    distinct = 1 + int(np.count_nonzero(ordered[1:] != ordered[:-1])) if len(ordered) else 0
    if 0 < distinct <= CATEGORICAL_AT_MOST:
        return _sketch.CategoricalSketch.fit(name, arr, top)
    return _sketch.NumericSketch.fit(name, x, bins, ordered=ordered)


class DriftWindow:
    """Counts of the rows seen since the last :meth:`reset`, against a reference. Its
    memory is the reference's bins, whatever the rows; :meth:`update` is vectorised."""

    def __init__(self, reference: Reference) -> None:
        _engine()
        self.reference = reference
        self.reset()

    def reset(self) -> None:
        """Start a new window: no rows."""
        self.tallies = {name: s.tally() for name, s in self.reference.sketches.items()}
        self.rows = 0

    def update(self, data: Any) -> DriftWindow:
        """Count ``data``: the forms :meth:`Reference.fit` takes, or ONE dict row. A
        2-D array's columns are the reference's, in order."""
        _columns, _ = _engine()
        ref = self.reference
        embeddings = frozenset(n for n, s in ref.sketches.items() if s.kind == "embedding")
        names = None
        if hasattr(data, "ndim") and getattr(data, "ndim", 0) == 2 and not hasattr(data, "columns"):
            names = [n for n in ref.columns if n not in embeddings]
            if data.shape[1] != len(names):
                raise LifecycleError(
                    f"a 2-D array of {data.shape[1]} columns cannot be matched to the reference's "
                    f"{len(names)} features: pass {{'name': values}} or the same columns"
                )
        cols, rows = _columns.as_columns(data, columns=names, embeddings=embeddings)
        if rows == 0 and not cols:
            return self
        missing = [n for n in ref.columns if n not in cols]
        extra = [n for n in cols if n not in ref.sketches]
        if missing or extra:
            raise LifecycleError(
                "the window's columns are not the reference's"
                + (f"; missing: {missing}" if missing else "")
                + (f"; not in the reference: {extra}" if extra else "")
                + ": send every reference column (None for a missing value) and no other, or fit a new reference"
            )
        staged = {name: t.__class__(t.sketch) for name, t in self.tallies.items()}
        for name, tally in staged.items():
            tally.add(cols[name])  # every column checked before any count is kept
        for name, tally in staged.items():
            _merge(self.tallies[name], tally)
        self.rows += rows
        return self

    @property
    def nbytes(self) -> int:
        """The bytes of the window's counts (fixed by the reference)."""
        return sum(t.nbytes for t in self.tallies.values())

    def check(self, level: float = 0.01, *, min_distance: float = 0.0) -> DriftReport:
        """Test every feature; the dataset alarm's false-alarm rate is at most ``level``."""
        if not (isinstance(level, (int, float)) and 0 < level < 1):
            raise LifecycleError(
                f"level={level!r}: pass the false-alarm rate, between 0 and 1 (e.g. 0.01)"
            )
        if not (
            isinstance(min_distance, (int, float))
            and min_distance >= 0
            and math.isfinite(min_distance)
        ):
            raise LifecycleError(
                f"min_distance={min_distance!r}: pass an effect size >= 0 (0 for none, e.g. 0.1)"
            )
        if self.rows == 0:
            raise LifecycleError(
                "the drift window has no rows: update() it with data before check()"
            )
        threshold = level / len(self.tallies)
        features = []
        for name, tally in self.tallies.items():
            found = tally.sketch.compare(tally)
            drifted = found["p_value"] < threshold and found["distance"] >= min_distance
            features.append(
                FeatureDrift(name=name, kind=tally.sketch.kind, drifted=drifted, **found)
            )
        return DriftReport(
            features,
            rows=self.rows,
            level=float(level),
            min_distance=float(min_distance),
            threshold=threshold,
        )

    def __repr__(self) -> str:
        return f"<DriftWindow {self.rows:,} rows, {len(self.tallies)} columns>"


def _merge(into: Any, part: Any) -> None:
    if hasattr(part, "distances"):
        _merge(into.distances, part.distances)
        into.total += part.total
        into.used += part.used
        return
    into.counts += part.counts
    if hasattr(part, "bounds"):
        into.bounds[0] = min(into.bounds[0], part.bounds[0])
        into.bounds[1] = max(into.bounds[1], part.bounds[1])


def check_drift(
    reference: Reference, data: Any, level: float = 0.01, *, min_distance: float = 0.0
) -> DriftReport:
    """Test ``data`` against ``reference`` in one call: a window of just these rows."""
    return reference.window().update(data).check(level, min_distance=min_distance)
