"""Stage functions of ``bench_small_items.py``, at module level so process workers import them."""

from __future__ import annotations

import asyncio
import csv
import io
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COUNTRIES = ("fr", "de", "it", "es", "nl", "pl", "se", "pt")


def write_rows(path: Path, n: int, seed: int = 7) -> None:
    """A CSV file of ``n`` order rows: id, country, amount, quantity."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "country", "amount", "quantity"])
        for i in range(n):
            w.writerow([i, rng.choice(COUNTRIES), f"{rng.uniform(0, 200):.2f}", rng.randint(1, 9)])


def parse(line: str) -> dict[str, Any]:
    row = next(csv.reader(io.StringIO(line)))
    return {"id": int(row[0]), "country": row[1], "amount": float(row[2]), "qty": int(row[3])}


def large(row: dict[str, Any]) -> bool:
    return row["amount"] >= 50.0


def enrich(row: dict[str, Any]) -> dict[str, Any]:
    total = row["amount"] * row["qty"]
    return {**row, "total": total, "vat": round(total * 0.2, 2)}


def add(acc: dict[str, float], row: dict[str, Any]) -> dict[str, float]:
    acc[row["country"]] = acc.get(row["country"], 0.0) + row["total"]
    return acc


def merge(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out


def chunk_work(lines: list[str]) -> dict[str, float]:
    """The whole per-row pipeline over a chunk of lines, for ProcessPoolExecutor."""
    acc: dict[str, float] = {}
    for line in lines:
        row = parse(line)
        if large(row):
            add(acc, enrich(row))
    return acc


def produce(n: int) -> range:
    return range(n)


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def neg(x: int) -> int:
    return -x


# --- a flaky local HTTP server ---------------------------------------------------------


class _Flaky(BaseHTTPRequestHandler):
    failure_rate = 0.2
    delay = 0.02
    lock = threading.Lock()
    rng = random.Random(3)

    def do_GET(self) -> None:
        import time

        time.sleep(self.delay)
        with self.lock:
            fail = self.rng.random() < self.failure_rate
        body = b"error" if fail else self.path.encode()
        self.send_response(503 if fail else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def start_flaky_server() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class ServerError(Exception):
    pass


async def get(port: int, path: str) -> str:
    """One HTTP/1.0 GET on a fresh connection (stdlib only); ServerError on a 503."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise ServerError(head.split(b"\r\n", 1)[0].decode())
    return body.decode()
