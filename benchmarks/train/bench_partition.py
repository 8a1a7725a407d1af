"""Partition quality on unequal layers: conveyor's exact cut against uniform and parameter-count.

lm_model.py: embedding (2.1 M params, cheap), 6 MLP blocks (0.5 M each), a
vocabulary head (2.1 M params, the most expensive layer). For p in {2, 4}, 1F1B
with m = 8, batch 64 x 16 tokens: the slowest stage's profiled time and the
measured step time (median over steps after the first, with optimizer) for each
partition, repeated and the median taken.

With 4 ranks on 2 cores the real runs are CPU-bound (four processes share two
cores), so the step time there follows the total work, not the slowest stage.
The benchmark therefore also runs every partition with each layer replaced by a
sleep of its profiled F, I and W times, summed per stage (sleep_model.py): ranks then use no CPU,
and the step time shows what the cut does on machines with a core per rank.

    python benchmarks/train/bench_partition.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from conveyor.train import TrainReport, train
from conveyor.train._launch import launch
from conveyor.train._runtime import RunSpec

HERE = Path(__file__).parent
MODEL = f"{HERE / 'lm_model.py'}:make_model"
DATA = f"{HERE / 'lm_model.py'}:make_data"
LOSS = f"{HERE / 'lm_model.py'}:loss_fn"


def emulate(report: TrainReport, steps: int) -> float:
    """Median step seconds with every layer sleeping its profiled times, same cut and schedule."""
    sched = report.schedule
    rows = 64 // sched.microbatches
    layers = report.profile.scaled(rows)
    b = report.partition.bounds
    # one sleep per stage (its layers' times summed): many tiny sleeps would overshoot
    costs_ms = [
        [sum(layer[k] for layer in layers[b[s] : b[s + 1]]) * 1e3 for k in range(3)]
        for s in range(len(b) - 1)
    ]
    spec = RunSpec(
        model=f"{HERE / 'sleep_model.py'}:make_model",
        data=f"{HERE / 'sleep_model.py'}:make_data",
        model_kwargs={"costs_ms": costs_ms},
        schedule=sched.name,
        microbatches=sched.microbatches,
        bounds=list(range(len(b))),
        batch_size=64,
        steps=steps,
        loss="mse",
    )
    (result,) = launch([spec], sched.ranks)
    return statistics.median(result["step_seconds"][1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    rows = []
    for p in (2, 4):
        for method in ("optimal", "uniform", "parameters"):
            runs = []
            for _ in range(args.repeats):
                report = train(
                    MODEL, DATA, stages=p, schedule="1f1b", microbatches=8, batch_size=64,
                    steps=args.steps, loss=LOSS, partition=method, device="cpu",
                )  # fmt: skip
                runs.append(report)
            part = runs[0].partition
            emulated = [emulate(runs[0], args.steps) for _ in range(args.repeats)]
            rows.append(
                {
                    "p": p,
                    "partition": method,
                    "bounds": list(part.bounds),
                    "slowest_stage_ms": [r.partition.bottleneck * 1e3 for r in runs],
                    "predicted_step_ms": [r.predicted_step_time * 1e3 for r in runs],
                    "measured_step_ms": [r.step_seconds * 1e3 for r in runs],
                    "emulated_step_ms": [e * 1e3 for e in emulated],
                }
            )
            r = rows[-1]
            print(
                f"| {p} | {method} | {part.sizes} | "
                f"{statistics.median(r['slowest_stage_ms']):.1f} | "
                f"{statistics.median(r['predicted_step_ms']):.0f} | "
                f"{statistics.median(r['measured_step_ms']):.0f} | "
                f"{statistics.median(r['emulated_step_ms']):.0f} |",
                flush=True,
            )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "repeats": args.repeats,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "partition.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
