"""Streams and services: latency on a slow stream, request/response through ``submit``,
and an endless source's memory and store over time.

Run from the repository root::

    .venv/bin/python benchmarks/bench_service.py                 # every part, short endless run
    .venv/bin/python benchmarks/bench_service.py --endless-minutes 10

Parts:

* slow-stream: items arrive every ``--interval`` seconds into three thread stages,
  each busy ``--service`` seconds per item. For each item: when its result came out,
  less when it arrived and the three stages' busy time: the latency the pipeline
  adds. Beside it, the same three stages as hand-written threads joined by
  ``queue.Queue``s (what one writes without a framework).
* request/response: a three-stage thread pipeline of trivial functions in service
  mode; one caller submits and waits, item after item: the time from ``submit`` to
  its result, less the three calls made directly (the overhead per request). Then
  ``--callers`` threads at once, each waiting for every result before its next
  submit, and each submitting all its items before waiting: throughput beside the
  same pipeline run in batch mode over as many items, and beside the hand-written
  threads and queues.
* endless: an endless source through two thread stages in service mode, recorded in
  a run store, for ``--endless-minutes``: peak RSS and store size sampled every tenth
  of the time.

Writes ``benchmarks/RESULTS-service.md`` with the machine it ran on; ``--parts``
reruns some parts and keeps the others' sections from the last run.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import conveyor as cv
from conveyor.store import RunStore, StoreRecorder


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def make_busy(name: str, seconds: float) -> Callable[[Any], Any]:
    def stage(x: Any) -> Any:
        busy(seconds)
        return x

    stage.__name__ = name
    return stage


def inc(x: int) -> int:
    return x + 1


def dbl(x: int) -> int:
    return 2 * x


def neg(x: int) -> int:
    return -x


# --- hand-written: threads joined by queues ------------------------------------------


def threads_and_queues(fns: list[Callable[[Any], Any]], out: Callable[[Any], None]) -> Any:
    """Start one thread per function, joined by queues; return the first queue. A None
    item stops them."""
    queues: list[queue.Queue[Any]] = [queue.Queue() for _ in fns]

    def work(i: int) -> None:
        while True:
            item = queues[i].get()
            if item is None:
                if i + 1 < len(fns):
                    queues[i + 1].put(None)
                return
            tag, value = item
            result = (tag, fns[i](value))
            if i + 1 < len(fns):
                queues[i + 1].put(result)
            else:
                out(result)

    for i in range(len(fns)):
        threading.Thread(target=work, args=(i,), daemon=True).start()
    return queues[0]


# --- slow stream ------------------------------------------------------------------------


def bench_slow_stream(items: int, interval: float, service: float) -> dict[str, Any]:
    stages = [make_busy(f"s{i}", service) for i in range(3)]
    arrivals: dict[int, float] = {}

    def source() -> Iterator[int]:
        for i in range(items):
            time.sleep(interval)
            arrivals[i] = time.perf_counter()
            yield i

    pipe = cv.Pipeline("slow", [cv.Stage(f) for f in stages])
    added: list[float] = []
    with pipe.stream(source(), record=False) as run:
        for i in run:
            added.append(time.perf_counter() - arrivals[i] - 3 * service)

    done = threading.Event()
    ends: dict[int, float] = {}

    def out(result: Any) -> None:
        ends[result[0]] = time.perf_counter()
        if len(ends) == items:
            done.set()

    inbox = threads_and_queues(stages, out)
    starts: dict[int, float] = {}
    for i in range(items):
        time.sleep(interval)
        starts[i] = time.perf_counter()
        inbox.put((i, i))
    done.wait()
    inbox.put(None)
    hand = [ends[i] - starts[i] - 3 * service for i in range(items)]
    return {"conveyor": _ms(added), "threads+queues": _ms(hand)}


def _ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50": 1e3 * statistics.median(xs),
        "p99": 1e3 * xs[min(len(xs) - 1, int(0.99 * len(xs)))],
        "max": 1e3 * xs[-1],
    }


# --- request/response ----------------------------------------------------------------


def bench_requests(requests: int, callers: int, batch_items: int) -> dict[str, Any]:
    pipe = cv.Pipeline("rr", [cv.Stage(inc), cv.Stage(dbl), cv.Stage(neg)])
    direct = []
    for i in range(requests):
        t = time.perf_counter()
        neg(dbl(inc(i)))
        direct.append(time.perf_counter() - t)
    latencies = []
    with pipe.start(record=False) as service:
        for i in range(200):  # warm-up
            service.submit(i).result()
        for i in range(requests):
            t = time.perf_counter()
            assert service.submit(i).result() == -2 * (i + 1)
            latencies.append(time.perf_counter() - t)
        per_caller = batch_items // callers

        def caller(k: int) -> None:
            for i in range(per_caller):
                service.submit(i).result()

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        concurrent = per_caller * callers / (time.perf_counter() - t)

        def burst(k: int) -> None:
            futures = [service.submit(i) for i in range(per_caller)]
            for f in futures:
                f.result()

        threads = [threading.Thread(target=burst, args=(k,)) for k in range(callers)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        bursting = per_caller * callers / (time.perf_counter() - t)
    t = time.perf_counter()
    pipe.run(range(batch_items), record=False)
    batch = batch_items / (time.perf_counter() - t)

    # Hand-written threads and queues, each caller waiting on its own event.
    waiting: dict[int, threading.Event] = {}

    def out(result: Any) -> None:
        waiting[result[0]].set()

    inbox = threads_and_queues([inc, dbl, neg], out)
    counter = iter(range(10**12))
    lock = threading.Lock()

    def hand_caller() -> None:
        for _ in range(per_caller):
            with lock:
                tag = next(counter)
            event = waiting[tag] = threading.Event()
            inbox.put((tag, tag))
            event.wait()
            del waiting[tag]

    hand_latencies = []
    for i in range(requests):
        t = time.perf_counter()
        event = waiting[-1 - i] = threading.Event()
        inbox.put((-1 - i, i))
        event.wait()
        hand_latencies.append(time.perf_counter() - t)
    threads = [threading.Thread(target=hand_caller) for _ in range(callers)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    hand = per_caller * callers / (time.perf_counter() - t)
    inbox.put(None)
    overhead = statistics.median(latencies) - statistics.median(direct)
    return {
        "overhead_us_p50": 1e6 * overhead,
        "hand_overhead_us_p50": 1e6
        * (statistics.median(hand_latencies) - statistics.median(direct)),
        "latency_us_p99": 1e6 * sorted(latencies)[int(0.99 * len(latencies))],
        "concurrent_per_s": concurrent,
        "burst_per_s": bursting,
        "batch_per_s": batch,
        "hand_per_s": hand,
    }


# --- endless ----------------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_endless(minutes: float, tmp: Path) -> list[tuple[float, int, float, float]]:
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    db = tmp / "runs.db"
    store = RunStore(db)
    pipe = cv.Pipeline("endless", [cv.Stage(inc, workers=2), cv.Stage(dbl)])
    count = [0]

    def on_result(_: int) -> None:
        count[0] += 1

    service = pipe.start(
        endless(), on_result=on_result, instruments=[StoreRecorder(store, pipeline=pipe)]
    )
    samples = []
    start = time.perf_counter()
    for k in range(1, 11):
        time.sleep(max(0.0, start + k * minutes * 6 - time.perf_counter()))
        size = sum(
            os.path.getsize(f"{db}{suffix}")
            for suffix in ("", "-wal")
            if os.path.exists(f"{db}{suffix}")
        )
        samples.append((time.perf_counter() - start, count[0], rss_mib(), size / 2**20))
    service.stop(timeout=120)
    store.close()
    return samples


# --- the table ----------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def slow_section(args: argparse.Namespace, slow: dict[str, Any]) -> list[str]:
    lines = [
        f"## Latency on a slow stream ({args.items} items, one every "
        f"{args.interval * 1e3:.0f} ms, three thread stages busy "
        f"{args.service * 1e3:.1f} ms each)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')}. Latency added per item: result time − "
        "arrival − the stages' busy time.",
        "",
        "| | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for name, v in slow.items():
        lines.append(f"| {name} | {v['p50']:.2f} | {v['p99']:.2f} | {v['max']:.2f} |")
    return lines


def requests_section(args: argparse.Namespace, rr: dict[str, Any]) -> list[str]:
    c = args.callers
    return [
        f"## Request/response (`submit`, three trivial thread stages; {c} callers, "
        f"{args.batch_items:,} items)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')}. *Waiting* callers submit one item and wait "
        "for its result before the next; *bursting* callers submit all theirs, then wait.",
        "",
        "| measure | conveyor | hand-written threads + queues |",
        "|---|---:|---:|",
        f"| added latency per request, median (one caller) | {rr['overhead_us_p50']:.0f} µs "
        f"| {rr['hand_overhead_us_p50']:.0f} µs |",
        f"| latency per request, p99 (one caller) | {rr['latency_us_p99']:.0f} µs | |",
        f"| throughput, {c} waiting callers | {rr['concurrent_per_s']:,.0f} /s "
        f"| {rr['hand_per_s']:,.0f} /s |",
        f"| throughput, {c} bursting callers | {rr['burst_per_s']:,.0f} /s | |",
        f"| throughput, batch mode (`pipe.run`) | {rr['batch_per_s']:,.0f} /s | |",
        f"| batch ÷ bursting callers | {rr['batch_per_s'] / rr['burst_per_s']:.2f}× | |",
        f"| batch ÷ waiting callers | {rr['batch_per_s'] / rr['concurrent_per_s']:.2f}× | |",
    ]


def endless_section(args: argparse.Namespace, rows: list[Any]) -> list[str]:
    return [
        f"## An endless source in service mode, recorded in a run store "
        f"({args.endless_minutes:g} min)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')}: two thread stages (x + 1 on 2 workers, "
        "then 2x), `pipe.start(endless(), on_result=...)` with a `StoreRecorder`.",
        "",
        "| time s | items | RSS MiB | store MiB |",
        "|---:|---:|---:|---:|",
        *(f"| {t:.0f} | {n:,} | {r:.1f} | {s:.2f} |" for t, n, r, s in rows),
    ]


def write(out: Path, sections: dict[str, list[str]]) -> None:
    """Rewrite ``out`` with these sections, keeping the others from its last run."""
    order = ["## Latency on a slow stream", "## Request/response", "## An endless source"]
    kept: dict[str, list[str]] = {}
    if out.exists():
        current: list[str] | None = None
        for line in out.read_text().splitlines():
            if line.startswith("## "):
                key = next((k for k in order if line.startswith(k)), line)
                current = kept.setdefault(key, [])
            if current is not None:
                current.append(line)
    for key, lines in sections.items():
        kept[key] = [*lines, ""]
    head = [
        "# Streams and services",
        "",
        f"Machine: {machine()}. Written by `benchmarks/bench_service.py`; each section "
        "says when it ran. The machine is shared: compare within a table.",
        "",
    ]
    body = [line for key in order if key in kept for line in kept[key]]
    out.write_text("\n".join(head + body).rstrip() + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="slow,requests,endless")
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--service", type=float, default=0.001)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--callers", type=int, default=16)
    ap.add_argument("--batch-items", type=int, default=40_000)
    ap.add_argument("--endless-minutes", type=float, default=1.0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-service.md")))
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    sections: dict[str, list[str]] = {}
    if "slow" in parts:
        slow = bench_slow_stream(args.items, args.interval, args.service)
        print("slow stream (ms added)", slow, flush=True)
        sections["## Latency on a slow stream"] = slow_section(args, slow)
    if "requests" in parts:
        rr = bench_requests(args.requests, args.callers, args.batch_items)
        print("request/response", rr, flush=True)
        sections["## Request/response"] = requests_section(args, rr)
    if "endless" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            rows = bench_endless(args.endless_minutes, Path(tmp))
        for t, n, r, size in rows:
            print(f"endless {t:6.0f} s {n:11d} items  RSS {r:6.1f} MiB  store {size:6.2f} MiB")
        sections["## An endless source"] = endless_section(args, rows)
    write(Path(args.out), sections)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
