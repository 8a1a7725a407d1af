"""Recordings and traces at scale: what ``--record``, ``conveyor analyze`` and ``--trace`` cost.

Run it from the repository root; it writes ``benchmarks/RESULTS-recordings.md``::

    .venv/bin/python benchmarks/bench_recordings.py [--sizes 10000,100000,1000000]
    .venv/bin/python benchmarks/bench_recordings.py --before OLD/src   # compare a checkout

For each size (units per stage), a cheap three-stage pipeline on threads (``x + 1``,
``2 * x``, ``x - 1``; 2 workers each) runs twice, with ``record=False`` and with the
recorder (the default), interleaved; then, in the recorded run's process:

- *record*: the time to take the recording from the run and save it
  (``Recording.save``), as a share of the ``record=False`` run's time; the recorder's
  own cost during the run (recorded run over unrecorded run) is shown apart;
- the recording file's size;
- ``conveyor analyze FILE`` in a fresh process: its wall time and its peak resident
  memory (``os.wait4``'s ``ru_maxrss`` of that one child);
- the Chrome trace's size (``conveyor analyze FILE --trace``), its time and peak
  memory; and, for ``--full-items`` items (10^6 by default), the same with a recorder
  that keeps every unit's detail (``conveyor run --detail all``), where the recording
  grows with the run and the trace's bound is at work.

With ``--before SRC`` the same measurements run a second time with ``PYTHONPATH=SRC``
(another checkout's ``src/``, say ``main``'s), side by side in the same table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import machine

OUT = Path(__file__).with_name("RESULTS-recordings.md")

# One measurement, in a child process (so that --before can swap the package).
CHILD = r"""
import json, sys, time, gc
from pathlib import Path
import conveyor as cv
from conveyor.observe import Recorder

n, folder, repeats, detail = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def inc(x): return x + 1
def double(x): return 2 * x
def dec(x): return x - 1

pipe = cv.Pipeline("recbench", [cv.Stage(inc, workers=2), cv.Stage(double, workers=2),
                                cv.Stage(dec, workers=2)])
off, on = [], []
run = None
for _ in range(repeats):
    gc.collect()
    t = time.perf_counter(); r = pipe.run(range(n), record=False); r.wait(); off.append(time.perf_counter() - t)
    del r
    gc.collect()
    instruments = [] if detail == "default" else [Recorder(detail=3 * n)]
    t = time.perf_counter()
    run = pipe.run(range(n), record=detail == "default", instruments=instruments)
    run.wait()
    on.append(time.perf_counter() - t)
t = time.perf_counter()
rec = run.recording if detail == "default" else instruments[0].recording
build = time.perf_counter() - t
saves = []
for _ in range(5 if rec.detail_units <= 100_000 else 2):  # the median of a few saves
    t = time.perf_counter()
    path = rec.save(folder / "run.recording")
    saves.append(time.perf_counter() - t)
saves.sort()
save = build + saves[len(saves) // 2]
import resource
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"off": off, "on": on, "save": save, "size": path.stat().st_size,
                  "units": rec.units, "run_rss": rss}))
"""


def child_env(src: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    return env


def measure_run(n: int, folder: Path, repeats: int, src: str | None, detail: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(folder), str(repeats), detail],
        env=child_env(src),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ``conveyor analyze`` reporting its own peak RSS: VmHWM of its own address space
# (ru_maxrss would count the parent's pages copied at fork, before the exec).
ANALYZE = r"""
import atexit, os, resource, sys
def peak():
    try:
        with open("/proc/self/status") as f:
            kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
    except OSError:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stderr.write(f"\nPEAK_KB {kb}\n")
atexit.register(peak)
sys.argv = ["conveyor", *sys.argv[1:]]
from conveyor.cli import main
main()
"""


def analyze(path: Path, src: str | None, *extra: str) -> tuple[float, float]:
    """``conveyor analyze PATH`` in a fresh process: (wall seconds, peak RSS in MB)."""
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", ANALYZE, "analyze", str(path), *extra],
        env=child_env(src),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(f"conveyor analyze failed ({p.returncode}): {p.stderr}")
    kb = next(int(ln.split()[1]) for ln in p.stderr.splitlines() if ln.startswith("PEAK_KB"))
    return wall, kb / 1024


def count_unit_events(trace: Path) -> int:
    """The trace's "X" events, counted without loading the file (with or without a
    space after the colon: older traces had one)."""
    patterns = (b'"ph":"X"', b'"ph": "X"')
    counts = dict.fromkeys(patterns, 0)
    tails = dict.fromkeys(patterns, b"")
    with trace.open("rb") as f:
        while chunk := f.read(1 << 24):
            for p in patterns:  # a tail one byte short of a pattern: no double count
                counts[p] += (tails[p] + chunk).count(p)
                tails[p] = chunk[-(len(p) - 1) :]
    return sum(counts.values())


def measure(n: int, repeats: int, src: str | None, detail: str = "default") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        m = measure_run(n, folder, repeats, src, detail)
        rec = folder / "run.recording"
        m["analyze"], m["rss"] = analyze(rec, src)
        trace = folder / "run.trace.json"
        extra = ["--trace", str(trace)]
        m["trace_s"], m["trace_rss"] = analyze(rec, src, *extra)
        m["trace"] = trace.stat().st_size
        m["trace_events"] = count_unit_events(trace)
    return m


def mb(b: float) -> str:
    return f"{b / 1e6:.3g} MB" if b >= 1e5 else f"{b / 1e3:.3g} kB"


def rows(label: str, n: int, m: dict) -> str:
    off, on = statistics.median(m["off"]), statistics.median(m["on"])
    return (
        f"| {label} | {n:,} | {m['units']:,} | {off:.2f} | {on:.2f} ({on / off - 1:+.0%}) "
        f"| {m['run_rss']:.0f} | {m['save'] * 1e3:.0f} ms ({m['save'] / off:.1%}) | {mb(m['size'])} "
        f"| {m['analyze']:.2f} | {m['rss']:.0f} | {mb(m['trace'])} ({m['trace_events']:,} unit events) "
        f"| {m['trace_s']:.2f} s, {m['trace_rss']:.0f} MB |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", help="another checkout's src/ to measure side by side")
    ap.add_argument(
        "--full-items",
        type=int,
        default=1_000_000,
        help="items of the run whose recorder keeps every unit's detail (0: none)",
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    host = machine()  # with the load average at the start
    started = datetime.datetime.now(datetime.UTC)
    table = []
    for n in sizes:
        for label, src in (("before", args.before), ("after", None)):
            if label == "before" and src is None:
                continue
            repeats = args.repeats if n <= 100_000 else 1
            m = measure(n, repeats, src)
            table.append(rows(label if args.before else "this checkout", n, m))
            print(table[-1], flush=True)
    full = []
    if args.full_items:
        n = args.full_items
        for label, src in (("before", args.before), ("after", None)):
            if label == "before" and src is None:
                continue
            m = measure(n, 1, src, detail="all")
            full.append(rows(f"{label}, every unit kept", n, m))
            print(full[-1], flush=True)
    end_load = os.getloadavg()[0]
    head = (
        "| code | items | units | run, record=False (s) | run, recorded (s, vs off) "
        "| run's peak RSS (MB) | save the recording (vs the run) | file | `conveyor analyze` (s) "
        "| analyze peak RSS (MB) | `--trace` | `analyze --trace` |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    text = f"""# Recordings and traces at scale

`benchmarks/bench_recordings.py`, run {started:%Y-%m-%d %H:%M} UTC on {host},
{end_load:.1f} at the end (the machine is shared: read the ratios, not the absolute times).

A three-stage pipeline of trivial functions on threads (2 workers each), one item per
unit, so units = 3 × items. Run times are medians of {args.repeats} interleaved runs
(one run at 10^6 items). *save* is the time to take the recording from the run and
write it (`Recording.save`, the median of 5 saves, 2 past 100,000 units of detail); *analyze* runs `conveyor analyze FILE` in a fresh process
(wall time including Python's start and imports, about 0.3 s; peak RSS of that
process, its own high-water mark); *--trace* is `conveyor analyze FILE --trace T`.
*before* is the code given with `--before` (the `main` branch when this was written:
recording version 2), *after* this checkout (version 3). The run's peak RSS is the
whole benchmark child's (both runs). The recorder's own cost during the run
(*recorded, vs off*) is the engine's hooks and is not changed here; on a loaded
machine it is noise-dominated (see `RESULTS-observability.md` for a repeated
measurement).

Targets (issue 9): saving the recording at most a few percent of the run;
`conveyor analyze` of a 10^6-unit recording under 5 s and 300 MB; a trace bounded
past 200,000 unit events, saying so.

{head}
{chr(10).join(table)}
"""
    if full:
        text += f"""
## A recorder asked to keep every unit's detail (`Recorder(detail=3 * items)`, `conveyor run --detail all`)

The recording then grows with the units: this is where the file's encoding, the
analysis's memory and the trace's bound matter.

{head}
{chr(10).join(full)}
"""
    OUT.write_text(text, encoding="utf-8")
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
