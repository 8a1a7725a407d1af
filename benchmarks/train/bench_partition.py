"""Partition quality on unequal layers: conveyor's exact cut against uniform and parameter-count.

lm_model.py: embedding (2.1 M params, cheap), 6 MLP blocks (0.5 M each), a
vocabulary head (2.1 M params, the most expensive layer). For p in {2, 4}, 1F1B
with m = 8, batch 64 x 16 tokens: the slowest stage's profiled time and the
measured step time (median over steps after the first, with optimizer) for each
partition, repeated and the median taken.

The slowest-stage column and the emulated runs use one careful profile for every
partition, so the cuts are compared on the same costs; the real runs each profile
and cut for themselves, as a user's run does (their bounds are in the JSON).

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

from conveyor.train import (
    ModelProfile,
    Partition,
    partition_by_params,
    partition_optimal,
    partition_uniform,
    profile_model,
    train,
)
from conveyor.train._launch import launch
from conveyor.train._profile import as_layers
from conveyor.train._runtime import RunSpec, load_object

HERE = Path(__file__).parent
MODEL = f"{HERE / 'lm_model.py'}:make_model"
DATA = f"{HERE / 'lm_model.py'}:make_data"
LOSS = f"{HERE / 'lm_model.py'}:loss_fn"
BATCH, M = 64, 8
ROWS = BATCH // M


def common_profile() -> ModelProfile:
    """One careful profile (one thread, 15 repeats) that every partition is judged on."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = as_layers(load_object(MODEL)())
    inputs, _ = load_object(DATA)()
    return profile_model(layers, inputs[:ROWS], repeats=15)


def cut(prof: ModelProfile, method: str, p: int) -> Partition:
    totals = [sum(c) for c in prof.scaled(ROWS)]
    if method == "optimal":
        return partition_optimal(totals, p)
    if method == "uniform":
        return partition_uniform(totals, p)
    return partition_by_params(totals, [lp.params for lp in prof.layers], p)


def emulate(prof: ModelProfile, part: Partition, steps: int) -> float:
    """Median step seconds with each stage sleeping its layers' profiled times, 1F1B, m = 8."""
    layers = prof.scaled(ROWS)
    b = part.bounds
    # one sleep per stage (its layers' times summed): many tiny sleeps would overshoot
    costs_ms = [
        [sum(layer[k] for layer in layers[b[s] : b[s + 1]]) * 1e3 for k in range(3)]
        for s in range(len(b) - 1)
    ]
    spec = RunSpec(
        model=f"{HERE / 'sleep_model.py'}:make_model",
        data=f"{HERE / 'sleep_model.py'}:make_data",
        model_kwargs={"costs_ms": costs_ms},
        schedule="1f1b",
        microbatches=M,
        bounds=list(range(len(b))),
        batch_size=BATCH,
        steps=steps,
        loss="mse",
    )
    (result,) = launch([spec], len(b) - 1)
    return statistics.median(result["step_seconds"][1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    rows = []
    prof = common_profile()
    for p in (2, 4):
        for method in ("optimal", "uniform", "parameters"):
            runs = []
            for _ in range(args.repeats):
                report = train(
                    MODEL, DATA, stages=p, schedule="1f1b", microbatches=M, batch_size=BATCH,
                    steps=args.steps, loss=LOSS, partition=method, device="cpu",
                )  # fmt: skip
                runs.append(report)
            part = cut(prof, method, p)
            emulated = [emulate(prof, part, args.steps) for _ in range(args.repeats)]
            rows.append(
                {
                    "p": p,
                    "partition": method,
                    "bounds": list(part.bounds),
                    "bounds_used_by_runs": [list(r.partition.bounds) for r in runs],
                    "slowest_stage_common_profile_ms": part.bottleneck * 1e3,
                    "slowest_stage_ms": [r.partition.bottleneck * 1e3 for r in runs],
                    "predicted_step_ms": [r.predicted_step_time * 1e3 for r in runs],
                    "measured_step_ms": [r.step_seconds * 1e3 for r in runs],
                    "emulated_step_ms": [e * 1e3 for e in emulated],
                }
            )
            r = rows[-1]
            print(
                f"| {p} | {method} | {part.sizes} | "
                f"{part.bottleneck * 1e3:.1f} | "
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
