"""Real compute: 2 pipelined ranks of 1 thread each against 1 process of 1 thread.

The MLP in mlp_model.py (8 layers of 1024 x 1024), batch 2048, m = 8 micro-batches
(256 rows each, enough that a layer's matmul is compute-bound, not memory-bound),
1F1B, conveyor's partition. The baseline trains the same model, unpipelined, on
the whole batch in one process with one thread. Throughput is rows per second
from the median step time (barrier to optimizer step done, slowest rank), the
first step dropped; each side is repeated and the medians compared. Ideal
ratio 2m/(m+1) = 1.78.

    python benchmarks/train/bench_throughput.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from conveyor.train import train

HERE = Path(__file__).parent
MODEL = f"{HERE / 'mlp_model.py'}:make_model"
DATA = f"{HERE / 'mlp_model.py'}:make_data"
BATCH, M, STEPS = 2048, 8, 6


def single_process(steps: int) -> float:
    """Median seconds per step of plain training, one process, one thread."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlp_model", HERE / "mlp_model.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = mod.make_model()
    x, y = mod.make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for step in range(steps):
        k = step % (x.shape[0] // BATCH)
        xb, yb = x[k * BATCH : (k + 1) * BATCH], y[k * BATCH : (k + 1) * BATCH]
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def pipelined(steps: int, schedule: str) -> tuple[float, float, float]:
    """Median seconds per step on 2 ranks, and the measured and predicted bubble."""
    report = train(
        MODEL, DATA, stages=2, schedule=schedule, microbatches=M, batch_size=BATCH,
        steps=steps, lr=0.01, device="cpu",
    )  # fmt: skip
    return report.step_seconds, report.measured_bubble, report.predicted_bubble


CAPACITY_PROBE = """
import sys, time, torch
torch.set_num_threads(1)
a, w = torch.randn(128, 1024), torch.randn(1024, 1024)
for _ in range(5): a @ w
t = time.perf_counter()
for _ in range(300): a @ w
print((time.perf_counter() - t) / 300)
"""


def machine_capacity() -> float:
    """How many cores' worth of matmul two concurrent 1-thread processes get right now (ideal 2)."""
    import subprocess
    import sys

    def run(n: int) -> list[float]:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CAPACITY_PROBE], stdout=subprocess.PIPE, text=True
            )
            for _ in range(n)
        ]
        return [float(p.communicate()[0]) for p in procs]

    solo = run(1)[0]
    pair = run(2)
    return sum(solo / t for t in pair)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--schedule", default="1f1b")
    args = parser.parse_args()
    single, piped, bubbles, capacity = [], [], [], []
    for _ in range(args.repeats):
        capacity.append(machine_capacity())
        single.append(single_process(STEPS))
        seconds, measured, predicted = pipelined(STEPS, args.schedule)
        piped.append(seconds)
        bubbles.append((measured, predicted))
    s, p = statistics.median(single), statistics.median(piped)
    row = {
        "schedule": args.schedule,
        "batch": BATCH,
        "m": M,
        "single_step_s": single,
        "pipelined_step_s": piped,
        "single_rows_per_s": BATCH / s,
        "pipelined_rows_per_s": BATCH / p,
        "ratio": s / p,
        "ideal_ratio": 2 * M / (M + 1),
        "bubbles_measured_predicted": bubbles,
        "machine_capacity_two_processes": capacity,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"throughput_{args.schedule}.json").write_text(json.dumps(row, indent=2))
    print(
        f"| {args.schedule} | {BATCH / s:.0f} | {BATCH / p:.0f} | {s / p:.2f}x | "
        f"{2 * M / (M + 1):.2f}x | {statistics.median(b[0] for b in bubbles):.1%} / "
        f"{statistics.median(b[1] for b in bubbles):.1%} | {statistics.median(capacity):.2f} |"
    )
    print(
        "per repeat: single s",
        [round(x, 3) for x in single],
        "pipelined s",
        [round(x, 3) for x in piped],
    )


if __name__ == "__main__":
    main()
