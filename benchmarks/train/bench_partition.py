"""Partition quality on unequal layers: conveyor's exact cut against uniform and parameter-count.

lm_model.py: embedding (2.1 M params, cheap), 6 MLP blocks (0.5 M each), a
vocabulary head (2.1 M params, the most expensive layer). For p in {2, 4}, 1F1B
with m = 8, batch 64 x 16 tokens: the slowest stage's profiled time and the
measured step time (median over steps after the first, with optimizer) for each
partition, repeated and the median taken.

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

from conveyor.train import train

HERE = Path(__file__).parent
MODEL = f"{HERE / 'lm_model.py'}:make_model"
DATA = f"{HERE / 'lm_model.py'}:make_data"
LOSS = f"{HERE / 'lm_model.py'}:loss_fn"


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
            rows.append(
                {
                    "p": p,
                    "partition": method,
                    "bounds": list(part.bounds),
                    "slowest_stage_ms": [r.partition.bottleneck * 1e3 for r in runs],
                    "predicted_step_ms": [r.predicted_step_time * 1e3 for r in runs],
                    "measured_step_ms": [r.step_seconds * 1e3 for r in runs],
                }
            )
            r = rows[-1]
            print(
                f"| {p} | {method} | {part.sizes} | "
                f"{statistics.median(r['slowest_stage_ms']):.1f} | "
                f"{statistics.median(r['predicted_step_ms']):.0f} | "
                f"{statistics.median(r['measured_step_ms']):.0f} |",
                flush=True,
            )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "repeats": args.repeats,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "partition.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
