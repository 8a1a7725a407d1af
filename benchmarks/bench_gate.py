"""The evaluation gate: conveyor's paired bootstrap against MLflow's point comparison.

    python benchmarks/bench_gate.py           # rewrites benchmarks/RESULTS-gate.md
    python benchmarks/bench_gate.py --quick   # small sizes, prints only

MLflow's gate (``mlflow.validate_evaluation_results``) compares two point values of a
metric against a threshold: no interval, no slices. It is reimplemented here as the
baseline (computing the metric for both models and comparing), with the textbook
bootstrap (draw row indices for every resample) beside it, at 10^4 and 10^6 rows and
2,000 resamples. Needs the lifecycle extra (NumPy) and scikit-learn for F1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import machine  # noqa: E402

from conveyor.lifecycle import gate  # noqa: E402

RESAMPLES = 2000


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def point_comparison(y: Any, cand: Any, champ: Any, min_change: float = 0.0) -> bool:
    """What mlflow.validate_evaluation_results decides: the candidate's metric beats
    the baseline's by ``min_absolute_change``, on the point values alone."""
    return float((cand == y).mean()) >= float((champ == y).mean()) + min_change


def plain_bootstrap(y: Any, cand: Any, champ: Any, resamples: int) -> tuple[float, float]:
    """The textbook paired bootstrap: draw n row indices per resample (in chunks)."""
    rng = np.random.default_rng(0)
    n = len(y)
    a, b = (cand == y).astype(float), (champ == y).astype(float)
    per = max(1, (1 << 22) // n)
    out = []
    for start in range(0, resamples, per):
        idx = rng.integers(0, n, size=(min(per, resamples - start), n))
        out.append(a[idx].mean(1) - b[idx].mean(1))
    low, high = np.quantile(np.concatenate(out), [0.025, 0.975])
    return float(low), float(high)


def data(n: int, classes: int = 10) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(n)
    y = rng.integers(0, classes, size=n)
    cand = np.where(rng.random(n) < 0.91, y, (y + 1) % classes)
    champ = np.where(rng.random(n) < 0.90, y, (y + 2) % classes)
    return y, cand, champ


def classification(sizes: list[int], repeat: int, plain_cap: int) -> list[str]:
    rows = [
        "| rows | method | reports | ms | × point comparison | × plain bootstrap |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for n in sizes:
        rows += classification_at(n, repeat, plain_cap)
    return rows


def classification_at(n: int, repeat: int, plain_cap: int) -> list[str]:
    rows = []
    y, cand, champ = data(n)
    groups = y  # ten slice groups
    base = best_of(lambda: point_comparison(y, cand, champ), repeat)
    plain_resamples = min(RESAMPLES, max(100, plain_cap // n))
    plain = best_of(lambda: plain_bootstrap(y, cand, champ, plain_resamples), 1)
    plain *= RESAMPLES / plain_resamples
    scaled = "" if plain_resamples == RESAMPLES else f" (timed on {plain_resamples}, scaled)"
    runs = [
        ("point comparison (MLflow's rule)", "two numbers", base),
        (f"plain index bootstrap{scaled}", "interval", plain),
        (
            "conveyor gate, accuracy",
            "interval, power",
            best_of(lambda: gate(cand, champ, None, y, resamples=RESAMPLES), repeat),
        ),
        (
            "conveyor gate, accuracy, 10 slice groups",
            "+ a Bonferroni interval per group",
            best_of(lambda: gate(cand, champ, None, y, slices={"digit": groups}), repeat),
        ),
        (
            "conveyor gate, f1_macro",
            "interval, power",
            best_of(lambda: gate(cand, champ, None, y, metric="f1_macro"), repeat),
        ),
    ]
    for name, reports, s in runs:
        rows.append(
            f"| {n:,} | {name} | {reports} | {s * 1e3:,.2f} | {s / base:,.0f}× | {s / plain:.4f}× |"
        )
    return rows


def continuous(sizes: list[int]) -> list[str]:
    rows = ["| rows | metric | s | s per million row-resamples |", "|---:|---|---:|---:|"]
    for n in sizes:
        rows += continuous_at(n)
    return rows


def continuous_at(n: int) -> list[str]:
    rows = []
    rng = np.random.default_rng(n)
    y = rng.normal(size=n)
    cand, champ = y + rng.normal(scale=0.9, size=n), y + rng.normal(size=n)
    s = best_of(lambda: gate(cand, champ, None, y, metric="mae"), 1)
    rows.append(
        f"| {n:,} | mae (continuous: drawn indices) | {s:.3f} | {s / n / RESAMPLES * 1e6:.4f} |"
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes; print, write nothing")
    args = ap.parse_args()
    sizes = [10_000, 100_000] if args.quick else [10_000, 1_000_000]
    repeat = 3
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# The evaluation gate",
        "",
        f"Machine: {machine()}. Run: {stamp}, `python benchmarks/bench_gate.py`.",
        f"Medians of {repeat} runs (1 for the plain bootstrap and the continuous metric), "
        f"side by side in one process; {RESAMPLES:,} resamples, 95% intervals.",
        "",
        "## 1. Classification, 10 classes: candidate 91% against champion 90%",
        "",
        *classification(sizes, repeat, plain_cap=200_000_000),
        "",
        "The point comparison is what MLflow's `validate_evaluation_results` computes: two "
        "numbers and a threshold, no interval, no slices. The gate's accuracy and F1 "
        "resample counts of distinct (label, candidate, champion) cells, not rows, so their "
        "cost hardly grows with the rows; the plain bootstrap's grows with rows × resamples.",
        "",
        "## 2. A continuous metric: every row distinct, so rows are drawn as indices",
        "",
        *continuous(sizes),
        "",
    ]
    text = "\n".join(out)
    print(text)
    if not args.quick:
        (HERE / "RESULTS-gate.md").write_text(text)


if __name__ == "__main__":
    main()
