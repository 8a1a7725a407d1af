"""What a rollout costs live traffic: p50 and p99 with no rollout, with a shadow
mirroring 10% and 100% of batches, and with a 10% canary, side by side.

    python benchmarks/bench_lifecycle.py            # rewrites benchmarks/RESULTS-lifecycle.md
    python benchmarks/bench_lifecycle.py --quick    # shorter rounds, prints only

One server (the digits logistic regression, scikit-learn, threads) on loopback;
closed-loop clients post single images for a fixed time per round. The rounds of
each setting alternate (A B C D A B C D ...) and the table keeps the medians, since
the machine is shared. Needs the serve, lifecycle and train extras.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_engine import machine  # noqa: E402


def load(url: str, seconds: float, clients: int, image: list[float]) -> list[float]:
    """Latencies (s) of closed-loop clients posting for ``seconds``."""
    import httpx

    latencies: list[float] = []

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as c:
            end = time.perf_counter() + seconds

            async def one() -> None:
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    answer = await c.post("/predict", json={"inputs": image})
                    assert answer.status_code == 200, answer.text
                    latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(one() for _ in range(clients)))

    asyncio.run(run())
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds, rounds, clients = (2.0, 2, 4) if args.quick else (6.0, 5, 4)

    import os

    folder = Path(tempfile.mkdtemp())
    os.environ["CONVEYOR_STORE"] = str(folder / "runs.db")
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    import conveyor as cv
    from conveyor.lifecycle import LifecycleLog
    from conveyor.serve import Endpoint, Server

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    for c in (1.0, 0.5):  # two versions: the champion and a candidate
        model = LogisticRegression(C=c, max_iter=500).fit(x, y)
        cv.models.register("digits", model, signature={"shape": [64]})
    cv.models.alias("digits", "champion", 1)
    image = np.asarray(x[0]).tolist()

    settings = {
        "no rollout": None,
        "shadow 10%": ("shadow", 0.1),
        "shadow 100%": ("shadow", 1.0),
        "canary 10%": ("canary", 0.1),
    }
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in settings}
    shares: dict[str, list[float]] = {name: [] for name in settings}
    endpoint = Endpoint("digits@champion", watch=0.05, max_batch=16)
    with Server(endpoint, port=0) as server, LifecycleLog() as log:
        assert server.wait_ready(120)
        load(server.url, 1.0, clients, image)  # warm
        for _ in range(rounds):
            for name, setting in settings.items():
                rollout = None
                if setting is not None:
                    mode, share = setting
                    rollout = log.start_rollout(
                        "digits", "champion", mode=mode, champion=1, candidate=2, share=share
                    )
                    while log.rollout(rollout.id).served_at is None:
                        time.sleep(0.02)
                got = load(server.url, seconds, clients, image)
                mirrored = 0
                if rollout is not None:
                    time.sleep(0.2)  # the server's last counts reach the store
                    mirrored = log.window(rollout.id, 0, "shadow").requests
                    log.finish_rollout(rollout.id, "stopped", "benchmark round over")
                    while server.traffic is not None and server.traffic.route is not None:
                        time.sleep(0.02)
                results[name].append((quantile(got, 0.5), quantile(got, 0.99), len(got)))
                shares[name].append(mirrored / len(got))
                print(
                    f"{name:<12} p50 {results[name][-1][0] * 1e3:6.2f} ms  "
                    f"p99 {results[name][-1][1] * 1e3:6.2f} ms  {len(got)} requests"
                )
    base50 = statistics.median(r[0] for r in results["no rollout"])
    base99 = statistics.median(r[1] for r in results["no rollout"])
    lines = [
        "# A rollout's cost to live traffic",
        "",
        f"{machine()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"`python benchmarks/bench_lifecycle.py`: one server of the digits logistic regression "
        f"(scikit-learn, threads, max_batch 16), {clients} closed-loop clients posting single "
        f"images for {seconds:g} s per round, {rounds} rounds of each setting alternated; medians.",
        "",
        "| setting | p50 ms | p99 ms | p99 vs no rollout | requests/s | mirrored |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rows in results.items():
        p50 = statistics.median(r[0] for r in rows)
        p99 = statistics.median(r[1] for r in rows)
        rate = statistics.median(r[2] for r in rows) / seconds
        lines.append(
            f"| {name} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {p99 / base99:.2f}× | {rate:.0f} "
            f"| {statistics.median(shares[name]):.0%} |"
        )
    lines += [
        "",
        f"No rollout: p50 {base50 * 1e3:.2f} ms, p99 {base99 * 1e3:.2f} ms. A shadow mirrors "
        "a batch only when no request waits for one (spare time), so under load it mirrors "
        "less than its fraction: *mirrored* is the share of requests it actually saw. The "
        "target is a shadow's p99 at most 1.05× the p99 with no rollout; rounds of the same "
        "setting differ by more than that on a shared machine, so only the medians compare.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        (HERE / "RESULTS-lifecycle.md").write_text(text)


if __name__ == "__main__":
    main()
