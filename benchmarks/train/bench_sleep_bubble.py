"""Measured bubble against the simulator, stages emulated by sleeping (no CPU used by ranks).

Every rank costs F = I = W = ``--ms`` (default 40) ms per micro-batch (a full backward B = I + W);
interleaved gives each of its v = 2 chunks half of that. m = 8 micro-batches,
p in {2, 4}, every schedule; 6 steps per run, the first dropped (warm-up); the
whole launch repeated ``--repeats`` times and the median taken.

    python benchmarks/train/bench_sleep_bubble.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from conveyor.train import StageCosts, build_schedule, simulate
from conveyor.train._api import measured_intervals, replay, runtime_costs
from conveyor.train._launch import launch
from conveyor.train._runtime import RunSpec
from conveyor.train._simulate import bubble_of

HERE = Path(__file__).parent
M = 8
SCHEDULES = [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("zbh1", 1)]


def specs(p: int, steps: int, ms: float) -> list[RunSpec]:
    out = []
    for name, v in SCHEDULES:
        n = p * v
        out.append(
            RunSpec(
                model=f"{HERE / 'sleep_model.py'}:make_model",
                data=f"{HERE / 'sleep_model.py'}:make_data",
                model_kwargs={"costs_ms": [[ms / v, ms / v, ms / v]] * n},
                schedule=name,
                microbatches=M,
                bounds=list(range(n + 1)),
                stages_per_rank=v,
                batch_size=64,
                steps=steps,
                loss="mse",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ms", type=float, default=40.0, help="F = I = W per rank, milliseconds")
    args = parser.parse_args()
    rows = []
    for p in (2, 4):
        per_run: dict[str, list[tuple[float, float, float]]] = {}
        for _ in range(args.repeats):
            run_specs = specs(p, args.steps, args.ms)
            for spec, result in zip(run_specs, launch(run_specs, p), strict=True):
                sched = build_schedule(spec.schedule, p, M, spec.stages_per_rank)
                steps = [measured_intervals(t, p) for t in result["timelines"]][1:]
                measured = statistics.median(bubble_of(s, p) for s in steps)
                makespan = statistics.median(
                    max(iv.end for iv in s) - min(iv.start for iv in s) for s in steps
                )
                overhead, comm = runtime_costs(sched, steps)
                v = spec.stages_per_rank
                sim = simulate(
                    sched,
                    StageCosts.uniform(
                        p * v, args.ms / v / 1e3, args.ms / v / 1e3, args.ms / v / 1e3,
                        comm=comm, overhead=overhead, first_stage_defers_input=True,
                    ),
                )  # fmt: skip
                per_run.setdefault(spec.schedule, []).append(
                    (measured, replay(sched, steps), makespan, float(sim.bubble), overhead, comm)
                )
        for name, v in SCHEDULES:
            sched = build_schedule(name, p, M, v)
            sim = simulate(
                sched,
                StageCosts.uniform(
                    p * v,
                    args.ms / v / 1e3,
                    args.ms / v / 1e3,
                    args.ms / v / 1e3,
                    first_stage_defers_input=True,
                ),
            )
            runs = per_run[name]
            measured = statistics.median(r[0] for r in runs)
            rows.append(
                {
                    "p": p,
                    "schedule": name,
                    "m": M,
                    "v": v,
                    "predicted": float(sim.bubble),
                    "predicted_with_runtime": statistics.median(r[3] for r in runs),
                    "overhead_ms": statistics.median(r[4] for r in runs) * 1e3,
                    "comm_ms": statistics.median(r[5] for r in runs) * 1e3,
                    "measured": measured,
                    "measured_runs": [r[0] for r in runs],
                    "replayed": statistics.median(r[1] for r in runs),
                    "predicted_makespan_ms": float(sim.makespan) * 1e3,
                    "measured_makespan_ms": statistics.median(r[2] for r in runs) * 1e3,
                    "abs_error": abs(measured - float(sim.bubble)),
                    "abs_error_with_runtime": abs(measured - statistics.median(r[3] for r in runs)),
                }
            )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "steps": args.steps,
        "ms": args.ms,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"sleep_bubble_{args.ms:g}ms.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    print(
        "| p | schedule | m | v | simulated (compute only) | simulated (+ runtime overhead, comm) "
        "| measured (median) | error vs compute-only | error vs + runtime | overhead / comm ms "
        "| simulated / measured makespan ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['p']} | {r['schedule']} | {r['m']} | {r['v']} | {r['predicted']:.3f} | "
            f"{r['predicted_with_runtime']:.3f} | {r['measured']:.3f} | {r['abs_error']:.3f} | "
            f"{r['abs_error_with_runtime']:.3f} | {r['overhead_ms']:.2f} / {r['comm_ms']:.2f} | "
            f"{r['predicted_makespan_ms']:.0f} / {r['measured_makespan_ms']:.0f} |"
        )


if __name__ == "__main__":
    main()
