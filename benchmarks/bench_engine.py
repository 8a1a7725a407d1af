"""The engine's benchmarks, side by side with its peers in one run.

    python benchmarks/bench_engine.py            # full run, rewrites benchmarks/RESULTS.md
    python benchmarks/bench_engine.py --quick    # small sizes, prints only

Needs the bench extra (pip install -e '.[bench]'): pyper (python-pyper), pypeln,
NumPy, psutil. Each measurement is repeated and the median kept; ratios are
computed within one run, because the machine may be shared and noisy.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchfns, importable by spawned workers

import benchfns as bf  # noqa: E402

import conveyor as cv  # noqa: E402


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --- 1. per-item overhead -----------------------------------------------------------


def overhead(n: int, repeat: int) -> dict[str, float]:
    import pypeln as pl
    from pyper import task

    def loop() -> list[int]:
        return [bf.double(bf.inc(x)) for x in range(n)]

    def conveyor(executor: str, record: bool = True) -> Callable[[], Any]:
        pipe = cv.Pipeline(
            "overhead",
            [
                cv.stage(bf.inc, executor=executor, workers=2),  # type: ignore[arg-type]
                cv.stage(bf.double, executor=executor, workers=2),  # type: ignore[arg-type]
            ],
        )
        return lambda: pipe.run(range(n), record=record).results

    def pyper(multiprocess: bool) -> Callable[[], Any]:
        p = (
            task(bf.produce, branch=True)
            | task(bf.inc, workers=2, multiprocess=multiprocess)
            | task(bf.double, workers=2, multiprocess=multiprocess)
        )
        return lambda: list(p(n))

    def pypeln(mod: Any) -> Callable[[], Any]:
        return lambda: list(mod.map(bf.double, mod.map(bf.inc, range(n), workers=2), workers=2))

    out = {"loop": median_time(loop, repeat)}
    out["conveyor threads"] = median_time(conveyor("threads"), repeat)
    out["conveyor threads, record=False"] = median_time(conveyor("threads", False), repeat)
    out["pyper threads"] = median_time(pyper(False), repeat)
    out["pypeln threads"] = median_time(pypeln(pl.thread), repeat)
    out["conveyor processes"] = median_time(conveyor("processes"), repeat)
    out["pyper processes"] = median_time(pyper(True), max(1, repeat // 2))
    out["pypeln processes"] = median_time(pypeln(pl.process), 1)
    return out


# --- 2 and 3. the sleep pipeline, streaming against barriers ---------------------------

SLEEPS = (0.004, 0.003, 0.005)


def sleep_pipeline(n: int, repeat: int) -> dict[str, float]:
    import pypeln as pl
    from pyper import task

    fns = [bf.sleep4, bf.sleep3, bf.sleep5]

    def conveyor(executor: str) -> Callable[[], Any]:
        pipe = cv.Pipeline(
            "sleep",
            [cv.stage(fn, executor=executor) for fn in fns],  # type: ignore[arg-type]
        )
        return lambda: pipe.run(range(n)).results

    def pyper() -> Callable[[], Any]:
        p = task(bf.produce, branch=True) | task(fns[0]) | task(fns[1]) | task(fns[2])
        return lambda: list(p(n))

    def pypeln() -> Callable[[], Any]:
        return lambda: list(
            pl.thread.map(
                fns[2],
                pl.thread.map(fns[1], pl.thread.map(fns[0], range(n), workers=1), workers=1),
                workers=1,
            )
        )

    def barrier() -> list[int]:
        xs: list[int] = list(range(n))
        for fn in fns:
            xs = [fn(x) for x in xs]  # each stage finishes every item before the next
        return xs

    def first_latency() -> float:
        # L: the time for one item to cross the pipeline alone
        pipe = cv.Pipeline("one", [cv.stage(fn, executor="threads") for fn in fns])
        return median_time(lambda: pipe.run(range(1)).results, 5)

    return {
        "conveyor threads": median_time(conveyor("threads"), repeat),
        "conveyor processes": median_time(conveyor("processes"), repeat),
        "pyper threads": median_time(pyper(), repeat),
        "pypeln threads": median_time(pypeln(), repeat),
        "barrier": median_time(barrier, max(1, repeat // 2)),
        "L": first_latency(),
    }


# --- 4. CPU-bound stages on processes ---------------------------------------------------


def cpu_pipeline(n: int, repeat: int) -> dict[str, float]:
    """conveyor's items/s against what the cores give the same work with no pipeline:
    every core running both stages' function over its own share of the items."""
    spin_cost = median_time(lambda: [bf.spin(i) for i in range(200)], 3) / 200
    cores = os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    with ctx.Pool(cores) as pool:
        pool.map(bf.spin_both, range(cores))  # start the workers before timing
        share = [list(range(i, n, cores)) for i in range(cores)]
        ideal = median_time(lambda: pool.map(bf.spin_all, share), repeat)
    pipe = cv.Pipeline(
        "cpu",
        [
            cv.stage(bf.spin, name="spin_a", executor="processes", workers=1),
            cv.stage(bf.spin, name="spin_b", executor="processes", workers=1),
        ],
    )
    steady, whole = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with pipe.stream(range(n)) as run:
            next(run)  # the first result: workers started, the pipeline filled
            t1 = time.perf_counter()
            count = 1 + sum(1 for _ in run)
        t2 = time.perf_counter()
        steady.append((count - 1) / (t2 - t1))
        whole.append(count / (t2 - t0))
    return {
        "spin_cost": spin_cost,
        "rate": statistics.median(steady),
        "whole": statistics.median(whole),
        "capacity": n / ideal,
        "one_core": 1 / (2 * spin_cost),
    }


# --- 5. NumPy arrays across process stages ------------------------------------------------


def arrays(n: int, repeat: int, fn_name: str) -> dict[str, float]:
    import numpy as np

    fn = getattr(bf, fn_name)
    data = [np.full(1 << 20, float(i)) for i in range(n)]  # 8 MiB each
    total_mb = n * data[0].nbytes / 1e6
    pipe = cv.Pipeline(
        "arrays",
        [
            cv.stage(fn, name="a", executor="processes", workers=1),
            cv.stage(fn, name="b", executor="processes", workers=1),
        ],
        capacity=4,
    )

    def conveyor() -> None:
        out = pipe.run(data).results
        assert len(out) == n

    def queues() -> None:
        ctx = mp.get_context("spawn")
        q1, q2, q3 = ctx.Queue(4), ctx.Queue(4), ctx.Queue(4)
        workers = [
            ctx.Process(target=bf.queue_worker, args=(fn_name, q1, q2)),
            ctx.Process(target=bf.queue_worker, args=(fn_name, q2, q3)),
        ]
        for w in workers:
            w.start()
        got = 0
        sent = 0
        while got < n:
            while sent < n and sent - got < 4:
                q1.put(data[sent])
                sent += 1
            q3.get()
            got += 1
        q1.put(None)
        q3.get()  # the stop marker, passed along
        for w in workers:
            w.join()

    t_cv = median_time(conveyor, repeat)
    t_q = median_time(queues, repeat)
    return {"conveyor MB/s": total_mb / t_cv, "queue MB/s": total_mb / t_q}


# --- 6. peak memory against the number of items ------------------------------------------


def peak_rss(n: int, record: bool) -> float:
    """Peak RSS (MiB) of a fresh process streaming n 1 KB items to a slow consumer."""
    code = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import benchfns as bf
import conveyor as cv
pipe = cv.Pipeline(
    "rss",
    [cv.stage(bf.inc_bytes, name="a", workers=2), cv.stage(bf.inc_bytes, name="b", workers=2)],
)
count = 0
for item in pipe.stream(bf.kilobytes({n}), record={record}):
    bf.slow_consumer(item)
    count += 1
assert count == {n}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec from the parent
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


# --- the report --------------------------------------------------------------------------


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average {load:.1f} at start"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes; print, write nothing")
    args = ap.parse_args()
    q = args.quick
    n_over = 10_000 if q else 100_000
    n_sleep = 40 if q else 200
    repeat = 1 if q else 3
    host = machine()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    lines = [
        "# Engine benchmarks",
        "",
        f"Machine: {host}. Run: {started}, `python benchmarks/bench_engine.py`.",
        "Each figure is the median of 3 runs (pypeln processes: 1 run) unless noted;",
        "every comparison was measured side by side in the same run.",
        "",
    ]

    ov = overhead(n_over, repeat)
    base = ov["loop"]

    def per_item(name: str) -> float:
        return (ov[name] - base) / n_over * 1e6

    lines += [
        f"## 1. Per-item overhead: {n_over:,} integers, two trivial stages, 2 workers each",
        "",
        "| runner | total s | overhead µs/item | conveyor's advantage |",
        "|---|---:|---:|---:|",
        f"| plain loop | {base:.3f} | 0 | |",
    ]
    for kind in ("threads", "processes"):
        mine = per_item(f"conveyor {kind}")
        names = [f"conveyor {kind}"]
        if kind == "threads":
            names.append("conveyor threads, record=False")
        names += [f"pyper {kind}", f"pypeln {kind}"]
        for name in names:
            ratio = "" if name.startswith("conveyor") else f"{per_item(name) / mine:.1f}×"
            lines.append(f"| {name} | {ov[name]:.3f} | {per_item(name):.2f} | {ratio} |")
    t_ratio = per_item("pyper threads") / per_item("conveyor threads")
    t_bare = per_item("pyper threads") / per_item("conveyor threads, record=False")
    p_ratio = per_item("pypeln processes") / per_item("conveyor processes")
    lines += [
        "",
        "conveyor rows run the default configuration, which measures every unit for the "
        "report (the recorder, in bounded aggregates); `record=False` shows the engine alone.",
        "",
        f"Targets: thread overhead ≤ ⅓ of pyper's: **{t_ratio:.1f}× lower** with the "
        f"recorder ({'met' if t_ratio >= 3 else 'NOT met'}), **{t_bare:.1f}× lower** for the "
        f"engine alone ({'met' if t_bare >= 3 else 'NOT met'}); process overhead ≤ 1/10 of "
        f"pypeln's: **{p_ratio:.0f}× lower** ({'met' if p_ratio >= 10 else 'NOT met'}). "
        "Process runs include starting the workers (spawn).",
        "",
    ]
    print("\n".join(lines))

    sp = sleep_pipeline(n_sleep, repeat)
    bound = 1 / max(SLEEPS)
    period = max(SLEEPS)
    formula_stream = sp["L"] + (n_sleep - 1) * period
    formula_barrier = n_sleep * sum(SLEEPS)
    lines += [
        f"## 2–3. Three stages sleeping 4, 3 and 5 ms, one worker each, {n_sleep} items",
        "",
        f"Bound 1/max(s_i) = {bound:.0f} items/s. Streaming makespan formula "
        f"T ≈ L + (N − 1)·P with measured L = {sp['L'] * 1e3:.1f} ms and P = 5 ms: "
        f"{formula_stream:.3f} s. Barrier formula T = Σ N·s_i = {formula_barrier:.3f} s.",
        "",
        "| runner | makespan s | items/s | share of bound | makespan / formula |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("conveyor threads", "conveyor processes", "pyper threads", "pypeln threads"):
        rate = n_sleep / sp[name]
        lines.append(
            f"| {name} | {sp[name]:.3f} | {rate:.1f} | {rate / bound:.1%} | "
            f"{sp[name] / formula_stream:.3f} |"
        )
    lines.append(
        f"| barrier (stage after stage) | {sp['barrier']:.3f} | {n_sleep / sp['barrier']:.1f} | "
        f"{n_sleep / sp['barrier'] / bound:.1%} | {sp['barrier'] / formula_barrier:.3f} |"
    )
    share = n_sleep / sp["conveyor threads"] / bound
    lines += [
        "",
        f"Targets: ≥ 98% of the bound: conveyor threads **{share:.1%}**; makespans within 5% "
        f"of their formulas: streaming {sp['conveyor threads'] / formula_stream - 1:+.1%}, "
        f"barrier {sp['barrier'] / formula_barrier - 1:+.1%}. Queues beat barriers by "
        f"{sp['barrier'] / sp['conveyor threads']:.2f}× here (the ideal is Σs/max s = 2.4×).",
        "",
    ]
    print("\n".join(lines[-12:]))

    cpu = cpu_pipeline(500 if q else 5000, repeat)
    lines += [
        "## 4. Two CPU-bound pure-Python stages on process workers (1 worker each)",
        "",
        f"Each stage costs {cpu['spin_cost'] * 1e3:.2f} ms per item run alone "
        f"({cpu['one_core']:.0f} items/s on one core). What the machine's "
        f"{os.cpu_count()} cores give, measured by running both stages' work on every core "
        f"over its own share of the items (no pipeline): {cpu['capacity']:.0f} items/s. "
        f"conveyor, from its first result to its last: **{cpu['rate']:.0f} items/s, "
        f"{cpu['rate'] / cpu['capacity']:.1%} of the cores' capacity** (target ≥ 90%); over "
        f"the whole run, starting its two worker processes (spawn) included: "
        f"{cpu['whole']:.0f} items/s ({cpu['whole'] / cpu['capacity']:.1%}).",
        "",
    ]
    print("\n".join(lines[-4:]))

    n_arr = 8 if q else 160
    inplace = arrays(n_arr, repeat, "touch")
    fresh = arrays(n_arr, repeat, "plus_one")
    lines += [
        f"## 5. {n_arr} arrays of 8 MiB through two process stages",
        "",
        "Baseline: the same two-process chain on `multiprocessing.Queue`s (pickled).",
        "",
        "| stage function | conveyor MB/s | pickled queues MB/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, r in (("`a[0] += 1; return a` (in place)", inplace), ("`a + 1` (new array)", fresh)):
        lines.append(
            f"| {label} | {r['conveyor MB/s']:.0f} | {r['queue MB/s']:.0f} | "
            f"{r['conveyor MB/s'] / r['queue MB/s']:.1f}× |"
        )
    lines.append("")
    print("\n".join(lines[-8:]))

    small, big = (2_000, 200_000) if q else (10_000, 1_000_000)
    rss = {(n, rec): peak_rss(n, rec) for rec in (False, True) for n in (small, big)}
    lines += [
        "## 6. Peak memory with a slow consumer",
        "",
        "Two thread stages, 1 KB items, a consumer slower than the pipeline; peak RSS of a",
        "fresh process, with the recorder off (the engine alone) and on (the default).",
        "",
        "| items | engine alone MiB | with the recorder MiB |",
        "|---:|---:|---:|",
        f"| {small:,} | {rss[small, False]:.1f} | {rss[small, True]:.1f} |",
        f"| {big:,} | {rss[big, False]:.1f} | {rss[big, True]:.1f} |",
        "",
        f"{big // small}× the items: the engine alone takes {rss[big, False] / rss[small, False]:.2f}× "
        f"the memory (its bounded queues hold it flat), and with the recorder "
        f"{rss[big, True] / rss[small, True]:.2f}× (its aggregates do not grow with the items; "
        "up to 10^7 items: RESULTS-memory.md).",
        "",
    ]
    print("\n".join(lines[-12:]))
    if not q:
        (HERE / "RESULTS.md").write_text("\n".join(lines))
        print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
