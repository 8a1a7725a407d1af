"""Observability benchmarks: the recorder's overhead, and balancing an unbalanced pipeline.

Run it from the repository root; it writes ``benchmarks/RESULTS-observability.md``::

    .venv/bin/python benchmarks/bench_observability.py [--repeats 15] [--items 300]
    .venv/bin/python benchmarks/bench_observability.py --baseline OLD/src/conveyor/observe/recorder.py

1. Recorder overhead: 100,000 ints through two trivial stages (``x + 1`` then
   ``2 * x``), 2 thread workers each, with the recorder off (``record=False``), with
   a do-nothing instrument (what the engine's hook calls cost by themselves), and
   with the recorder on (the default); with ``--baseline``, also with another
   recorder module (say, an older commit's, from ``git archive``) attached in its
   place. Configurations are interleaved and repeated; each is reported as the
   median wall time per item with its spread (interquartile range, and the lowest
   and highest run), and the median CPU time of the process (all threads).
2. Balancing: stages sleeping 10, 25 and 40 ms per item on threads, a budget of 8
   workers. Throughput with an equal split, with conveyor's balanced allocation
   (computed from the equal-split run's own recording), with the live rebalancer
   starting from the equal split, and with the optimum found by brute force over
   every allocation, each as items/s and as a share of the optimum's model
   throughput (100 items/s).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import itertools
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import conveyor as cv
from conveyor.analysis import balance, equal_split, measure, model_of, throughput_of

OUT = Path(__file__).with_name("RESULTS-observability.md")
COSTS_MS = {"load": 10, "transform": 25, "write": 40}
BUDGET = 8


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def sleeper(name: str, ms: float) -> Callable[[int], int]:
    def fn(x: int) -> int:
        time.sleep(ms / 1000)
        return x

    fn.__name__ = name
    return fn


def overhead(
    repeats: int, items: int = 100_000, baseline: Path | None = None
) -> dict[str, tuple[list[float], list[float]]]:
    """Per configuration: wall and CPU seconds of each repeat (interleaved)."""
    pipe = cv.Pipeline("trivial", [cv.Stage(inc, workers=2), cv.Stage(double, workers=2)])
    configs: dict[str, Callable[[], cv.Run]] = {
        "recorder off (record=False)": lambda: pipe.run(range(items), record=False),
        "no-op instrument, recorder off": lambda: pipe.run(
            range(items), record=False, instruments=[cv.Instrument()]
        ),
        "recorder on (default)": lambda: pipe.run(range(items)),
    }
    if baseline is not None:
        spec = importlib.util.spec_from_file_location("baseline_recorder", baseline)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        configs["baseline recorder (--baseline)"] = lambda: pipe.run(
            range(items), record=False, instruments=[module.Recorder()]
        )
    wall: dict[str, list[float]] = {k: [] for k in configs}
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    for fn in configs.values():
        fn()  # warm up: imports, thread start, allocator
    for _ in range(repeats):
        for name, fn in configs.items():
            c, t = time.process_time(), time.perf_counter()
            run = fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            assert run.results is not None and len(run.results) == items
    return {k: (wall[k], cpu[k]) for k in configs}


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[1], q[2]


def pipeline(workers: dict[str, int]) -> cv.Pipeline:
    return cv.Pipeline(
        "unbalanced",
        [cv.Stage(sleeper(n, ms), workers=workers[n]) for n, ms in COSTS_MS.items()],
    )


def timed(
    workers: dict[str, int], items: int, instruments: list[cv.Instrument] = ()
) -> tuple[float, cv.Run]:
    t = time.perf_counter()
    run = pipeline(workers).run(range(items), instruments=list(instruments))
    return items / (time.perf_counter() - t), run


def brute_force(demands: dict[str, float], budget: int) -> dict[str, int]:
    names = list(demands)
    best = max(
        (
            ws
            for ws in itertools.product(range(1, budget + 1), repeat=len(names))
            if sum(ws) <= budget
        ),
        key=lambda ws: (throughput_of(demands, dict(zip(names, ws, strict=True))), -sum(ws)),
    )
    return dict(zip(names, best, strict=True))


def balancing(items: int) -> tuple[list[tuple[str, dict[str, int], float, float]], str]:
    nominal = {n: ms / 1000 for n, ms in COSTS_MS.items()}
    optimum = brute_force(nominal, BUDGET)
    best = throughput_of(nominal, optimum)
    rows = []
    equal = equal_split(list(COSTS_MS), BUDGET)
    lam, run = timed(equal, items)
    rows.append(("equal split", equal, lam, throughput_of(nominal, equal)))
    other = dict(zip(COSTS_MS, sorted(equal.values()), strict=True))  # remainder to the last
    lam_o, _ = timed(other, items)
    rows.append(("equal split, remainder last", other, lam_o, throughput_of(nominal, other)))
    demands = model_of(measure(run.recording)).demands
    balanced = balance(demands, BUDGET).workers
    lam_b, _ = timed(balanced, items)
    rows.append(
        (
            "conveyor balanced (from the equal run)",
            balanced,
            lam_b,
            throughput_of(nominal, balanced),
        )
    )
    rb = cv.Rebalancer(BUDGET, interval_s=0.25)
    lam_l, _ = timed(equal, items, [rb])
    final = rb.decisions[-1].workers if rb.decisions else equal
    rows.append(
        (
            f"live rebalancing from the equal split ({len(rb.decisions)} resize(s), "
            f"first at {rb.decisions[0].t_s:.2f} s)"
            if rb.decisions
            else "live rebalancing (no resize)",
            final,
            lam_l,
            throughput_of(nominal, final),
        )
    )
    lam_opt, _ = timed(optimum, items)
    rows.append(("optimum (brute force over all allocations)", optimum, lam_opt, best))
    note = f"model optimum {best:.1f} items/s"
    return rows, note


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        head = "\n".join(lscpu.splitlines()[:15])
    except OSError:
        head = platform.processor()
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--items", type=int, default=300, help="items in the balancing runs")
    parser.add_argument("--baseline", type=Path, help="another recorder.py to compare with")
    args = parser.parse_args()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("recorder overhead ...", flush=True)
    n = 100_000
    ov = overhead(args.repeats, n, args.baseline)
    print("balancing ...", flush=True)
    rows, note = balancing(args.items)
    off_wall, off_cpu = (statistics.median(x) for x in ov["recorder off (record=False)"])
    lines = [
        "# Observability benchmarks",
        "",
        f"`benchmarks/bench_observability.py`, run {when}; Python {platform.python_version()}; "
        f"load average {load:.1f} at the start.",
        "",
        "The machine (below) is shared with other work, so wall times are noisy: the",
        "configurations are interleaved and repeated, and each row gives the median, the",
        "interquartile range and the extremes of the wall time per item, and the median CPU",
        "time of the process (all threads).",
        "",
        f"## Recorder overhead: 100,000 ints, two trivial stages, 2 thread workers each ({args.repeats} repeats)",
        "",
        "| configuration | median µs/item | IQR µs/item | min-max µs/item | vs off (median) | "
        "median CPU µs/item | vs off (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (wall, cpu) in ov.items():
        q1, med, q3 = quartiles(wall)
        c = statistics.median(cpu)
        lines.append(
            f"| {name} | {med / n * 1e6:.2f} | {q1 / n * 1e6:.2f}-{q3 / n * 1e6:.2f} | "
            f"{min(wall) / n * 1e6:.2f}-{max(wall) / n * 1e6:.2f} | {med / off_wall - 1:+.1%} | "
            f"{c / n * 1e6:.2f} | {c / off_cpu - 1:+.1%} |"
        )
    lines += [
        "",
        "The no-op instrument row is the cost of the engine's hook calls alone (the scheduler",
        "takes its instrumented path as soon as any instrument is attached); the recorder's",
        "own cost is the difference between its row and the no-op row.",
        "",
        f"## Balancing: stages of 10, 25 and 40 ms, budget {BUDGET} workers, {args.items} items",
        "",
        "| allocation | load / transform / write | measured items/s | model items/s | "
        "measured / model optimum | measured / measured optimum |",
        "|---|---|---:|---:|---:|---:|",
    ]
    best_model = max(r[3] for r in rows)
    best_measured = rows[-1][2]  # the optimum's own run
    for name, w, lam, model in rows:
        alloc = " / ".join(str(w[n]) for n in COSTS_MS)
        lines.append(
            f"| {name} | {alloc} | {lam:.1f} | {model:.1f} | {lam / best_model:.0%} | "
            f"{lam / best_measured:.0%} |"
        )
    lines += [
        "",
        f"Optimum: {note}. Measured throughput includes the pipeline's fill and drain",
        "(about 75 ms of latency) over the run, so it sits a little under the model.",
        "",
        "## Machine",
        "",
        "```",
        machine(),
        f"python {sys.version.split()[0]}",
        "```",
        "",
    ]
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
