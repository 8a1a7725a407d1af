"""Drift monitoring (conveyor.lifecycle): the tests find what moved and stay quiet when
nothing did, at the promised false-alarm rate; binned statistics against scipy's exact
ones; windows of fixed size; bad input refused with the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

np = pytest.importorskip(
    "numpy", reason="drift checks need the lifecycle extra: pip install -e '.[lifecycle]'"
)
stats = pytest.importorskip("scipy.stats", reason="drift checks need the lifecycle extra")

from conveyor.errors import LifecycleError  # noqa: E402
from conveyor.lifecycle import DriftReport, DriftWindow, FeatureDrift, Reference, check_drift  # noqa: E402

COLORS = np.array(["red", "green", "blue", "grey"])


def mixed(
    rng: Any, n: int, *, shares: Any = (0.4, 0.3, 0.2, 0.1), shift: float = 0.0
) -> dict[str, Any]:
    """Six numeric columns, a string column, a small-int column, an embedding."""
    cols: dict[str, Any] = {f"x{i}": rng.normal(size=n) for i in range(6)}
    cols["x0"] = cols["x0"] + shift
    cols["color"] = rng.choice(COLORS, size=n, p=list(shares))
    cols["level"] = rng.integers(0, 4, size=n)
    return cols


def embedded(rng: Any, n: int, *, move: float = 0.0) -> Any:
    base = np.full(16, 1.0)
    direction = np.zeros(16)
    direction[:2] = [1.0, -1.0]  # away from the centroid's direction
    return base + move * direction + rng.normal(scale=0.5, size=(n, 16))


# --- detection ----------------------------------------------------------------------------


def test_a_mean_shift_of_a_third_std_in_one_of_20_features_is_found_and_named() -> None:
    rng = np.random.default_rng(1)
    ref = Reference.fit(rng.normal(size=(5000, 20)))
    window = rng.normal(size=(5000, 20))
    window[:, 12] += 0.3
    report = check_drift(ref, window, level=0.01)
    assert report.drifted
    assert report.drifted_features == ["x12"]
    x12 = report.features[12]
    assert (x12.kind, x12.test) == ("numeric", "ks")
    assert x12.p_value < 1e-10 and 0.2 < x12.distance < 0.4  # W/std of a 0.3 std shift
    assert report.summary().startswith("drift in 1 of 20 features: x12 (KS p=")


def test_a_summary_names_the_five_most_significant_and_counts_the_rest() -> None:
    rng = np.random.default_rng(4)
    ref = Reference.fit(rng.normal(size=(3000, 12)))
    window = rng.normal(size=(3000, 12))
    window += np.linspace(0.5, 1.6, 12)  # every feature moved, x11 the most
    report = check_drift(ref, window, level=0.01)
    assert len(report.drifted_features) == 12
    summary = report.summary()
    assert summary.startswith("drift in 12 of 12 features: x11 (KS p=")
    assert summary.count("KS p=") == 5
    assert summary.endswith(" and 7 more (the evidence lists each)")
    assert len(report.to_dict()["features"]) == 12


def test_a_categorical_feature_whose_shares_move_is_found_by_chi2() -> None:
    rng = np.random.default_rng(2)
    ref = Reference.fit(mixed(rng, 5000))
    report = check_drift(ref, mixed(rng, 5000, shares=(0.3, 0.3, 0.25, 0.15)))
    assert report.drifted_features == ["color"]
    color = next(f for f in report.features if f.name == "color")
    assert (color.kind, color.test) == ("categorical", "chi2")
    assert color.distance > 0.05


def test_an_embedding_whose_rows_move_is_found() -> None:
    rng = np.random.default_rng(3)
    ref = Reference.fit(embeddings={"text": embedded(rng, 5000)})
    quiet = check_drift(ref, {"text": embedded(rng, 5000)})
    moved = check_drift(ref, {"text": embedded(rng, 5000, move=0.5)})
    assert not quiet.drifted
    assert moved.drifted_features == ["text"]
    (text,) = moved.features
    assert (text.kind, text.test) == ("embedding", "ks")
    assert text.centroid_shift is not None and quiet.features[0].centroid_shift is not None
    assert text.centroid_shift > 10 * quiet.features[0].centroid_shift


@pytest.mark.parametrize("level", [0.05, 0.01])
def test_an_unchanged_source_raises_the_alarm_at_most_at_the_level(level: float) -> None:
    rng = np.random.default_rng(4)
    data = mixed(rng, 2000)
    data["text"] = embedded(rng, 2000)
    ref = Reference.fit(
        {k: v for k, v in data.items() if k != "text"}, embeddings={"text": data["text"]}
    )
    window = ref.window()
    alarms = 0
    for _ in range(100):
        window.reset()
        fresh = mixed(rng, 1000)
        fresh["text"] = embedded(rng, 1000)
        alarms += window.update(fresh).check(level).drifted
    assert alarms <= stats.binom.ppf(0.99, 100, level)  # 11 at 0.05, 4 at 0.01


# --- against scipy's exact statistics -----------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_binned_ks_is_at_most_the_exact_one_and_within_a_bin_of_it(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=400), rng.normal(0.1 * seed, 1.0 + 0.05 * seed, size=300)
    bins = 40
    found = check_drift(Reference.fit({"a": a}, bins=bins), {"a": b}).features[0]
    exact = stats.ks_2samp(a, b)
    assert found.statistic <= exact.statistic + 1e-12
    assert exact.statistic - found.statistic <= 1 / bins + 1e-12
    assert found.p_value >= exact.pvalue * 0.5 or found.p_value > 0.01  # conservative, near


def test_chi2_matches_scipy_chi2_contingency() -> None:
    rng = np.random.default_rng(5)
    a = rng.choice(COLORS, size=700, p=[0.4, 0.3, 0.2, 0.1])
    b = rng.choice(COLORS, size=500, p=[0.35, 0.3, 0.2, 0.15])
    found = check_drift(Reference.fit({"c": a}), {"c": b}).features[0]
    table = [[int((a == c).sum()) for c in COLORS], [int((b == c).sum()) for c in COLORS]]
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    assert found.statistic == pytest.approx(chi2, rel=1e-12)
    assert found.p_value == pytest.approx(p, rel=1e-9)


def test_wasserstein_is_near_scipys_in_reference_stds() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=5000), rng.normal(0.5, 1.2, size=4000)
    found = check_drift(Reference.fit({"a": a}), {"a": b}).features[0]
    assert found.distance == pytest.approx(
        stats.wasserstein_distance(a, b) / a.std(), abs=0.05
    )  # estimated from the bins


# --- windows ------------------------------------------------------------------------------


def test_row_by_row_in_chunks_or_at_once_give_the_same_report() -> None:
    rng = np.random.default_rng(7)
    ref_data = mixed(rng, 3000)
    ref = Reference.fit(ref_data, embeddings={"text": embedded(rng, 3000)})
    data = mixed(rng, 240, shift=0.4)
    data["x1"][::7] = np.nan
    data["text"] = embedded(rng, 240, move=0.3)
    rows = [{k: v[i] for k, v in data.items()} for i in range(240)]

    def report(parts: list[Any]) -> tuple[dict[str, Any], list[float]]:
        window = ref.window()
        for part in parts:
            window.update(part)
        out = window.check(0.05).to_dict()
        shift = [f.pop("centroid_shift") for f in out["features"] if f["kind"] == "embedding"]
        return out, shift

    at_once, shift = report([data])
    chunks = [{k: v[i : i + 37] for k, v in data.items()} for i in range(0, 240, 37)]
    for parts in (chunks, rows, [rows]):  # chunks, one dict row each, a list of dict rows
        out, moved = report(parts)
        assert out == at_once
        assert moved == pytest.approx(shift, rel=1e-9)  # a float sum: the order rounds
    assert at_once["rows"] == 240 and "x0" in at_once["drifted_features"]


def test_a_windows_size_does_not_grow_with_its_rows() -> None:
    rng = np.random.default_rng(8)
    small = Reference.fit(mixed(rng, 10_000))
    large = Reference.fit(mixed(rng, 1_000_000))
    shapes = [
        [len(v) for v in c.values() if isinstance(v, list)]
        for c in json.loads(small.to_bytes())["columns"]
    ]
    assert [
        [len(v) for v in c.values() if isinstance(v, list)]
        for c in json.loads(large.to_bytes())["columns"]
    ] == shapes
    assert len(large.to_bytes()) < 1.2 * len(small.to_bytes())  # longer counts, no more of them
    window = large.window()
    empty = window.nbytes
    window.update(mixed(rng, 10_000))
    assert window.nbytes == empty
    for _ in range(10):
        window.update(mixed(rng, 100_000))
    assert window.nbytes == empty and window.rows == 1_010_000
    assert empty < 16_000  # bins x 8 bytes per numeric feature, a few counts per category


def test_reset_starts_an_empty_window() -> None:
    rng = np.random.default_rng(9)
    ref = Reference.fit(mixed(rng, 2000))
    window = ref.window().update(mixed(rng, 500, shift=1.0))
    assert window.check().drifted
    window.reset()
    assert window.rows == 0
    assert not window.update(mixed(rng, 500)).check().drifted


def test_round_trip_through_bytes_gives_identical_reports() -> None:
    rng = np.random.default_rng(10)
    ref = Reference.fit(mixed(rng, 3000), embeddings={"text": embedded(rng, 3000)}, bins=150)
    again = Reference.from_bytes(ref.to_bytes())
    data = mixed(rng, 1000, shift=0.2)
    data["text"] = embedded(rng, 1000, move=0.2)
    assert again.columns == ref.columns == [*(f"x{i}" for i in range(6)), "color", "level", "text"]
    assert again.to_bytes() == ref.to_bytes()
    assert check_drift(again, data).to_dict() == check_drift(ref, data).to_dict()
    assert json.loads(ref.to_bytes())["version"] == 1


def test_every_data_form_gives_the_same_reference() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(11)
    matrix = rng.normal(size=(500, 3))
    names = ["a", "b", "c"]
    by_columns = Reference.fit({n: matrix[:, i] for i, n in enumerate(names)}).to_bytes()
    assert Reference.fit(matrix, columns=names).to_bytes() == by_columns
    assert (
        Reference.fit([dict(zip(names, row, strict=True)) for row in matrix.tolist()]).to_bytes()
        == by_columns
    )
    assert Reference.fit(pd.DataFrame(matrix, columns=names)).to_bytes() == by_columns
    nullable = pd.DataFrame(
        {"n": pd.array([1, None, 3, 4, 5, 6, 7], dtype="Int64"), "s": ["a", None, *"bcdef"]}
    )
    ref = Reference.fit(nullable)
    assert ref.kinds() == {"n": "numeric", "s": "categorical"}
    report = check_drift(ref, nullable)
    assert [f.missing for f in report.features] == [pytest.approx(1 / 7)] * 2 and not report.drifted


def test_kinds_follow_evidentlys_rule_unless_named() -> None:
    rng = np.random.default_rng(12)
    data = {
        "x": rng.normal(size=300),
        "flag": rng.random(300) < 0.5,
        "name": rng.choice(COLORS, size=300),
        "small": rng.integers(0, 5, size=300),  # 5 distinct values: categorical
        "six": rng.integers(0, 6, size=300),  # 6: numeric
        "code": rng.integers(0, 100, size=300),
    }
    ref = Reference.fit(data, categorical=["code"])
    assert ref.kinds() == {
        "x": "numeric",
        "flag": "categorical",
        "name": "categorical",
        "small": "categorical",
        "six": "numeric",
        "code": "categorical",
    }


def test_the_public_names() -> None:
    import conveyor.lifecycle as lc

    for name in ("Reference", "DriftWindow", "DriftReport", "FeatureDrift", "check_drift"):
        assert name in lc.__all__
    assert isinstance(Reference.fit({"a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}).window(), DriftWindow)
    report = check_drift(Reference.fit({"a": np.arange(50.0)}), {"a": np.arange(50.0)})
    assert isinstance(report, DriftReport) and isinstance(report.features[0], FeatureDrift)
    assert report.summary() == "no drift in 1 features (50 rows, level 0.01)"
    json.dumps(report.to_dict())


# --- bad input ----------------------------------------------------------------------------


def test_missing_and_extra_columns_are_named() -> None:
    rng = np.random.default_rng(13)
    ref = Reference.fit(mixed(rng, 500))
    data = mixed(rng, 100)
    del data["x3"]
    with pytest.raises(LifecycleError, match=r"missing: \['x3'\].*send every reference column"):
        check_drift(ref, data)
    data = mixed(rng, 100)
    data["extra"] = np.zeros(100)
    with pytest.raises(LifecycleError, match=r"not in the reference: \['extra'\]"):
        check_drift(ref, data)
    window = ref.window()
    with pytest.raises(LifecycleError):
        window.update(data)
    assert window.rows == 0 and window.nbytes == ref.window().nbytes


def test_nan_and_inf_are_counted_and_a_rising_missing_share_is_an_alarm() -> None:
    rng = np.random.default_rng(14)
    ref = Reference.fit({"x": rng.normal(size=5000), "c": rng.choice(COLORS, size=5000)})
    x = rng.normal(size=5000)
    x[:400] = np.nan
    x[400:450] = np.inf
    c = rng.choice(COLORS, size=5000).astype(object)
    c[:400] = None
    report = check_drift(ref, {"x": x, "c": c})
    assert report.drifted_features == ["x", "c"]
    assert report.features[0].missing == pytest.approx(450 / 5000)
    assert report.features[1].missing == pytest.approx(400 / 5000)
    assert "missing 9.0%" in report.summary()
    rows = [{"x": None, "c": None}, {"x": float("nan"), "c": "red"}]  # one row at a time, too
    assert ref.window().update(rows[0]).update(rows[1]).rows == 2


def test_strings_in_a_numeric_column_are_refused_with_the_fix() -> None:
    ref = Reference.fit({"x": np.arange(100.0)})
    with pytest.raises(LifecycleError, match=r"'x' is numeric.*'abc'.*categorical=\['x'\]"):
        check_drift(ref, [{"x": 1.0}, {"x": "abc"}, {"x": 3.0}])
    with pytest.raises(LifecycleError, match="'x' is numeric"):
        check_drift(ref, {"x": np.array(["1", "2"])})


def test_empty_data_is_refused() -> None:
    with pytest.raises(LifecycleError, match="needs data"):
        Reference.fit({})
    with pytest.raises(LifecycleError, match="needs data"):
        Reference.fit({"x": []})
    with pytest.raises(LifecycleError, match="needs data"):
        Reference.fit([])
    ref = Reference.fit({"x": np.arange(100.0)})
    with pytest.raises(LifecycleError, match="no rows: update"):
        check_drift(ref, {"x": []})
    with pytest.raises(LifecycleError, match="no finite value"):
        Reference.fit({"x": [np.nan] * 10, "y": np.arange(10.0)}, categorical=["y"])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.arange(10.0), "must be 2-D"),
        (42, "int is not understood"),
        ([1, 2, 3], "row 0 is a int"),
        ({"a": [1.0, 2.0], "b": [1.0]}, "different lengths"),
        ({"a": [1.0, 2.0], "b": 1.0}, "'b' holds one value"),
    ],
)
def test_data_that_is_not_a_table_is_refused(data: Any, match: str) -> None:
    with pytest.raises(LifecycleError, match=match):
        Reference.fit(data)


def test_bad_parameters_and_embeddings_are_refused() -> None:
    rng = np.random.default_rng(15)
    with pytest.raises(LifecycleError, match="bins=1"):
        Reference.fit({"x": np.arange(10.0)}, bins=1)
    with pytest.raises(LifecycleError, match="categorical= names"):
        Reference.fit({"x": np.arange(10.0)}, categorical=["y"])
    ref = Reference.fit({"x": rng.normal(size=100)}, embeddings={"e": embedded(rng, 100)})
    with pytest.raises(LifecycleError, match=r"level=1\.5"):
        ref.window().update({"x": 0.0, "e": np.ones(16)}).check(1.5)  # one row
    with pytest.raises(LifecycleError, match="16 dims in the reference but 8"):
        check_drift(ref, {"x": np.zeros(3), "e": np.ones((3, 8))})
    with pytest.raises(LifecycleError, match="zero centroid"):
        Reference.fit(embeddings={"e": np.vstack([np.ones((5, 4)), -np.ones((5, 4))])})


def test_a_reference_from_a_newer_format_or_damaged_is_refused() -> None:
    doc = json.loads(Reference.fit({"x": np.arange(100.0)}).to_bytes())
    doc["version"] = 2
    with pytest.raises(LifecycleError, match=r"format version 2, newer.*upgrade conveyor"):
        Reference.from_bytes(json.dumps(doc).encode())
    with pytest.raises(LifecycleError, match="not a drift reference"):
        Reference.from_bytes(b"\x00garbage")
    doc["version"] = 1
    del doc["columns"][0]["edges"]
    with pytest.raises(LifecycleError, match="damaged"):
        Reference.from_bytes(json.dumps(doc).encode())


def test_extreme_values_do_not_break_the_check() -> None:
    rng = np.random.default_rng(16)
    ref = Reference.fit({"x": rng.normal(size=1000), "c": rng.choice(COLORS, size=1000)})
    weird = {"x": [1e308, -1e308, 0.0, -np.inf], "c": [{"a": 1}, b"\xff", 3.5, None]}
    report = check_drift(ref, weird)
    assert report.rows == 4 and all(np.isfinite(f.p_value) for f in report.features)


def test_without_the_extra_one_line_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['scipy'] = None\n"
        "from conveyor.lifecycle import Reference, LifecycleError\n"
        "try:\n    Reference.fit({'x': [1.0, 2.0]})\n"
        "except LifecycleError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (
        out.stdout.strip()
        == "drift checks need the lifecycle extra: pip install 'conveyor[lifecycle]'"
    )
