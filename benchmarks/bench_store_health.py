"""What the run store's self-checks cost: the checkpoint at each run's end, the writer
mark at each open, SQLite's quick check (``conveyor run``, and an open after an
unclean end) and the full check (``conveyor store check``) against the store's size.

Run from the repository root::

    .venv/bin/python benchmarks/bench_store_health.py [--repeats 5]

Prints a Markdown table (medians of ``--repeats``); the figures quoted in
docs/reliability-store.md come from it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conveyor.store import RunStore, _writes


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def fill(store: RunStore, first: int, runs: int, items: int = 1000) -> None:
    """``runs`` runs as a recorded run leaves them: done ranges, every tenth item a
    failed attempt with its traceback, roots, a finish."""
    for i in range(first, first + runs):
        run_id = f"r{i:06d}"
        store.begin_run(run_id, "bench", None)
        store.set_state(run_id, "running")
        store.record_batch(
            run_id,
            done=[("s", [(k,) for k in range(items)], 1.0)],
            outcomes=[
                ("t", (k,), "failed", 1, "ValueError: bad input", "Traceback ...\n" * 20, 1.0)
                for k in range(0, items, 10)
            ],
            roots=[(k, "done") for k in range(items)],
        )
        store.finish_run(run_id, "succeeded", items_read=items, items_emitted=items)


def bench_finish(tmp: Path, repeats: int) -> list[tuple[str, float]]:
    path = tmp / "finish.db"
    store = RunStore(path)
    fill(store, 0, 20)
    rows = []
    n = [100]

    def begin() -> str:
        run_id = f"f{n[0]}"
        n[0] += 1
        store.begin_run(run_id, "bench", None)
        store.set_state(run_id, "running")
        store.record_batch(run_id, done=[("s", [(k,) for k in range(1000)], 1.0)])
        return run_id

    def finish_checkpointed() -> None:
        store.finish_run(begin(), "succeeded", items_read=1000)

    def finish_transaction_only() -> None:
        run_id = begin()
        store._write(lambda c: _writes.finish(c, store.path, run_id, "succeeded", None, 1000, None))

    # begin() is inside both: the difference is the checkpoint
    rows.append(
        ("a run's end, transaction only (+ begin)", median_ms(finish_transaction_only, repeats))
    )
    rows.append(("a run's end, checkpointed (+ begin)", median_ms(finish_checkpointed, repeats)))
    store.close()
    rows.append(
        (
            "open + close for writing (writer mark)",
            median_ms(lambda: RunStore(path).close(), repeats),
        )
    )
    rows.append(
        (
            "open + close read-only",
            median_ms(lambda: RunStore(path, readonly=True).close(), repeats),
        )
    )
    return rows


def bench_checks(tmp: Path, repeats: int) -> list[tuple[str, float]]:
    path = tmp / "checks.db"
    rows = []
    done = 0
    for runs in (100, 1000, 5000):
        with RunStore(path) as store:
            fill(store, done, runs - done)
        done = runs
        mb = path.stat().st_size / 1e6
        with RunStore(path, readonly=True) as store:
            quick = median_ms(store.verify, repeats)
            full = median_ms(store.check, repeats)
        rows.append((f"{runs} runs ({mb:.1f} MB): quick check (conveyor run)", quick))
        rows.append((f"{runs} runs ({mb:.1f} MB): full check (store check)", full))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_finish(Path(tmp), args.repeats) + bench_checks(Path(tmp), args.repeats)
    print(f"python {platform.python_version()}, {platform.platform()}")
    print("| what | ms |\n|---|---|")
    for what, ms in rows:
        print(f"| {what} | {ms:.2f} |")


if __name__ == "__main__":
    main()
