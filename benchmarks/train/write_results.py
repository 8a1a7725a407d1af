"""Compose benchmarks/train/RESULTS.md from results/*.json and results/machine.txt."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
RES = HERE / "results"


def load(name: str) -> dict:
    return json.loads((RES / name).read_text())


def sleep_table(ms: str) -> list[str]:
    data = load(f"sleep_bubble_{ms}ms.json")
    out = [
        f"F = I = W = {ms} ms per rank and micro-batch (B = I + W), m = 8, "
        f"{data['meta']['repeats']} launches of {data['meta']['steps']} steps, first step dropped, "
        f"medians; run {data['meta']['date']}.",
        "",
        "| p | schedule | v | simulated, compute only | simulated + measured runtime costs | "
        "measured | error (compute only) | error (+ runtime) | overhead / send ms | makespan ms simulated / measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        out.append(
            f"| {r['p']} | {r['schedule']} | {r['v']} | {r['predicted']:.3f} | "
            f"{r['predicted_with_runtime']:.3f} | **{r['measured']:.3f}** | {r['abs_error']:.3f} | "
            f"{r['abs_error_with_runtime']:.3f} | {r['overhead_ms']:.2f} / {r['comm_ms']:.2f} | "
            f"{r['predicted_makespan_ms']:.0f} / {r['measured_makespan_ms']:.0f} |"
        )
    worst = max(r["abs_error"] for r in data["rows"])
    worst_rt = max(r["abs_error_with_runtime"] for r in data["rows"])
    out += ["", f"Largest error: {worst:.3f} against the compute-only simulation, {worst_rt:.3f} "
            "with the runtime's measured per-action overhead and send latency."]  # fmt: skip
    return out


def throughput_table() -> list[str]:
    out = [
        "| schedule | 1 process, 1 thread: rows/s | 2 ranks, 1 thread each: rows/s | ratio | ideal 2m/(m+1) "
        "| bubble measured / predicted | machine capacity (2 procs) | per-repeat step s (single; pipelined) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RES.glob("throughput_*.json")):
        r = json.loads(path.read_text())
        name = f"{r['schedule']} ({r['date']})"
        b = r["bubbles_measured_predicted"]
        out.append(
            f"| {name} | {r['single_rows_per_s']:.0f} | {r['pipelined_rows_per_s']:.0f} | "
            f"**{r['ratio']:.2f}x** | {r['ideal_ratio']:.2f}x | "
            f"{statistics.median(x[0] for x in b):.1%} / {statistics.median(x[1] for x in b):.1%} | "
            f"{statistics.median(r['machine_capacity_two_processes']):.2f} "
            f"({', '.join(f'{c:.2f}' for c in r['machine_capacity_two_processes'])}) | "
            f"{', '.join(f'{s:.2f}' for s in r['single_step_s'])}; "
            f"{', '.join(f'{s:.2f}' for s in r['pipelined_step_s'])} |"
        )
    return out


def partition_table() -> list[str]:
    data = load("partition.json")
    out = [
        "| p | partition | layers per stage | slowest stage ms (common profile) | predicted step ms "
        "| measured step ms (real compute) | measured step ms (stages emulated by sleeping) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        sizes = [b - a for a, b in zip(r["bounds"], r["bounds"][1:], strict=False)]
        out.append(
            f"| {r['p']} | {r['partition']} | {sizes} | "
            f"{r['slowest_stage_common_profile_ms']:.1f} | "
            f"{statistics.median(r['predicted_step_ms']):.0f} | "
            f"{statistics.median(r['measured_step_ms']):.0f} | "
            f"{statistics.median(r['emulated_step_ms']):.0f} |"
        )
    return out


def pays_section() -> list[str]:
    """Section 4, from results/pipeline_pays.json and results/pipeline_pays_machine.txt."""
    if not (RES / "pipeline_pays.json").exists():
        return []
    data = load("pipeline_pays.json")
    machine = f"{data['machine']}\npython {data['python']} torch {data['torch']}"
    out = [
        "## 4. Does pipelining pay, and does the planner know?",
        "",
        "`bench_pipeline_pays.py`: 1F1B on 2 ranks of 1 thread each against one process of 1 "
        "thread on the whole batch, and against 2-way data parallelism (torch's DDP, "
        "`ddp_step.py`), each measured and as the planner predicted it. Times are forward + "
        "backward (the pipeline's: its schedule's makespan; DDP's includes its all-reduce), "
        "without the optimizer step, as the planner predicts them; medians over steps after "
        "the first, then over repeats. The profile was measured once per model and read from "
        "the cache afterwards, so every repeat ran the same cut.",
        "",
        "| model | batch, m | one process ms: measured / predicted | 2-way DDP ms: measured / "
        "predicted | 1F1B 2 ranks ms: measured / predicted | pipeline vs one process: measured / "
        "predicted | plan says it pays | bubble measured / predicted | capacity (2 procs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in data["runs"]:
        s = run["summary"]
        out.append(
            f"| {run['config']} (`{run['file']}`) | {run['batch']}, {run['m']} | "
            f"{s['single_compute_ms']:.0f} / {s['single_predicted_ms']:.0f} | "
            f"{s['dp_compute_ms']:.0f} / {s['dp_predicted_ms']:.0f} | "
            f"{s['pipelined_makespan_ms']:.0f} / {s['pipelined_predicted_ms']:.0f} | "
            f"**{s['ratio_compute_measured']:.2f}x** / {s['ratio_predicted']:.2f}x | "
            f"{'yes' if s['plan_pays'] else 'no'} | "
            f"{statistics.median(r['bubble_measured'] for r in run['repeats']):.1%} / "
            f"{statistics.median(r['bubble_predicted'] for r in run['repeats']):.1%} | "
            f"{s['capacity']:.2f} ({', '.join(format(r['capacity'], '.2f') for r in run['repeats'])}) |"
        )
    out += ["", "The plan's reason, as printed (first repeat):", ""]
    for run in data["runs"]:
        out += [f"- {run['config']}: {run['repeats'][0]['reason']}"]
    out += ["", "Machine for this section, and its load before and after each model's runs:", ""]
    out += ["```", machine]
    for run in data["runs"]:
        out += [f"{run['config']}, run {run['date']}:", *run["uptime"]]
    out += ["```", ""]
    notes = HERE / "RESULTS.pays.notes.md"
    return out + ([notes.read_text().rstrip(), ""] if notes.exists() else [])


def main() -> None:
    machine = (RES / "machine.txt").read_text().rstrip()
    notes = (HERE / "RESULTS.notes.md").read_text() if (HERE / "RESULTS.notes.md").exists() else ""
    parts = [
        "# conveyor.train benchmarks",
        "",
        "Reproduce: `benchmarks/train/run_all.sh 3 && python benchmarks/train/write_results.py` "
        "(venv active, repository root). Raw numbers: `results/*.json`.",
        "",
        "## Machine",
        "",
        "```",
        machine,
        "```",
        "",
        "Another engineer's jobs ran on the same 2 cores during these measurements, so every "
        "figure is a median of repeats, and the throughput benchmark measures, before each "
        "repeat, how many cores' worth of matmul two concurrent 1-thread processes get "
        "(2.0 on an idle machine).",
        "",
        "## 1. Bubble: measured against the simulator (stages emulated by sleeping)",
        "",
        "Each stage is a layer that sleeps F ms forward, I ms in its input-gradient backward "
        "and W ms in its weight-gradient backward (`conveyor.train._emulate.sleep_layer`), so "
        "ranks use no CPU and 4 ranks fit on 2 cores. Measured bubble = 1 - sum(busy) / "
        "(p x makespan) from the recorded action times; simulated = `simulate()` with the "
        "sleep times (and, in the second column, the per-action overhead and send latency "
        "the runtime showed).",
        "",
        *sleep_table("40"),
        "",
        "The same with 20 ms actions (the runtime's ~0.5 ms per action weighs twice as much):",
        "",
        *sleep_table("20"),
        "",
        "## 2. Real compute: 2 ranks of 1 thread against 1 process of 1 thread",
        "",
        "MLP of 8 layers 1024 x 1024 (`mlp_model.py`), batch 2048, m = 8 micro-batches of "
        "256 rows, SGD; the baseline trains the same model unpipelined on the whole batch. "
        "Step time from the barrier to the optimizer step done on the slowest rank, median "
        "over steps after the first; medians over repeats.",
        "",
        *throughput_table(),
        "",
        "## 3. Partition quality on unequal layers",
        "",
        "`lm_model.py`: token embedding (8192 x 256), 6 residual MLP blocks (256 -> 1024 -> 256), "
        "vocabulary head (256 -> 8192); batch 64 x 16 tokens, 1F1B, m = 8.",
        "",
        *partition_table(),
        "",
        notes.rstrip(),
        "",
        *pays_section(),
    ]
    (HERE / "RESULTS.md").write_text("\n".join(parts).rstrip() + "\n")


if __name__ == "__main__":
    main()
