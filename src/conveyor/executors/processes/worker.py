"""A process worker's side: read a task, run it, send its outcome back.

The worker reads tasks from one pipe and writes replies to another, so that the
driver's writer and reader never wait on each other (see :mod:`.pool`). A reply
carries each result pickled on its own unless every result is a plain value (int,
float, str, bytes, bool, None): a result the driver cannot unpickle then fails
only its own unit, and the other units' results are kept.

Workers ignore SIGINT: Ctrl-C reaches the driver, which cancels the run and
terminates its workers, so no worker prints a traceback of its own. A worker whose
driver is gone exits at its next unit instead of working on as an orphan.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import pickle
import signal
import traceback
from time import monotonic_ns
from typing import Any

from conveyor.executors.base import CacheSpec
from conveyor.executors.processes.functions import load_function
from conveyor.executors.processes.remote import pack
from conveyor.executors.processes.shm import SegmentRegistry, dumps, loads
from conveyor.executors.task import run_task

STOP = b"stop"
READY = "ready"
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})

# A reply, as the worker sends it (pickled):
#   (task_id, stamps, results, failures, hits, uncached)
# results:  ("all", bytes)            every result plain: one pickle of the list
#           ("each", [bytes | None])  one pickle per unit (None: that unit failed)
# failures: [(unit, Packed, traceback, fatal)]  (Packed: the exception, see .remote)


def worker_main(
    inbox: multiprocessing.connection.Connection,
    outbox: multiprocessing.connection.Connection,
    fn_bytes: bytes,
    kind: str,
    is_async: bool,
    concurrency: int,
    timeout: float | None,
    cache: CacheSpec | None,
    worker: int,
    current: Any,
    prefix: str,
    threshold: int,
) -> None:
    """The body of worker process ``worker``: until told to stop, run tasks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    registry = SegmentRegistry(prefix, owner=False, threshold=threshold)
    try:
        fn = load_function(fn_bytes)
    except BaseException as exc:
        outbox.send_bytes(pickle.dumps(("init", pack(exc), _tb())))
        return
    outbox.send_bytes(pickle.dumps(READY))

    driver = os.getppid()

    def publish(i: int) -> None:
        if os.getppid() != driver:
            os._exit(0)  # the driver died: stop at once rather than work as an orphan
        current[1] = monotonic_ns()
        current[0] = i

    while True:
        try:
            data = inbox.recv_bytes()
        except (EOFError, OSError):
            return  # the driver is gone: exit rather than linger as an orphan
        if data == STOP:
            return
        task_id, units = loads(data, registry)
        out = run_task(
            fn,
            kind,
            units,
            worker=worker,
            task_id=task_id,
            is_async=is_async,
            concurrency=concurrency,
            timeout=timeout if is_async else None,  # sync calls: the driver kills on time
            on_unit=None if is_async else publish,
            cache=cache,
        )
        failed = {f.unit for f in out.failures}
        failures = [(f.unit, pack(f.error), f.traceback or "", f.fatal) for f in out.failures]
        results = _pickle_results(out.results, failed, failures, registry)
        reply = pickle.dumps((task_id, out.stamps, results, failures, out.hits, out.uncached))
        current[0] = -1
        current[1] = 0
        outbox.send_bytes(reply)


def _pickle_results(
    results: list[Any], failed: set[int], failures: list[Any], registry: SegmentRegistry
) -> tuple[str, Any]:
    if not failed and all(type(r) in _PLAIN for r in results):
        return ("all", pickle.dumps(results, protocol=5))
    blobs: list[bytes | None] = []
    for i, r in enumerate(results):
        if i in failed:
            blobs.append(None)
            continue
        try:
            blobs.append(dumps(r, registry)[0])
        except Exception as exc:
            blobs.append(None)
            bad = TypeError(
                f"the stage's result cannot be pickled to send it back from the process "
                f"worker ({type(exc).__name__}: {exc}); return plain data (numbers, strings, "
                "lists, dicts, NumPy arrays), or run this stage on threads"
            )
            failures.append((i, pack(bad), _tb(), False))
    failures.sort(key=lambda f: f[0])
    return ("each", blobs)


def _tb() -> str:
    return traceback.format_exc()
