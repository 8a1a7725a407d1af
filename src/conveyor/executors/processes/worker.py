"""A process worker's side: read a task, run it, send its outcome back.

The worker reads tasks from one pipe and writes replies to another, so that the
driver's writer and reader never wait on each other (see :mod:`.pool`). What the
messages hold, and how a value that cannot cross fails only its own unit, is in
:mod:`.messages`.

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
from conveyor.executors.calls import close_quietly, worker_function
from conveyor.executors.processes.functions import load_function
from conveyor.executors.processes.messages import decode_task, encode_reply
from conveyor.executors.processes.output import flush_output, send_output
from conveyor.executors.processes.remote import pack
from conveyor.executors.processes.shm import SegmentRegistry
from conveyor.executors.task import run_task

STOP = b"stop"
READY = "ready"


def worker_main(
    inbox: multiprocessing.connection.Connection,
    outbox: multiprocessing.connection.Connection,
    fn_bytes: bytes,
    kind: str,
    initial: Any,
    is_async: bool,
    concurrency: int,
    timeout: float | None,
    cache: CacheSpec | None,
    worker: int,
    current: Any,
    prefix: str,
    threshold: int,
    output: Any = None,
    log_level: int = 0,
    stage: str = "",
    init_bytes: bytes = b"",
    env: dict[str, str] | None = None,
) -> None:
    """The body of worker process ``worker``: until told to stop, run tasks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if env:  # its GPUs: set before the stage's code can initialise CUDA
        os.environ.update(env)
    if output is not None:  # prints and log records go to the driver (see .output)
        send_output(output, log_level, stage, worker)
    registry = SegmentRegistry(prefix, owner=False, threshold=threshold)
    try:
        init = load_function(init_bytes) if init_bytes else None
        fn, close = worker_function(load_function(fn_bytes), kind, initial, init)
    except BaseException as exc:
        outbox.send_bytes(pickle.dumps(("init", pack(exc), traceback.format_exc())))
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
            close_quietly(close, f"worker {worker}")  # the instance of a class stage
            flush_output()
            return
        task_id, units, bad = decode_task(data, registry)
        out = run_task(
            fn,
            kind,
            units,
            worker=worker,
            task_id=-1 if task_id is None else task_id,
            is_async=is_async,
            concurrency=concurrency,
            timeout=timeout if is_async else None,  # sync calls: the driver kills on time
            on_unit=None if is_async else publish,
            cache=cache,
        )
        if bad is not None:  # a unit that cannot be unpickled here: it failed
            out.failures.append(bad)
        reply = encode_reply(out, registry)
        current[0] = -1
        current[1] = 0
        outbox.send_bytes(reply)
