"""The evaluation gate: does the candidate beat the champion, with confidence, on every
slice that matters?

::

    from conveyor.lifecycle import gate

    verdict = gate(candidate, champion, X, y, metric="accuracy", min_effect=0.01,
                   slices={"country": countries})
    print(verdict.summary())
    verdict.require()  # raises GateFailed, carrying the verdict, unless it passed

The difference of the two models' scores gets a paired bootstrap interval (the same
resampled rows for both), signed so that positive means the candidate is better. It
passes when the interval's lower bound reaches ``min_effect``: above zero, better by at
least that much; zero, better with confidence; below zero, not worse by more than that
(non-inferiority). A slice group fails when its interval lies wholly below
``-max_slice_regression``; its intervals are Bonferroni-adjusted for the number of groups
judged. The resampling lives in ``_metrics.py``; this module checks input, applies the
rules and writes the verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from conveyor.errors import GateFailed, LifecycleError
from conveyor.lifecycle._inputs import (
    check_bounds,
    check_settings,
    labels_of,
    predictions_of,
    slice_labels,
)
from conveyor.lifecycle._metrics import METRICS, Metric, bootstrap, interval, numpy, resolve_metric

POWER = 0.8  # the power the minimum detectable effect is quoted at


@dataclass(frozen=True)
class SliceVerdict:
    """One group of one slice: its rows, the difference (positive = candidate better;
    measured against ``minimum`` when there is no champion), its Bonferroni-adjusted
    interval, and whether it passed. A group with too few rows is not judged: ``low``
    and ``high`` are None and ``passed`` is True."""

    slice: str
    group: Any
    rows: int
    difference: float
    low: float | None
    high: float | None
    passed: bool
    judged: bool = True
    candidate_score: float | None = None
    champion_score: float | None = None


@dataclass(frozen=True)
class GateVerdict:
    """What the gate decided and why. ``difference``, ``low`` and ``high`` are the
    candidate's score minus the champion's, signed so that positive is better (for
    error metrics, champion minus candidate), and its interval at ``confidence``. With
    no champion they bound the candidate's own score and ``difference`` is None."""

    passed: bool
    metric: str
    greater_is_better: bool
    candidate_score: float
    champion_score: float | None
    difference: float | None
    low: float
    high: float
    confidence: float
    min_effect: float
    rows: int
    resamples: int
    minimum: float | None = None
    candidate_low: float | None = None
    candidate_high: float | None = None
    min_detectable_effect: float | None = None
    slice_confidence: float | None = None
    max_slice_regression: float = 0.0
    names: tuple[str, str] = ("candidate", "champion")
    slices: list[SliceVerdict] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def require(self) -> GateVerdict:
        """This verdict if it passed; else raise :class:`GateFailed` carrying it."""
        if not self.passed:
            raise GateFailed(self.summary(), verdict=self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` makes the same verdict back."""
        out = dataclasses.asdict(self)
        out["names"] = list(self.names)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateVerdict:
        known = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        required -= {"slices", "reasons"}
        unknown, missing = sorted(set(data) - known), sorted(required - set(data))
        if unknown or missing:
            raise LifecycleError(
                f"not a gate verdict: unknown keys {unknown}, missing keys {missing}; "
                "from_dict takes what GateVerdict.to_dict() wrote"
            )
        values = dict(data)
        values["names"] = tuple(values.get("names", ("candidate", "champion")))
        values["slices"] = [SliceVerdict(**s) for s in values.get("slices", [])]
        values["reasons"] = list(values.get("reasons", []))
        return cls(**values)

    def summary(self) -> str:
        """The report a user reads: the decision, the scores, the interval, the power,
        every slice, and the reasons."""
        fmt = _formatter(self.metric)
        cand, champ = self.names
        direction = "greater" if self.greater_is_better else "lower"
        head = (
            f"Gate {'PASSED' if self.passed else 'FAILED'}: {cand} vs "
            f"{champ if self.champion_score is not None else 'the minimum'} on {self.metric} "
            f"({direction} is better), {self.rows:,} rows, {self.resamples:,} paired "
            "bootstrap resamples"
        )
        lines = [head]
        ci = f"{_pct(self.confidence)} CI"
        if self.difference is None:
            lines.append(
                f"  {cand} {fmt(self.candidate_score, False)} ({ci} {fmt(self.low, False)} "
                f"to {fmt(self.high, False)}); required: "
                f"{'at least' if self.greater_is_better else 'at most'} "
                f"{fmt(self.minimum or 0.0, False)} with confidence"
            )
        else:
            assert self.champion_score is not None
            half = (self.high - self.low) / 2
            lines.append(
                f"  {cand} {fmt(self.candidate_score, False)}, "
                f"{champ} {fmt(self.champion_score, False)}"
            )
            lines.append(
                f"  {_diff_label(self.names, self.greater_is_better)} = "
                f"{fmt(self.difference)} ± {fmt(half, False)} ({ci} {fmt(self.low)} to "
                f"{fmt(self.high)}); required: lower bound >= {fmt(self.min_effect)} "
                f"({_rule(self.min_effect)})"
            )
            if self.min_detectable_effect is not None:
                lines.append(
                    f"  at {self.rows:,} rows a true difference of "
                    f"{fmt(self.min_detectable_effect)} passes {POWER:.0%} of the time"
                )
            if self.minimum is not None and self.candidate_low is not None:
                lines.append(
                    f"  {cand} must also score "
                    f"{'at least' if self.greater_is_better else 'at most'} "
                    f"{fmt(self.minimum, False)}: {ci} {fmt(self.candidate_low, False)} "
                    f"to {fmt(self.candidate_high or 0.0, False)}"
                )
        if self.slices:
            judged = sum(s.judged for s in self.slices)
            conf = _pct(self.slice_confidence or self.confidence)
            allowed = self.max_slice_regression
            floor = "zero" if allowed == 0 else f"-{fmt(allowed, False)}"
            lines.append(
                f"  slices ({conf} intervals, Bonferroni-adjusted for {judged} groups; a "
                f"group fails when its whole interval lies below {floor}):"
            )
            for s in self.slices:
                where = f"{s.slice}={s.group}"
                if not s.judged:
                    lines.append(
                        f"    {where:<20} {s.rows:>8,} rows  {fmt(s.difference)}  too few "
                        "rows, not judged"
                    )
                    continue
                assert s.low is not None and s.high is not None
                lines.append(
                    f"    {where:<20} {s.rows:>8,} rows  {fmt(s.difference)} "
                    f"({fmt(s.low)} to {fmt(s.high)})  {'ok' if s.passed else 'REGRESSES'}"
                )
        if self.reasons:
            lines.append("  why it failed:")
            lines.extend(f"    - {r}" for r in self.reasons)
        return "\n".join(lines)


def gate(
    candidate: Any,
    champion: Any,
    X: Any,
    y: Any,
    *,
    metric: str | Callable[[Any, Any], float] = "accuracy",
    min_effect: float = 0.0,
    confidence: float = 0.95,
    slices: Mapping[str, Any] | None = None,
    max_slice_regression: float = 0.0,
    minimum: float | None = None,
    resamples: int = 2000,
    seed: int = 0,
    names: tuple[str, str] = ("candidate", "champion"),
    metric_greater_is_better: bool = True,
    min_slice_rows: int = 30,
) -> GateVerdict:
    """Judge ``candidate`` against ``champion`` on the rows ``X`` labelled ``y``.

    Each model is a callable (called once on the whole ``X``) or its predictions, one
    per row. ``champion=None`` (a first release) judges the candidate's score alone:
    its interval must clear ``minimum`` (at least, or at most for error metrics).
    ``metric`` is ``"accuracy"``, ``"error_rate"``, ``"mae"``, ``"mse"``,
    ``"f1_macro"`` or a callable ``(y_true, y_pred) -> float`` (say which way is
    better with ``metric_greater_is_better``). ``slices`` maps a name to group labels,
    one per row, or to a callable ``X -> labels``; groups under ``min_slice_rows`` rows
    are reported but not judged.
    """
    np = numpy()
    m = resolve_metric(metric, metric_greater_is_better)
    check_settings(confidence, resamples, min_effect, max_slice_regression, seed, names)
    check_bounds(minimum, min_slice_rows)
    labels = labels_of(y, X)
    n = len(labels)
    cand = predictions_of(candidate, names[0], X, n)
    champ = None if champion is None else predictions_of(champion, names[1], X, n)
    if champ is None and minimum is None:
        raise LifecycleError(
            f"the {names[1]} is None and no minimum= was given: a first release is judged "
            f"against a fixed bar, e.g. gate(model, None, X, y, minimum=0.9)"
        )
    preds = [cand] if champ is None else [cand, champ]
    sign = 1.0 if m.greater_is_better else -1.0
    points, samples = bootstrap(m, labels, preds, resamples, [seed])
    c_low, c_high = interval(samples[0], confidence)
    reasons: list[str] = []
    fmt = _formatter(m.name)
    ci = f"{_pct(confidence)} CI"
    if champ is None:
        assert minimum is not None
        low, high, difference, mde = c_low, c_high, None, None
        bound_ok = c_low >= minimum if m.greater_is_better else c_high <= minimum
        if not bound_ok:
            reasons.append(
                f"{m.name}: {names[0]} = {fmt(points[0], False)} ({ci} {fmt(c_low, False)} "
                f"to {fmt(c_high, False)}) on {n:,} rows; the required "
                f"{'minimum' if m.greater_is_better else 'maximum'} is {fmt(minimum, False)}"
            )
    else:
        diff = sign * (samples[0] - samples[1])
        difference = sign * (points[0] - points[1])
        low, high = interval(diff, confidence)
        z = NormalDist().inv_cdf((1 + confidence) / 2) + NormalDist().inv_cdf(POWER)
        mde = min_effect + z * float(np.std(diff))
        if low < min_effect:
            reasons.append(
                f"{m.name}: {_diff_label(names, m.greater_is_better)} = {fmt(difference)} "
                f"({ci} {fmt(low)} to {fmt(high)}) on {n:,} rows; the required effect is "
                f"{fmt(min_effect)} ({_rule(min_effect)}), and the lower bound "
                f"falls short by {fmt(min_effect - low, False)}"
            )
        if minimum is not None:
            bound_ok = c_low >= minimum if m.greater_is_better else c_high <= minimum
            if not bound_ok:
                reasons.append(
                    f"{m.name}: {names[0]} = {fmt(points[0], False)} ({ci} "
                    f"{fmt(c_low, False)} to {fmt(c_high, False)}); the required "
                    f"{'minimum' if m.greater_is_better else 'maximum'} is "
                    f"{fmt(minimum, False)}"
                )
    slice_verdicts, slice_conf = _judge_slices(
        m, labels, preds, X, slices or {}, minimum, confidence, max_slice_regression,
        resamples, seed, min_slice_rows, names, reasons,
    )  # fmt: skip
    return GateVerdict(
        passed=not reasons,
        metric=m.name,
        greater_is_better=m.greater_is_better,
        candidate_score=points[0],
        champion_score=None if champ is None else points[1],
        difference=difference,
        low=low,
        high=high,
        confidence=confidence,
        min_effect=float(min_effect),
        rows=n,
        resamples=resamples,
        minimum=None if minimum is None else float(minimum),
        candidate_low=c_low,
        candidate_high=c_high,
        min_detectable_effect=mde,
        slice_confidence=slice_conf,
        max_slice_regression=float(max_slice_regression),
        names=(str(names[0]), str(names[1])),
        slices=slice_verdicts,
        reasons=reasons,
    )


def _judge_slices(
    m: Metric,
    y: Any,
    preds: list[Any],
    X: Any,
    slices: Mapping[str, Any],
    minimum: float | None,
    confidence: float,
    max_regression: float,
    resamples: int,
    seed: int,
    min_rows: int,
    names: tuple[str, str],
    reasons: list[str],
) -> tuple[list[SliceVerdict], float | None]:
    np = numpy()
    n = len(y)
    sign = 1.0 if m.greater_is_better else -1.0
    groups: list[tuple[str, Any, Any]] = []  # (slice, group, row mask)
    for name, spec in slices.items():
        labels = slice_labels(name, spec, X, n)
        try:
            values = np.unique(labels)
        except TypeError:
            labels = np.asarray([str(v) for v in labels])
            values = np.unique(labels)
        for v in values:  # a missing label (NaN) is a group of its own
            mask = np.isnan(labels) if v != v else labels == v
            groups.append((str(name), _plain(v), mask))
    judged = sum(int(mask.sum()) >= min_rows for _, _, mask in groups)
    if not groups:
        return [], None
    conf = 1 - (1 - confidence) / max(judged, 1)
    fmt = _formatter(m.name)
    out = []
    for i, (name, group, mask) in enumerate(groups):
        rows = int(mask.sum())
        sub = [p[mask] for p in preds]
        samples: list[Any] | None = None
        if rows < min_rows:
            points = bootstrap(m, y[mask], sub, 1, [seed, 1, i])[0]
        else:
            points, samples = bootstrap(m, y[mask], sub, resamples, [seed, 1, i])
        reference = points[1] if len(preds) == 2 else minimum
        assert reference is not None
        difference = sign * (points[0] - reference)
        low = high = None
        passed = True
        if samples is not None:
            s = sign * (samples[0] - (samples[1] if len(preds) == 2 else reference))
            low, high = interval(s, conf)
            passed = high >= -max_regression
        verdict = SliceVerdict(
            slice=name, group=group, rows=rows, difference=difference, low=low, high=high,
            passed=passed, judged=samples is not None, candidate_score=points[0],
            champion_score=points[1] if len(preds) == 2 else None,
        )  # fmt: skip
        out.append(verdict)
        if not passed:
            against = _diff_label(names, m.greater_is_better)
            if len(preds) == 1:
                against = f"{names[0]} - minimum" if sign > 0 else f"maximum - {names[0]}"
            reasons.append(
                f"{m.name} on slice {name}={group} ({rows:,} rows): {against} = "
                f"{fmt(difference)} ({_pct(conf)} CI {fmt(low or 0.0)} to {fmt(high or 0.0)}, "
                f"Bonferroni-adjusted for {judged} groups); it regresses by more than the "
                f"allowed {fmt(max_regression, False)}"
            )
    return out, conf


# --- words ---------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A group label as a JSON value: a NumPy scalar as its Python value, others as text."""
    if hasattr(value, "item"):
        value = value.item()
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _pct(confidence: float) -> str:
    return f"{confidence * 100:.4g}%"


def _rule(min_effect: float) -> str:
    if min_effect > 0:
        return "better by at least that"
    if min_effect == 0:
        return "better with confidence"
    return "not worse by more than that"


def _diff_label(names: tuple[str, str], greater_is_better: bool) -> str:
    cand, champ = names
    return f"{cand} - {champ}" if greater_is_better else f"{champ} - {cand} (lower is better)"


def _formatter(metric: str) -> Callable[..., str]:
    unit = metric in METRICS and METRICS[metric].unit

    def fmt(value: float, signed: bool = True) -> str:
        spec = (".3f" if unit else ".4g") if not signed else ("+.3f" if unit else "+.4g")
        return format(value + 0.0, spec)  # no -0.000

    return fmt
