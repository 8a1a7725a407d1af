"""Per-item cost of the run store and the stage cache, and Prefect's per-task cost beside it.

Run from the repository root::

    .venv/bin/python benchmarks/bench_reliability.py                # all parts
    .venv/bin/python benchmarks/bench_reliability.py --prefect-python /path/to/venv/bin/python

Parts (each figure the median of ``--repeats`` runs):

* pipeline: ``--items`` trivial items (x + 1, then x + 1) through two thread stages,
  without instruments, then with a :class:`StoreRecorder` on a fresh store (full
  recording: run row, per-item outcomes at both stages, each item's terminal state,
  stage statistics). Reports µs per item for each and the recording's increment.
* store: ``RunStore.record_batch`` alone, 1000-row batches, µs per outcome row.
* cache: directly on :class:`StageCache`: per item, the key (input fingerprint + key
  hash), a miss (key + get + put of the result, one fsync'ed blob per item) and a hit
  (key + get + unpickle); then through the engine's cache hook: a stage with
  ``cache=`` run twice (every item a miss, then every item a hit) beside the same stage
  uncached.
* prefect: the same tiny task (x + 1) as ``--prefect-tasks`` Prefect ``@task`` calls
  inside one ``@flow``, against Prefect's local ephemeral server (loopback only), after
  a warm-up flow; ms per task. Runs with ``--prefect-python`` (default: this Python),
  skipped with the reason when Prefect cannot be imported there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import conveyor as cv
from conveyor.cache import StageCache, fingerprint_function
from conveyor.store import RunStore, StoreRecorder


def inc(x: int) -> int:
    return x + 1


def add_one(x: int) -> int:
    return x + 1


def _pipeline() -> cv.Pipeline:
    return cv.Pipeline("bench", [cv.stage(inc), cv.stage(add_one)])


def bench_pipeline(items: int, repeats: int, tmp: Path) -> dict[str, Any]:
    plain, recorded = [], []
    for r in range(repeats):
        pipe = _pipeline()
        t0 = time.perf_counter()
        run = pipe.run(range(items))
        plain.append(time.perf_counter() - t0)
        assert len(run.results or []) == items

        store = RunStore(tmp / f"pipeline-{r}.db")
        recorder = StoreRecorder(store, pipeline=pipe)
        t0 = time.perf_counter()
        run = pipe.run(range(items), instruments=[recorder])
        recorded.append(time.perf_counter() - t0)
        assert recorder.error is None
        ledger = store.ledger(run.id)
        assert ledger.balanced and ledger.done == items, ledger
        assert sum(sum(c.values()) for c in store.outcome_counts(run.id).values()) == 2 * items
        store.close()
    p, s = statistics.median(plain), statistics.median(recorded)
    return {
        "items": items,
        "plain_s": p,
        "recorded_s": s,
        "plain_us_per_item": p / items * 1e6,
        "recorded_us_per_item": s / items * 1e6,
        "recording_us_per_item": (s - p) / items * 1e6,
        "db_bytes_per_item": (tmp / f"pipeline-{repeats - 1}.db").stat().st_size / items,
    }


def bench_store_writes(rows: int, repeats: int, tmp: Path) -> dict[str, Any]:
    """``record_batch`` in 1000-row batches: done outcomes of consecutive source items
    (stored as ranges) and failed outcomes (stored one row each, with error text)."""
    now = time.time()
    done = [("stage", (i,), "done", None, None, None, now) for i in range(1000)]
    failed = [("stage", (i,), "failed", 1, "ValueError: x", "Traceback", now) for i in range(1000)]
    figures = {}
    for name, batch in (("done", done), ("failed", failed)):
        times = []
        for r in range(repeats):
            with RunStore(tmp / f"writes-{name}-{r}.db") as store:
                store.begin_run("w", "bench", None)
                t0 = time.perf_counter()
                for _ in range(rows // 1000):
                    store.record_batch("w", outcomes=batch)
                times.append(time.perf_counter() - t0)
        figures[f"{name}_us_per_row"] = statistics.median(times) / rows * 1e6
    return {"rows": rows, **figures}


def bench_cache(items: int, repeats: int, tmp: Path) -> dict[str, Any]:
    code = fingerprint_function(inc)
    keys_t, miss_t, hit_t, plain_t, nosync_t = [], [], [], [], []
    engine_plain_t: list[float] = []
    engine_miss_t: list[float] = []
    engine_hit_t: list[float] = []
    for r in range(repeats):
        fast = StageCache(tmp / f"cache-nosync-{r}", fsync=False)
        t0 = time.perf_counter()
        for i in range(items):  # a miss without the fsync
            key = fast.key("bench.inc", code, i)
            assert key is not None
            assert not fast.get(key)[0]
            fast.put(key, inc(i))
        nosync_t.append(time.perf_counter() - t0)

        cache = StageCache(tmp / f"cache-{r}")
        t0 = time.perf_counter()
        for i in range(items):
            inc(i)
        plain_t.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(items):
            cache.key("bench.inc", code, i)
        keys_t.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(items):  # a miss: key, look up, compute, store
            key = cache.key("bench.inc", code, i)
            assert key is not None
            hit, _ = cache.get(key)
            assert not hit
            cache.put(key, inc(i))
        miss_t.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(items):  # a hit: key, look up, verify, unpickle
            key = cache.key("bench.inc", code, i)
            assert key is not None
            hit, value = cache.get(key)
            assert hit and value == i + 1
        hit_t.append(time.perf_counter() - t0)
        assert cache.statistics().damaged == 0

        # the same through the engine's cache hook: a cached stage, run twice
        folder = str(tmp / f"engine-cache-{r}")
        cached = cv.Pipeline("cached", [cv.stage(inc, workers=2, cache=folder)])
        plain = cv.Pipeline("plain", [cv.stage(inc, workers=2)])
        t0 = time.perf_counter()
        plain.run(range(items))
        engine_plain_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        first = cached.run(range(items))
        engine_miss_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        second = cached.run(range(items))
        engine_hit_t.append(time.perf_counter() - t0)
        assert first.statistics().stages["inc"].cache_hits == 0
        assert second.statistics().stages["inc"].cache_hits == items
    per = {
        name: statistics.median(t) / items * 1e6
        for name, t in (
            ("plain", plain_t),
            ("key", keys_t),
            ("miss", miss_t),
            ("miss_nofsync", nosync_t),
            ("hit", hit_t),
            ("engine_plain", engine_plain_t),
            ("engine_miss", engine_miss_t),
            ("engine_hit", engine_hit_t),
        )
    }
    return {"items": items, **{f"{k}_us_per_item": v for k, v in per.items()}}


PREFECT_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from prefect import flow, task

    @task
    def inc(x):
        return x + 1

    @flow
    def many(n):
        return [inc(i) for i in range(n)]

    n, repeats = int(sys.argv[1]), int(sys.argv[2])
    assert many(5) == [1, 2, 3, 4, 5]  # warm-up: server started, engine imported
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = many(n)
        times.append(time.perf_counter() - t0)
        assert result == list(range(1, n + 1))
    import prefect
    print("RESULT " + json.dumps({"tasks": n, "times_s": times, "version": prefect.__version__}))
    """
)


def bench_prefect(python: str, tasks: int, repeats: int, tmp: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_LOGGING_LEVEL": "CRITICAL",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
        "PREFECT_API_URL": "",
        "DO_NOT_TRACK": "1",
    }
    probe = subprocess.run(
        [python, "-c", "import prefect"], capture_output=True, text=True, env=env
    )
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "?"
        return {"skipped": f"prefect cannot be imported by {python}: {reason}"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [python, "-c", PREFECT_SCRIPT, str(tasks), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    wall = time.perf_counter() - t0
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return {"skipped": f"the Prefect flow failed (exit {proc.returncode}): {tail}"}
    data = json.loads(line[len("RESULT ") :])
    t = statistics.median(data["times_s"])
    return {
        "tasks": tasks,
        "ms_per_task": t / tasks * 1e3,
        "version": data["version"],
        "process_wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--store-rows", type=int, default=200_000)
    parser.add_argument("--cache-items", type=int, default=5_000)
    parser.add_argument("--prefect-tasks", type=int, default=300)
    parser.add_argument("--prefect-python", default=sys.executable)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-prefect", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    results: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as d:
        tmp = Path(d)
        results["pipeline"] = bench_pipeline(args.items, args.repeats, tmp)
        print("pipeline", json.dumps(results["pipeline"]), flush=True)
        results["store"] = bench_store_writes(args.store_rows, args.repeats, tmp)
        print("store", json.dumps(results["store"]), flush=True)
        results["cache"] = bench_cache(args.cache_items, args.repeats, tmp)
        print("cache", json.dumps(results["cache"]), flush=True)
        if not args.skip_prefect:
            results["prefect"] = bench_prefect(
                args.prefect_python, args.prefect_tasks, args.repeats, tmp
            )
            print("prefect", json.dumps(results["prefect"]), flush=True)
    _print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _print_table(r: dict[str, Any]) -> None:
    p, s, c = r["pipeline"], r["store"], r["cache"]
    rows = [
        (f"conveyor, {p['items']:,} items x 2 stages, no store", p["plain_us_per_item"]),
        ("conveyor, same, StoreRecorder (full recording)", p["recorded_us_per_item"]),
        ("  recording's increment", p["recording_us_per_item"]),
        ("RunStore.record_batch alone, per done outcome (ranges)", s["done_us_per_row"]),
        ("RunStore.record_batch alone, per failed outcome (a row each)", s["failed_us_per_row"]),
        ("calling x + 1 directly (no cache)", c["plain_us_per_item"]),
        ("cache key (fingerprint + key hash)", c["key_us_per_item"]),
        ("cache miss: key + get + put (fsync'ed blob)", c["miss_us_per_item"]),
        ("cache miss, StageCache(fsync=False)", c["miss_nofsync_us_per_item"]),
        ("cache hit: key + get + verify + unpickle", c["hit_us_per_item"]),
        ("engine: a stage of 2 threads, no cache", c["engine_plain_us_per_item"]),
        (
            "engine: the same stage with cache=, first run (every item a miss)",
            c["engine_miss_us_per_item"],
        ),
        ("engine: the same, second run (every item a hit)", c["engine_hit_us_per_item"]),
    ]
    prefect = r.get("prefect")
    if prefect and "ms_per_task" in prefect:
        rows.append(
            (f"Prefect {prefect['version']}, {prefect['tasks']} tasks in a flow",
             prefect["ms_per_task"] * 1e3)
        )  # fmt: skip
    print("\n| what | µs per item |\n|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:,.2f} |")
    if prefect and "ms_per_task" in prefect:
        ratio = prefect["ms_per_task"] * 1e3 / p["recorded_us_per_item"]
        print(f"\nPrefect per task / conveyor per item with full recording: {ratio:,.0f}x")
    elif prefect:
        print(f"\nPrefect skipped: {prefect['skipped']}")


if __name__ == "__main__":
    main()
