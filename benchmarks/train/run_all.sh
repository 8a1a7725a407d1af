#!/usr/bin/env bash
# Run every train benchmark (results/*.json), then write RESULTS.md from them.
# Usage: benchmarks/train/run_all.sh [REPEATS]   (from the repository root, venv active)
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats="${1:-3}"
out=benchmarks/train/results
mkdir -p "$out"
{
    date -u "+%Y-%m-%d %H:%M UTC"
    lscpu | head -15
    python -c "import platform, torch; print('python', platform.python_version(), 'torch', torch.__version__)"
    uptime
} > "$out/machine.txt"
for ms in 40 20; do
    python benchmarks/train/bench_sleep_bubble.py --repeats "$repeats" --ms "$ms"
done
for schedule in 1f1b zbh1; do
    python benchmarks/train/bench_throughput.py --repeats "$((repeats + 2))" --schedule "$schedule"
done
python benchmarks/train/bench_partition.py --repeats "$repeats"
python benchmarks/train/bench_pipeline_pays.py --repeats "$repeats"
uptime >> "$out/machine.txt"
python benchmarks/train/write_results.py
