"""Does pipelining pay, and does the planner know? 2 ranks against 1 process, predicted and measured.

Two MLPs, 1F1B on 2 ranks of 1 thread each against one process of 1 thread on the
whole batch:

    large   mlp_model.py, 8 layers 1024 x 1024, batch 2048, m = 8 (256-row micro-batches):
            compute dominates, so pipelining should pay
    small   small_mlp_model.py, 8 layers 128 x 128, batch 256, m = 8 (32-row micro-batches):
            fixed per-layer and per-action costs dominate, so it should not

For each: the one-process step measured (forward + backward, and with the optimizer)
against the planner's one-process prediction; the same for 2-way data parallelism
(torch's DistributedDataParallel, ``ddp_step.py``, against the planner's compute of
batch / 2 rows plus an all-reduce); the pipelined step measured (the
schedule's makespan, and barrier to optimizer step done) against the planner's
prediction; the ratio of the two measured steps against the predicted ratio; and
whether the plan said pipelining pays. Medians over steps after the first, then over
repeats; the profile is measured once per model (its cost is shown) and read from a
cache on later repeats, so every repeat runs the same cut. Before each repeat the
machine's capacity is probed (how many cores' worth of matmul two 1-thread processes
get; 2.0 when the machine is idle).

    python benchmarks/train/bench_pipeline_pays.py --repeats 3     (from benchmarks/train)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from conveyor.train import train

HERE = Path(__file__).parent
CONFIGS = {
    "large": {"file": "mlp_model.py", "batch": 2048, "m": 8, "steps": 6},
    "small": {"file": "small_mlp_model.py", "batch": 256, "m": 8, "steps": 12},
}


def _module(file: str):
    spec = importlib.util.spec_from_file_location(file[:-3], HERE / file)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def single_process(file: str, batch: int, steps: int) -> tuple[float, float]:
    """Median seconds of forward + backward, and of the whole step with SGD, one thread."""
    mod = _module(file)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = mod.make_model()
    x, y = mod.make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    compute, whole = [], []
    for step in range(steps):
        k = step % (x.shape[0] // batch)
        xb, yb = x[k * batch : (k + 1) * batch], y[k * batch : (k + 1) * batch]
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        compute.append(t1 - t0)
        whole.append(t2 - t0)
    return statistics.median(compute[1:]), statistics.median(whole[1:])


def data_parallel(file: str, batch: int, steps: int) -> tuple[float, float]:
    """Median seconds of forward + backward (with DDP's all-reduce), and of the whole step, 2 ranks."""
    import os
    import subprocess
    import sys

    from conveyor.train._launch import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "ddp.json")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        for attempt in range(2):  # a free port can be taken by another job before torchrun binds it
            proc = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                 "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                 str(HERE / "ddp_step.py"), str(HERE / file), str(batch), str(steps), str(out)],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if proc.returncode == 0:
                break
            if attempt:
                raise RuntimeError(f"DDP run failed:\n{proc.stderr[-3000:]}")
        times = json.loads(out.read_text())[1:]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def machine_capacity() -> float:
    from bench_throughput import machine_capacity as probe

    return probe()


def run(name: str, repeats: int, cache: Path) -> dict:
    cfg = CONFIGS[name]
    spec = str(HERE / cfg["file"])
    rows = []
    for _ in range(repeats):
        capacity = machine_capacity()
        single_compute, single_step = single_process(cfg["file"], cfg["batch"], cfg["steps"])
        dp_compute, dp_step = data_parallel(cfg["file"], cfg["batch"], cfg["steps"])
        t0 = time.perf_counter()
        report = train(
            f"{spec}:make_model", f"{spec}:make_data", stages=2, schedule="1f1b",
            microbatches=cfg["m"], batch_size=cfg["batch"], steps=cfg["steps"], lr=0.01,
            device="cpu", profile_cache=cache,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        assert report.plan is not None
        one, dp = report.plan.baselines
        rows.append(
            {
                "capacity": capacity,
                "single_compute_s": single_compute,
                "single_step_s": single_step,
                "single_predicted_s": one.step_time,
                "dp_compute_s": dp_compute,
                "dp_step_s": dp_step,
                "dp_predicted_s": dp.step_time,
                "pipelined_makespan_s": report.step_time,
                "pipelined_step_s": report.step_seconds,
                "pipelined_predicted_s": report.predicted_step_time,
                "bubble_measured": report.measured_bubble,
                "bubble_predicted": report.predicted_bubble,
                "plan_pays": report.plan.pays,
                "reason": report.plan.reason,
                "profile_source": report.profile_source,
                "train_wall_s": wall,
                "bounds": list(report.partition.bounds),
            }
        )
    return {
        "config": name,
        **cfg,
        "repeats": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def summarize(data: dict) -> dict:
    reps = data["repeats"]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in reps)

    return {
        "single_compute_ms": med("single_compute_s") * 1e3,
        "single_predicted_ms": med("single_predicted_s") * 1e3,
        "single_step_ms": med("single_step_s") * 1e3,
        "dp_compute_ms": med("dp_compute_s") * 1e3,
        "dp_predicted_ms": med("dp_predicted_s") * 1e3,
        "dp_step_ms": med("dp_step_s") * 1e3,
        "pipelined_makespan_ms": med("pipelined_makespan_s") * 1e3,
        "pipelined_predicted_ms": med("pipelined_predicted_s") * 1e3,
        "pipelined_step_ms": med("pipelined_step_s") * 1e3,
        "ratio_measured": med("single_step_s") / med("pipelined_step_s"),
        "ratio_compute_measured": med("single_compute_s") / med("pipelined_makespan_s"),
        "ratio_predicted": med("single_predicted_s") / med("pipelined_predicted_s"),
        "capacity": med("capacity"),
        "plan_pays": reps[0]["plan_pays"],
    }


def _sh(cmd: str) -> str:
    import subprocess

    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = parser.parse_args()
    path = HERE / "results" / "pipeline_pays.json"
    # a run of some configs keeps the others' last results
    kept = json.loads(path.read_text())["runs"] if path.exists() else []
    runs = {r["config"]: r for r in kept}
    with tempfile.TemporaryDirectory(prefix="conveyor-profiles-") as cache:
        for name in args.configs:
            before = _sh("uptime")
            data = run(name, args.repeats, Path(cache))
            data["summary"] = summarize(data)
            data["uptime"] = [before, _sh("uptime")]
            runs[name] = data
            s = data["summary"]
            print(
                f"{name}: one process {s['single_compute_ms']:.0f} ms measured / "
                f"{s['single_predicted_ms']:.0f} predicted; 2-way DDP {s['dp_compute_ms']:.0f} / "
                f"{s['dp_predicted_ms']:.0f}; pipeline {s['pipelined_makespan_ms']:.0f} "
                f"measured / {s['pipelined_predicted_ms']:.0f} predicted; ratio "
                f"{s['ratio_compute_measured']:.2f}x measured / {s['ratio_predicted']:.2f}x "
                f"predicted; plan says pays={s['plan_pays']}; capacity {s['capacity']:.2f}"
            )
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": _sh("lscpu | head -15"),
        "runs": [runs[name] for name in CONFIGS if name in runs],
    }
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
