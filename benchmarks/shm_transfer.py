"""Throughput of 8 MB NumPy arrays driver -> worker -> driver: shared memory vs pickle.

Run from the repository root: ``PYTHONPATH=src python benchmarks/shm_transfer.py``.
MB/s counts the array bytes moved in both directions (2 x 8 MB per round trip); each
figure is the median of ``REPEATS`` runs of ``ROUNDS`` round trips, each run with a fresh
spawned worker.

Scenarios, each through ``conveyor.executors.processes.shm`` over a Pipe and through pickle over
a ``multiprocessing.Queue`` (the baseline):

* echo:    the worker sends back the array it received.
* plus1:   the worker sends back a new array ``x + 1`` (it computes the same in both).
* forward: like echo, but the driver's array already lives in shared memory (e.g. the
           result of an earlier process stage), so nothing at all is copied.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import statistics
import sys
import time
from typing import Any

import numpy as np

from conveyor.executors.processes.shm import SegmentRegistry, dumps, loads

N_ELEMS = 1 << 20  # float64: 8 MB
ROUNDS = 60
WARMUP = 5
REPEATS = 3


def _shm_worker(conn: Any, prefix: str, mode: str) -> None:
    registry = SegmentRegistry(prefix, owner=False)
    while True:
        data = conn.recv_bytes()
        if data == b"stop":
            return
        x = loads(data, registry)
        conn.send_bytes(dumps(x + 1 if mode == "plus1" else x, registry)[0])


def _queue_worker(inq: Any, outq: Any, mode: str) -> None:
    while True:
        x = inq.get()
        if x is None:
            return
        outq.put(x + 1 if mode == "plus1" else x)


def bench_shm(mode: str) -> float:
    ctx = multiprocessing.get_context("spawn")
    prefix = f"cvb{os.getpid()}x{secrets.token_hex(3)}"
    registry = SegmentRegistry(prefix, owner=True)
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_shm_worker, args=(child, prefix, "echo" if mode == "forward" else mode)
    )
    proc.start()
    child.close()
    arr = np.random.default_rng(0).random(N_ELEMS)
    if mode == "forward":  # make the driver's array live in a segment, as a received one does
        payload, pinned = dumps(arr, registry)
        arr = loads(payload, registry)
        del pinned
    try:
        for i in range(WARMUP + ROUNDS):
            if i == WARMUP:
                t0 = time.perf_counter()
            data, pinned = dumps(arr, registry)
            parent.send_bytes(data)
            out = loads(parent.recv_bytes(), registry)
            del pinned
            assert out.shape == arr.shape
            del out
        elapsed = time.perf_counter() - t0
        parent.send_bytes(b"stop")
        proc.join()
    finally:
        registry.cleanup()
    return 2 * arr.nbytes * ROUNDS / elapsed / 1e6


def bench_queue(mode: str) -> float:
    ctx = multiprocessing.get_context("spawn")
    inq, outq = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(
        target=_queue_worker, args=(inq, outq, "echo" if mode == "forward" else mode)
    )
    proc.start()
    arr = np.random.default_rng(0).random(N_ELEMS)
    for i in range(WARMUP + ROUNDS):
        if i == WARMUP:
            t0 = time.perf_counter()
        inq.put(arr)
        out = outq.get()
        assert out.shape == arr.shape
    elapsed = time.perf_counter() - t0
    inq.put(None)
    proc.join()
    return 2 * arr.nbytes * ROUNDS / elapsed / 1e6


def _median(bench: Any, mode: str) -> float:
    return statistics.median(bench(mode) for _ in range(REPEATS))


def main() -> None:
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    print(f"{ROUNDS} round trips of {N_ELEMS * 8 / 2**20:.0f} MiB float64 arrays; MB/s both ways")
    print(
        f"{'scenario':<10}{'shm MB/s':>12}{'ms/trip':>9}"
        f"{'Queue+pickle MB/s':>19}{'ms/trip':>9}{'gain':>8}"
    )
    trip_mb = 2 * N_ELEMS * 8 / 1e6
    for mode in ("echo", "plus1", "forward"):
        shm, queue = _median(bench_shm, mode), _median(bench_queue, mode)
        print(
            f"{mode:<10}{shm:>12,.0f}{trip_mb / shm * 1e3:>9.2f}"
            f"{queue:>19,.0f}{trip_mb / queue * 1e3:>9.2f}{shm / queue:>7.1f}x"
        )


if __name__ == "__main__":
    main()
