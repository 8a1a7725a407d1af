"""The stage cache in a folder and at a URL, side by side in one run, with fsspec's raw
put and get beside them (the floor: a pickle written and read back with no checksum,
no key check, no atomic rename) and a run's cost of sampling its GPUs.

    python benchmarks/bench_cache_url.py [--items 2000] [--repeats 3] [--out PATH]

Per item (µs): a miss (key, look up, compute, store) and a hit (key, look up, verify,
unpickle) directly on ``StageCache``, for a folder (with and without fsync), a
``file://`` URL and a ``memory://`` URL; ``fsspec`` alone (``pipe_file`` then
``cat_file`` of the pickled value) on the same ``file://`` and ``memory://``
stores. Then a cached stage on 2 process workers run twice (every item a miss, then
every item a hit), with the cache in a folder and at a ``file://`` URL. Last, a
thread stage with ``gpus=1`` run with a scripted ``pynvml`` (sampling on) against
``record=True`` with no GPU stage (sampling off): the driver thread's cost. Writes
RESULTS-cache-url.md with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import machine as engine_machine

import conveyor as cv
from conveyor.cache import StageCache, fingerprint_function

HERE = Path(__file__).parent


def inc(x: int) -> int:
    return x + 1


def _median_us(times: list[float], items: int) -> float:
    return statistics.median(times) / items * 1e6


def bench_direct(
    root: Callable[[int], str | Path], items: int, repeats: int, **kw: Any
) -> tuple[float, float]:
    code = fingerprint_function(inc)
    miss_t, hit_t = [], []
    for r in range(repeats):
        cache = StageCache(root(r), **kw)
        t0 = time.perf_counter()
        for i in range(items):
            key = cache.key("bench.inc", code, i)
            assert key is not None
            assert not cache.get(key)[0]
            cache.put(key, inc(i))
        miss_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(items):
            key = cache.key("bench.inc", code, i)
            assert key is not None
            hit, value = cache.get(key)
            assert hit and value == i + 1
        hit_t.append(time.perf_counter() - t0)
    return _median_us(miss_t, items), _median_us(hit_t, items)


def bench_fsspec(url: Callable[[int], str], items: int, repeats: int) -> tuple[float, float]:
    put_t, get_t = [], []
    for r in range(repeats):
        fs, path = fsspec.core.url_to_fs(url(r))
        fs.makedirs(path, exist_ok=True)
        t0 = time.perf_counter()
        for i in range(items):
            fs.pipe_file(f"{path}/{i}", pickle.dumps(inc(i), protocol=5))
        put_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(items):
            assert pickle.loads(fs.cat_file(f"{path}/{i}")) == i + 1
        get_t.append(time.perf_counter() - t0)
    return _median_us(put_t, items), _median_us(get_t, items)


def bench_engine(root: Callable[[int], str], items: int, repeats: int) -> tuple[float, float]:
    miss_t, hit_t = [], []
    for r in range(repeats):
        pipe = cv.Pipeline(
            "cached", [cv.stage(inc, executor="processes", workers=2, cache=root(r))]
        )
        t0 = time.perf_counter()
        first = pipe.run(range(items))
        miss_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        second = pipe.run(range(items))
        hit_t.append(time.perf_counter() - t0)
        assert first.statistics().stages["inc"].cache_hits == 0
        assert second.statistics().stages["inc"].cache_hits == items
    return _median_us(miss_t, items), _median_us(hit_t, items)


def fake_nvml() -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    reading = types.SimpleNamespace(gpu=50, used=1 << 30, total=80 << 30)
    for name, fn in {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetName": lambda h: b"scripted",
        "nvmlDeviceGetUtilizationRates": lambda h: reading,
        "nvmlDeviceGetMemoryInfo": lambda h: reading,
    }.items():
        setattr(nvml, name, fn)
    return nvml


def bench_sampling(items: int, repeats: int) -> tuple[float, float, int]:
    """Seconds per run of a 2-stage thread pipeline, without and with GPU sampling."""
    sys.modules["pynvml"] = fake_nvml()
    os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    plain = cv.Pipeline("p", [cv.stage(inc, workers=2), cv.stage(inc, name="gpu")])
    gpu = cv.Pipeline("p", [cv.stage(inc, workers=2), cv.stage(inc, name="gpu", gpus=1)])
    off_t, on_t, samples = [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain.run(range(items))
        off_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rec = gpu.run(range(items)).recording
        on_t.append(time.perf_counter() - t0)
        samples = sum(rec.gpus[0].samples)
    return statistics.median(off_t), statistics.median(on_t), samples


def machine() -> str:
    return f"fsspec {fsspec.__version__}, {engine_machine()}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS-cache-url.md")
    args = ap.parse_args()
    n, k = args.items, args.repeats
    where = machine()
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        run = uuid.uuid4().hex[:8]
        rows.append(("StageCache, folder", *bench_direct(lambda r: t / f"f{r}", n, k)))
        rows.append(
            (
                "StageCache, folder, fsync=False",
                *bench_direct(lambda r: t / f"n{r}", n, k, fsync=False),
            )
        )
        rows.append(("StageCache, file:// URL", *bench_direct(lambda r: f"file://{t}/u{r}", n, k)))
        rows.append(
            ("StageCache, memory:// URL", *bench_direct(lambda r: f"memory://{run}/m{r}", n, k))
        )
        rows.append(
            ("fsspec alone, file:// (floor)", *bench_fsspec(lambda r: f"file://{t}/r{r}", n, k))
        )
        rows.append(
            (
                "fsspec alone, memory:// (floor)",
                *bench_fsspec(lambda r: f"memory://{run}/r{r}", n, k),
            )
        )
        engine = [
            (
                "2 process workers, cache in a folder",
                *bench_engine(lambda r: str(t / f"e{r}"), n, k),
            ),
            (
                "2 process workers, cache at file://",
                *bench_engine(lambda r: f"file://{t}/eu{r}", n, k),
            ),
        ]
    off, on, samples = bench_sampling(20 * n, k)
    end_load = os.getloadavg()[0]
    folder_miss, folder_hit = rows[0][1], rows[0][2]
    lines = [
        "# The stage cache in a folder and at a URL",
        "",
        f"`benchmarks/bench_cache_url.py --items {n} --repeats {k}`, one run. {where}; "
        f"{end_load:.2f} at the end. The machine is shared with other engineers' tests: "
        "read the ratios, taken within this one run, not the absolute figures.",
        "",
        "## Directly on StageCache (µs per item; median of the repeats)",
        "",
        "| where | miss (key, look up, compute, store) | hit (key, look up, verify, unpickle) | miss / folder's | hit / folder's |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, miss, hit in rows:
        lines.append(
            f"| {name} | {miss:.1f} | {hit:.1f} | {miss / folder_miss:.2f}x | {hit / folder_hit:.2f}x |"
        )
    lines += [
        "",
        "The fsspec rows are the storage alone: `pipe_file` of the pickled value (the miss "
        "column) and `cat_file` (the hit column), no key, no checksum, no rename.",
        "",
        "## Through the engine: a cached stage on 2 process workers, run twice (µs per item)",
        "",
        "| cache | first run (all misses) | second run (all hits) |",
        "|---|---:|---:|",
        *(f"| {name} | {miss:.1f} | {hit:.1f} |" for name, miss, hit in engine),
        "",
        "## GPU sampling's cost to a run",
        "",
        f"{20 * n} items through two thread stages (`x + 1`), the second with `gpus=1` and a "
        "scripted `pynvml` (the sampler thread on, reading one device every 0.5 s) against "
        f"the same stages without `gpus` (no sampler): {off:.3f} s without, {on:.3f} s with "
        f"({on / off:.2f}x; {samples} samples taken). The sampler's own work is a few "
        "library calls per device per half second.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
