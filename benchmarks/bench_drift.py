"""Drift checks: conveyor's binned tests against scipy's exact KS and Evidently, side by side.

    python benchmarks/bench_drift.py           # rewrites benchmarks/RESULTS-drift.md
    python benchmarks/bench_drift.py --quick   # small sizes, prints only

1. 300,000 rows x 100 numeric columns: Reference.fit, window update, check; against
   scipy.stats.ks_2samp per column (the exact test) on the same data;
2. 300,000 rows x 1,000 numeric columns (the window fed in chunks);
3. Evidently's DataDriftPreset on a subset (30,000 rows x 20 columns) against conveyor
   on the same frames (needs the bench-drift extra: evidently, pandas);
4. a window's memory at 10^4 and 10^6 rows.

Needs the lifecycle extra. Everything runs in one process, one after the other; the
machine is shared, so the table keeps ratios and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import machine  # noqa: E402

from conveyor.lifecycle import Reference  # noqa: E402

SHIFTED = (3, 17, 42, 64, 88)  # columns moved by 0.05 std in the window


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def data(rng: Any, rows: int, cols: int, shift: float = 0.0) -> Any:
    x = rng.standard_normal((rows, cols))
    for c in SHIFTED:
        if c < cols:
            x[:, c] += shift
    return x


def wide_table(rows: int, cols: int, repeat: int) -> tuple[list[str], dict[str, float]]:
    rng = np.random.default_rng(0)
    ref_x, win_x = data(rng, rows, cols), data(rng, rows, cols, shift=0.05)
    t_fit, ref = timed(lambda: Reference.fit(ref_x), repeat)
    t_update, win = timed(lambda: ref.window().update(win_x), repeat)
    t_check, report = timed(lambda: win.check(0.01), repeat)
    t_scipy, exact = timed(lambda: [stats.ks_2samp(ref_x[:, c], win_x[:, c]) for c in range(cols)])
    threshold = 0.01 / cols
    flagged_exact = [c for c, r in enumerate(exact) if r.pvalue < threshold]
    flagged = [int(name[1:]) for name in report.drifted_features]
    gap = max(r.statistic - f.statistic for r, f in zip(exact, report.features, strict=True))
    ours = t_update + t_check
    lines = [
        f"## 1. {rows:,} rows x {cols} numeric columns (reference and window alike)",
        "",
        "| step | s | × conveyor update+check |",
        "|---|---:|---:|",
        f"| conveyor Reference.fit (once per reference) | {t_fit:.2f} | {t_fit / ours:.2f}× |",
        f"| conveyor window.update (all rows at once) | {t_update:.2f} | {t_update / ours:.2f}× |",
        f"| conveyor window.check | {t_check:.3f} | {t_check / ours:.3f}× |",
        f"| **conveyor update + check** | **{ours:.2f}** | 1.00× |",
        f"| conveyor fit + update + check | {t_fit + ours:.2f} | {(t_fit + ours) / ours:.2f}× |",
        f"| scipy.stats.ks_2samp per column (exact KS) | {t_scipy:.2f} | {t_scipy / ours:.2f}× |",
        "",
        f"Target: the drift check on {rows:,} x {cols} within 10 s on 2 cores. "
        f"Window rows per second (update): {rows / t_update:,.0f}. Reference size: "
        f"{len(ref.to_bytes()):,} bytes; window: {win.nbytes:,} bytes.",
        "",
        f"Agreement: columns {list(SHIFTED)} moved by 0.05 std. Flagged at p < 0.01/{cols} "
        f"by conveyor: {flagged}; by the exact KS: {flagged_exact}. Largest exact D - binned D: "
        f"{gap:.4f} (bound: 1/bins = 0.01).",
        "",
    ]
    return lines, {"fit": t_fit, "update": t_update, "check": t_check, "scipy": t_scipy}


def wider(rows: int, cols: int, chunk: int) -> list[str]:
    rng = np.random.default_rng(1)
    ref_x = rng.standard_normal((rows, cols), dtype=np.float32)
    t0 = time.perf_counter()
    ref = Reference.fit(ref_x)
    t_fit = time.perf_counter() - t0
    del ref_x  # the window's chunks come one at a time
    win = ref.window()
    t_update = 0.0
    for start in range(0, rows, chunk):
        part = rng.standard_normal((min(chunk, rows - start), cols), dtype=np.float32)
        t0 = time.perf_counter()
        win.update(part)
        t_update += time.perf_counter() - t0
    t_check, report = timed(lambda: win.check(0.01))
    return [
        f"## 2. {rows:,} rows x {cols:,} numeric columns (float32; window in chunks of {chunk:,})",
        "",
        "| step | s |",
        "|---|---:|",
        f"| Reference.fit | {t_fit:.1f} |",
        f"| window.update, all chunks | {t_update:.1f} |",
        f"| window.check | {t_check:.2f} |",
        f"| **update + check** | **{t_update + t_check:.1f}** |",
        "",
        f"Target: 60 s. Unshifted window: {len(report.drifted_features)} of {cols:,} features "
        f"flagged at level 0.01 (expected 0 or, rarely, 1). Window: {win.nbytes:,} bytes.",
        "",
    ]


def evidently(rows: int, cols: int) -> list[str]:
    title = f"## 3. Evidently's DataDriftPreset against conveyor, {rows:,} rows x {cols} columns"
    try:
        import pandas as pd
        from evidently import Report
        from evidently.presets import DataDriftPreset
    except ImportError as exc:
        return [
            title,
            "",
            f"Not run: Evidently does not import here ({exc}); `pip install -e '.[bench-drift]'`.",
            "",
        ]
    import evidently as ev

    rng = np.random.default_rng(2)
    names = [f"x{i}" for i in range(cols)]
    ref_df = pd.DataFrame(data(rng, rows, cols), columns=names)
    cur_df = pd.DataFrame(data(rng, rows, cols, shift=0.05), columns=names)

    def run_evidently() -> Any:
        return Report([DataDriftPreset()]).run(current_data=cur_df, reference_data=ref_df)

    def run_conveyor() -> Any:
        return Reference.fit(ref_df).window().update(cur_df).check(0.01)

    t_ev, _ = timed(run_evidently)
    t_cv, report = timed(run_conveyor, 3)
    return [
        title,
        "",
        "| runner | s | × conveyor |",
        "|---|---:|---:|",
        f"| conveyor: fit + update + check (median of 3) | {t_cv:.3f} | 1.00× |",
        f"| Evidently {ev.__version__} DataDriftPreset (one run) | {t_ev:.2f} | {t_ev / t_cv:.0f}× |",
        "",
        "Both from pandas DataFrames. Evidently on a reference over 1,000 rows uses the "
        "normed Wasserstein distance (threshold 0.1) per numeric column and builds a "
        "rendered report; conveyor counts bins and tests (KS, Bonferroni). "
        f"conveyor flagged: {report.drifted_features}.",
        "",
    ]


def memory() -> list[str]:
    rng = np.random.default_rng(3)
    ref = Reference.fit(
        {
            "x": rng.standard_normal(100_000),
            "c": rng.choice(["a", "b", "c", "d", "e", "f"], 100_000),
        }
    )
    out = [
        "## 4. A window's memory (1 numeric and 1 categorical column, chunks of 10,000 rows)",
        "",
        "| rows | window nbytes | peak traced during the updates |",
        "|---:|---:|---:|",
    ]
    for rows in (10_000, 1_000_000):
        chunks = [
            {
                "x": rng.standard_normal(10_000),
                "c": rng.choice(["a", "b", "c", "d", "e", "f"], 10_000),
            }
            for _ in range(2)
        ]
        win = ref.window()
        tracemalloc.start()
        for i in range(rows // 10_000):
            win.update(chunks[i % 2])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out.append(f"| {rows:,} | {win.nbytes:,} | {peak / 1e6:.2f} MB |")
    return [*out, "", "The peak is one chunk's temporaries; the window itself does not grow.", ""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes; print, write nothing")
    ap.add_argument("--no-wide", action="store_true", help="skip 300,000 x 1,000")
    args = ap.parse_args()
    q = args.quick
    host = machine()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Drift checks",
        "",
        f"Machine: {host}. Run: {started}, `python benchmarks/bench_drift.py`.",
        "Side by side in one process; conveyor's steps are medians of 3 runs (1 in --quick).",
        "",
    ]
    lines, _ = wide_table(30_000 if q else 300_000, 100, 1 if q else 3)
    out += lines
    if not args.no_wide:
        out += wider(30_000 if q else 300_000, 1_000, 10_000 if q else 30_000)
    out += evidently(3_000 if q else 30_000, 20)
    out += memory()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out += [f"Load average at the end: {load:.1f} (other engineers' work shares the 2 cores).", ""]
    text = "\n".join(out)
    print(text)
    if not q:
        (HERE / "RESULTS-drift.md").write_text(text)


if __name__ == "__main__":
    main()
