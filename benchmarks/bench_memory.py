"""Peak memory of a run against its number of items: flat by default.

Run it from the repository root; it writes ``benchmarks/RESULTS-memory.md``::

    .venv/bin/python benchmarks/bench_memory.py [--sizes 10000,100000,1000000,10000000]
    .venv/bin/python benchmarks/bench_memory.py --baseline /tmp/old/src   # add a column

Each point is a fresh Python process that streams N ints through a two-stage thread
pipeline (``x + 1`` then ``2 * x``, 2 workers each) with the default settings (the
recorder on), iterating ``pipe.stream(range(N))`` and discarding the results, then
prints its peak resident set size (``VmHWM`` from /proc/self/status: Linux carries
``ru_maxrss`` over fork and exec from the parent, so it is the fallback elsewhere).
The same with ``record=False`` shows the engine alone. ``--baseline`` runs the
default configuration again with another conveyor's ``src`` directory first on the
path (say, an older commit's, from ``git archive``), for comparison.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).with_name("RESULTS-memory.md")
SRC = Path(__file__).resolve().parent.parent / "src"

CHILD = """
import sys
sys.path.insert(0, {src!r})
import conveyor as cv

def inc(x):
    return x + 1

def double(x):
    return 2 * x

pipe = cv.Pipeline("memory", [cv.Stage(inc, workers=2), cv.Stage(double, workers=2)])
count = 0
for _ in pipe.stream(range({n}), record={record}):
    count += 1
assert count == {n}, count
try:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
except OSError:
    import resource
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(kib)
"""


def peak_mib(n: int, *, record: bool, src: Path = SRC) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a fresh process streaming n items."""
    code = CHILD.format(src=str(src), n=n, record=record)
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return int(out.strip()) / 1024, time.perf_counter() - t


def machine() -> list[str]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"- CPU: {model}, {os.cpu_count()} cores (shared with other work; load average "
        f"{load:.1f} at the start)",
        f"- Python {platform.python_version()}, {platform.system()} {platform.release()}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--baseline", type=Path, help="another conveyor's src directory")
    parser.add_argument("--baseline-max", type=int, default=1_000_000, help="largest N for it")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = machine()
    rows = []
    for n in sizes:
        on, t_on = peak_mib(n, record=True)
        off, t_off = peak_mib(n, record=False)
        base = None
        if args.baseline is not None and n <= args.baseline_max:
            base = peak_mib(n, record=True, src=args.baseline)[0]
        rows.append((n, on, off, base, t_on, t_off))
        print(
            f"{n:>12,}  recorder on {on:7.1f} MiB ({t_on:.1f} s)  off {off:7.1f} MiB"
            + ("" if base is None else f"  baseline {base:7.1f} MiB"),
            flush=True,
        )
    lines = [
        "# Memory benchmark: peak RSS against the number of items",
        "",
        f"`benchmarks/bench_memory.py`, run {when}.",
        "",
        *head,
        "",
        "Each row is a fresh process streaming N ints through two thread stages (`x + 1`, then",
        "`2 * x`, 2 workers each), iterating `pipe.stream(range(N))` and discarding the results;",
        "the figure is the process's peak resident set size (VmHWM), Python itself included.",
        "",
    ]
    header = "| items | default (recorder on) MiB | `record=False` MiB | difference MiB |"
    rule = "|---:|---:|---:|---:|"
    if args.baseline is not None:
        header += " before: a recorder of every unit MiB |"
        rule += "---:|"
    lines += [header, rule]
    for n, on, off, base, _, _ in rows:
        row = f"| {n:,} | {on:.1f} | {off:.1f} | {on - off:+.1f} |"
        if args.baseline is not None:
            row += " - |" if base is None else f" {base:.1f} |"
        lines.append(row)
    spread_on = max(r[1] for r in rows) - min(r[1] for r in rows)
    spread_off = max(r[2] for r in rows) - min(r[2] for r in rows)
    lines += [
        "",
        f"From {sizes[0]:,} to {sizes[-1]:,} items the peak moves by {spread_on:.1f} MiB with the "
        f"recorder and {spread_off:.1f} MiB without: flat. Wall time of the largest run: "
        f"{rows[-1][4]:.1f} s recorded, {rows[-1][5]:.1f} s with `record=False`.",
        "",
    ]
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
