"""The evaluation gate: paired bootstrap intervals, the pass rule for each kind of
min_effect, slices, a first release against a minimum, the verdict's report and
evidence, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from conveyor.lifecycle import GateFailed, GateVerdict, LifecycleError, SliceVerdict, gate


@pytest.fixture(scope="module")
def digits() -> tuple[Any, Any, Any, Any]:
    X, y = load_digits(return_X_y=True)
    X = X / 16  # pixels 0..16 to 0..1: the solver converges in a few steps
    return X[:900], y[:900], X[900:], y[900:]


def logreg(X: Any, y: Any) -> LogisticRegression:
    return LogisticRegression(max_iter=100, tol=1e-2).fit(X, y)


def with_errors(y: Any, wrong: Any) -> Any:
    """Predictions equal to ``y`` except on the rows ``wrong`` (a mask or indices)."""
    p = np.array(y, copy=True)
    p[wrong] = (p[wrong] + 1) % 10
    return p


# --- the pass rule -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_candidate_trained_on_shuffled_labels_is_blocked(digits: Any) -> None:
    Xtr, ytr, Xte, yte = digits
    champion = logreg(Xtr, ytr)
    shuffled = logreg(Xtr, np.random.default_rng(0).permutation(ytr))
    verdict = gate(shuffled.predict, champion.predict, Xte, yte)
    assert not verdict.passed
    assert verdict.difference is not None and verdict.difference < -0.5
    assert verdict.high < 0
    [reason] = verdict.reasons
    assert reason.startswith("accuracy: candidate - champion = -0.")
    assert f"95% CI {verdict.low:+.3f} to {verdict.high:+.3f}" in reason
    assert f"on {len(yte):,} rows" in reason


def test_better_by_less_than_the_required_effect_is_blocked_with_its_interval() -> None:
    y = np.arange(2000) % 10
    champion = with_errors(y, np.arange(200))  # 90.0%
    candidate = with_errors(y, np.arange(10, 200))  # 90.5%: fixes 10 rows
    verdict = gate(candidate, champion, None, y, min_effect=0.02)
    assert verdict.difference == pytest.approx(0.005)
    assert verdict.candidate_score == pytest.approx(0.905)
    assert verdict.champion_score == pytest.approx(0.9)
    assert 0 < verdict.low <= 0.005 <= verdict.high < 0.02
    assert not verdict.passed
    [reason] = verdict.reasons
    assert "candidate - champion = +0.005 (95% CI" in reason
    assert "on 2,000 rows; the required effect is +0.020" in reason
    # The same evidence clears a gate that asks for better with confidence only.
    assert gate(candidate, champion, None, y, min_effect=0.0).passed


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_clearly_better_candidate_passes(digits: Any) -> None:
    Xtr, ytr, Xte, yte = digits
    champion = logreg(Xtr[:100], ytr[:100])
    candidate = logreg(Xtr, ytr)
    verdict = gate(candidate.predict, champion.predict, Xte, yte, min_effect=0.01)
    assert verdict.passed and verdict.reasons == []
    assert verdict.low >= 0.01
    assert verdict.min_detectable_effect is not None and verdict.min_detectable_effect > 0.01
    assert "Gate PASSED" in verdict.summary()
    assert verdict.require() is verdict


def test_non_inferiority_passes_an_equal_model_that_significance_would_block() -> None:
    y = np.arange(2000) % 10
    champion = with_errors(y, np.arange(0, 200))
    candidate = with_errors(y, np.arange(100, 300))  # the same 90%, other mistakes
    equal = gate(candidate, champion, None, y, min_effect=-0.02)
    assert equal.passed and equal.difference == 0
    assert -0.02 <= equal.low < 0 < equal.high
    assert "not worse by more than that" in equal.summary()
    assert not gate(candidate, champion, None, y, min_effect=0.0).passed


def test_error_metrics_count_lower_as_better() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=3000)
    champion = y + rng.normal(scale=1.0, size=3000)
    candidate = y + rng.normal(scale=0.5, size=3000)
    for metric in ("mae", "mse"):
        v = gate(candidate, champion, None, y, metric=metric, resamples=300)
        assert v.passed and not v.greater_is_better
        assert v.candidate_score < v.champion_score  # type: ignore[operator]
        assert v.difference == pytest.approx(v.champion_score - v.candidate_score)  # type: ignore[operator]
        assert v.low > 0
    flipped = gate(champion, candidate, None, y, metric="mae", resamples=300)
    assert not flipped.passed
    assert "champion - candidate (lower is better)" in flipped.reasons[0]
    wrong = gate(with_errors(np.zeros(500, int), np.arange(100)), np.zeros(500, int), None,
                 np.zeros(500, int), metric="error_rate")  # fmt: skip
    assert not wrong.passed and wrong.difference == pytest.approx(-0.2)


# --- slices --------------------------------------------------------------------------------


def test_a_regressing_slice_fails_although_the_whole_improves(digits: Any) -> None:
    _, _, _, y = digits
    rng = np.random.default_rng(2)
    champion = with_errors(y, rng.random(len(y)) < 0.2)  # ~80% everywhere
    candidate = with_errors(y, y == 8)  # right everywhere but on every 8
    verdict = gate(candidate, champion, None, y, slices={"digit": y})
    assert verdict.difference is not None and verdict.low > 0  # the whole improves
    assert not verdict.passed
    [eight] = [s for s in verdict.slices if not s.passed]
    assert (eight.slice, eight.group, eight.rows) == ("digit", 8, int((y == 8).sum()))
    assert eight.high is not None and eight.high < 0
    assert verdict.slice_confidence == pytest.approx(1 - 0.05 / 10)
    [reason] = verdict.reasons
    assert reason.startswith("accuracy on slice digit=8 (")
    assert "99.5% CI" in reason and "Bonferroni-adjusted for 10 groups" in reason
    assert "REGRESSES" in verdict.summary()
    # Allowing the regression lets it through.
    assert gate(candidate, champion, None, y, slices={"digit": y}, max_slice_regression=1).passed


def test_slices_from_a_callable_and_small_groups_not_judged(digits: Any) -> None:
    _, _, X, y = digits
    region = np.where(np.arange(len(y)) < 20, "tiny", "big")
    verdict = gate(
        y, with_errors(y, np.arange(0, len(y), 5)), X, y,
        slices={"region": lambda X_: region, "parity": y % 2},
    )  # fmt: skip
    tiny = next(s for s in verdict.slices if s.group == "tiny")
    assert (tiny.rows, tiny.judged, tiny.passed, tiny.low, tiny.high) == (
        20,
        False,
        True,
        None,
        None,
    )
    assert sum(s.judged for s in verdict.slices) == 3
    assert verdict.slice_confidence == pytest.approx(1 - 0.05 / 3)
    assert "too few rows, not judged" in verdict.summary()


def test_missing_slice_labels_are_a_group_of_their_own() -> None:
    y = np.arange(400) % 10
    region = np.where(np.arange(400) < 100, np.nan, np.arange(400) % 2)
    verdict = gate(y, with_errors(y, np.arange(0, 400, 4)), None, y, slices={"r": region})
    rows = {str(s.group): s.rows for s in verdict.slices}
    assert rows == {"0.0": 150, "1.0": 150, "nan": 100}
    assert all(s.judged and s.low is not None for s in verdict.slices)


# --- statistics ----------------------------------------------------------------------------


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    n, truth, covered = 400, 0.05, 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        y = np.zeros(n, dtype=int)
        candidate = (rng.random(n) >= 0.80).astype(int)  # right with p 0.80
        champion = (rng.random(n) >= 0.75).astype(int)  # right with p 0.75
        v = gate(candidate, champion, None, y, resamples=500, seed=seed)
        covered += v.low <= truth <= v.high
    assert 0.90 * 200 <= covered <= 0.99 * 200


def test_the_interval_covers_a_continuous_metric_too() -> None:
    # MAE of N(0, s) predictions of 0 is s * sqrt(2 / pi): champion 1.2, candidate 1.0.
    n, truth, covered = 300, 0.2 * np.sqrt(2 / np.pi), 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        candidate, champion = rng.normal(0, 1.0, n), rng.normal(0, 1.2, n)
        v = gate(candidate, champion, None, np.zeros(n), metric="mae", resamples=500, seed=seed)
        covered += v.low <= truth <= v.high
    assert 0.90 * 200 <= covered <= 0.99 * 200


def test_counted_cells_match_a_plain_index_bootstrap() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=1500)
    candidate = np.where(rng.random(1500) < 0.85, y, (y + 1) % 3)
    champion = np.where(rng.random(1500) < 0.80, y, (y + 2) % 3)
    v = gate(candidate, champion, None, y, resamples=4000)
    idx = rng.integers(0, 1500, size=(4000, 1500))
    plain = (candidate[idx] == y[idx]).mean(1) - (champion[idx] == y[idx]).mean(1)
    low, high = np.quantile(plain, [0.025, 0.975])
    assert v.low == pytest.approx(low, abs=0.006) and v.high == pytest.approx(high, abs=0.006)


def test_f1_macro_agrees_with_scikit_learn_and_a_callable_metric(digits: Any) -> None:
    _, _, _, y = digits
    rng = np.random.default_rng(4)
    candidate = with_errors(y, rng.random(len(y)) < 0.1)
    champion = with_errors(y, rng.random(len(y)) < 0.2)
    named = gate(candidate, champion, None, y, metric="f1_macro", resamples=300)
    assert named.candidate_score == pytest.approx(f1_score(y, candidate, average="macro"))
    assert named.champion_score == pytest.approx(f1_score(y, champion, average="macro"))

    def macro_f1(t: Any, p: Any) -> float:
        return float(f1_score(t, p, average="macro"))

    given = gate(candidate, champion, None, y, metric=macro_f1, resamples=300)
    assert given.metric == "macro_f1" and given.difference == pytest.approx(named.difference)
    assert given.low == pytest.approx(named.low, abs=0.015)
    assert given.high == pytest.approx(named.high, abs=0.015)


def test_a_hundred_thousand_rows_and_2000_resamples_finish() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 10, size=100_000)
    candidate = np.where(rng.random(100_000) < 0.91, y, (y + 1) % 10)
    champion = np.where(rng.random(100_000) < 0.90, y, (y + 1) % 10)
    v = gate(candidate, champion, None, y, resamples=2000)
    assert v.passed and v.rows == 100_000 and v.low > 0
    assert v.high - v.low < 0.01


@pytest.mark.slow
def test_a_continuous_metric_on_a_hundred_thousand_rows_finishes() -> None:
    rng = np.random.default_rng(6)
    y = rng.normal(size=100_000)
    v = gate(y + rng.normal(scale=0.9, size=100_000), y + rng.normal(size=100_000), None, y,
             metric="mae", resamples=2000)  # fmt: skip
    assert v.passed and v.low > 0


# --- first releases, evidence, require -----------------------------------------------------


def test_a_first_release_is_judged_against_the_minimum(digits: Any) -> None:
    _, _, _, y = digits
    model = with_errors(y, np.arange(0, len(y), 10))  # 90%
    ok = gate(model, None, None, y, minimum=0.85)
    assert ok.passed and ok.difference is None and ok.champion_score is None
    assert ok.low >= 0.85 and ok.candidate_score == pytest.approx(0.9, abs=0.002)
    no = gate(model, None, None, y, minimum=0.95, slices={"digit": y})
    assert not no.passed
    assert no.reasons[0].startswith("accuracy: candidate = 0.90")
    assert "the required minimum is 0.950" in no.reasons[0]
    assert "vs the minimum" in no.summary()
    with pytest.raises(LifecycleError, match=r"no minimum= was given.*minimum=0\.9"):
        gate(model, None, None, y)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_callables_and_predictions_give_the_same_verdict(digits: Any) -> None:
    Xtr, ytr, Xte, yte = digits
    a, b = logreg(Xtr[:300], ytr[:300]), logreg(Xtr[300:420], ytr[300:420])
    called = gate(a.predict, b.predict, Xte, yte, slices={"digit": yte})
    given = gate(a.predict(Xte), b.predict(Xte), Xte, yte, slices={"digit": yte})
    assert called == given


def test_the_verdict_round_trips_through_json() -> None:
    y = np.arange(1000) % 4
    v = gate(with_errors(y, np.arange(50)), with_errors(y, np.arange(200)), None, y,
             slices={"mod": y, "name": np.array(["a", "b"] * 500)}, names=("v7", "v6"))  # fmt: skip
    data = json.loads(json.dumps(v.to_dict()))
    back = GateVerdict.from_dict(data)
    assert back == v and back.names == ("v7", "v6")
    assert isinstance(back.slices[0], SliceVerdict) and back.slices[0].group == 0
    assert back.summary() == v.summary()
    assert "v7 - v6 = +0.150" in v.summary()
    with pytest.raises(LifecycleError, match=r"not a gate verdict: unknown keys \['colour'\]"):
        GateVerdict.from_dict({**data, "colour": "red"})
    with pytest.raises(LifecycleError, match=r"missing keys \['passed'\]"):
        GateVerdict.from_dict({k: x for k, x in data.items() if k != "passed"})


def test_require_raises_gate_failed_carrying_the_verdict() -> None:
    y = np.arange(500) % 10
    v = gate(with_errors(y, np.arange(100)), y, None, y)
    with pytest.raises(GateFailed) as info:
        v.require()
    assert info.value.verdict is v
    assert str(info.value) == v.summary() and "Gate FAILED" in str(info.value)
    assert isinstance(info.value, LifecycleError)


# --- bad input -----------------------------------------------------------------------------


def boom(X: Any) -> Any:
    raise ValueError("boom")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"candidate": np.zeros(9)}, r"candidate's predictions have 9 rows but y has 10"),
        ({"champion": [0] * 11}, r"champion's predictions have 11 rows but y has 10"),
        ({"metric": "auc"}, r"unknown metric 'auc': use one of accuracy, error_rate, f1_macro"),
        ({"candidate": np.r_[np.nan, np.zeros(9)]}, r"candidate's predictions hold 1 NaN"),
        ({"champion": np.r_[np.inf, np.zeros(9)]}, r"champion's predictions hold 1 NaN or inf"),
        ({"candidate": None}, r"candidate's predictions have shape \(\)"),
        ({"confidence": 0}, r"confidence=0 must lie strictly between 0 and 1"),
        ({"confidence": 1.0}, r"confidence=1.0 must lie strictly between 0 and 1"),
        ({"confidence": 95}, r"confidence=95 must lie"),
        ({"resamples": 99}, r"resamples=99 is too few .* at least 100"),
        (
            {"candidate": boom},
            r"the candidate raised ValueError: boom on X of shape \(10, 3\)",
        ),
        ({"X": np.zeros((0, 3)), "y": []}, r"X and y are empty"),
        ({"X": np.zeros((4, 3))}, r"X has 4 rows but y has 10"),
        ({"slices": {"country": ["BR"] * 9}}, r"slice 'country' has 9 labels .* for 10 rows"),
        ({"slices": {"country": boom}}, r"slice 'country' raised ValueError: boom"),
        ({"candidate": np.zeros((10, 3))}, r"shape \(10, 3\).*argmax"),
        ({"y": [np.nan] + [0.0] * 9}, r"y has 1 NaN or infinite labels"),
        ({"min_effect": float("nan")}, r"min_effect=nan must be a finite number"),
        ({"max_slice_regression": -0.1}, r"max_slice_regression=-0.1 must be .* >= 0"),
        ({"seed": -1}, r"seed=-1 must be an integer >= 0"),
        ({"minimum": float("inf")}, r"minimum=inf must be a finite number"),
        ({"minimum": "0.9"}, r"minimum='0.9' must be a finite number"),
        ({"min_slice_rows": 0}, r"min_slice_rows=0 must be an integer >= 2"),
        ({"metric": lambda t, p: 1 / 0}, r"the metric <lambda> raised ZeroDivisionError"),
    ],
)
def test_bad_input_names_the_thing_and_the_fix(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "candidate": np.zeros(10),
        "champion": np.zeros(10),
        "X": np.zeros((10, 3)),
        "y": np.zeros(10),
    }
    args.update(kwargs)
    positional = [args.pop(k) for k in ("candidate", "champion", "X", "y")]
    with pytest.raises(LifecycleError, match=message):
        gate(*positional, **args)


def test_without_numpy_the_gate_says_which_extra_to_install(monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(LifecycleError, match=r"pip install 'conveyor\[lifecycle\]'"):
        gate([1], [1], None, [1], minimum=0.5)
    blocked = "import sys; sys.modules['numpy'] = None; import conveyor.lifecycle; print('ok')"
    out = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


# --- the user docs -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_docs_gate_section_runs_and_prints_what_it_shows(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "lifecycle.md").read_text()
    section = text.split("## The evaluation gate", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block, "docs/lifecycle.md", "exec"), namespace)
    printed = capsys.readouterr().out
    shown = re.search(r"prints\n\n```text\n(.*?)```", section, re.S)
    assert shown is not None
    for line in shown.group(1).splitlines():
        if line.strip() != "...":
            assert line in printed.splitlines()
