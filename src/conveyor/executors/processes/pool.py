"""The processes executor: spawned worker processes, one proxy thread each.

    scheduler ──submit──▶ inbox ──▶ proxy thread i ══pipe══▶ worker process i
        ▲                               │  waits on the pipe AND the process sentinel
        └──────────── post(outcome) ◀───┘  (death is seen at once, as EOF/sentinel)

Processes suit CPU-bound pure-Python functions. They are started with the "spawn"
method (safe with threads, the same on every platform), so the stage's function
must be importable: defined at the top level of a module. Each proxy pickles the
task, sends it, and waits for the reply or the worker's death; a dead worker
becomes an outcome with ``lost`` set, naming the item it held (each worker
publishes the index of the unit it is running in a shared integer). Large NumPy
arrays travel through shared memory (see ``_shm``), never through the pipe.

Workers ignore SIGINT: Ctrl-C reaches the driver, which cancels the run and
terminates its workers, so no worker prints a traceback of its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import threading
import traceback
from collections import deque
from time import monotonic_ns
from typing import Any

from conveyor.core.stage import Stage, dump_function, load_function
from conveyor.executors.base import Executor, Post
from conveyor.executors.processes.shm import SegmentRegistry, dumps, loads
from conveyor.executors.task import CacheSpec, LostWorker, Outcome, Task, run_task

_STOP = b"stop"
_NEVER_STARTED = LostWorker(pid=None, exitcode=None, unit_index=-1, started=False)
_READY = "ready"


class _Worker:
    """One worker process, its pipe, its published unit index and its proxy thread."""

    def __init__(self, proc: Any, conn: multiprocessing.connection.Connection, current: Any):
        self.proc = proc
        self.conn = conn
        self.current = current
        self.proxy: threading.Thread | None = None
        self.timed_out = False


class ProcessExecutor(Executor):
    def __init__(self, stage: Stage, post: Post, *, registry: SegmentRegistry) -> None:
        super().__init__(stage, post)
        self._registry = registry
        self._workers: list[_Worker] = []
        # worker index -> the tasks sent to it and not yet answered, oldest first
        self._holding: dict[int, deque[tuple[Task, list[object]]]] = {}
        self._lock = threading.Lock()  # proxies start replacements, the scheduler resizes
        self._closing = False
        self._closed = False

    def start(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._fn_bytes = dump_function(self.stage.fn)
        self._inbox: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self.resize(self.stage.workers)

    def resize(self, workers: int) -> None:
        """Start workers up to ``workers`` live ones, or ask idle ones to stop."""
        with self._lock:
            live = sum(1 for w in self._workers if w.proxy is not None and w.proxy.is_alive())
            for _ in range(workers - live):
                self._start_worker(len(self._workers))
        for _ in range(live - workers):
            self._inbox.put(None)  # the next idle proxy stops its worker and exits

    def _start_worker(self, i: int) -> None:
        s = self.stage
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        current = self._ctx.RawArray("q", 2)  # [unit index, its start (monotonic ns)]
        current[0] = -1
        proc = self._ctx.Process(
            target=_worker_main,
            args=(
                child_conn,
                self._fn_bytes,
                s.kind,
                s.is_async,
                s.concurrency,
                s.timeout,
                self.cache,
                i,
                current,
                self._registry.prefix,
                self._registry.threshold,
            ),
            name=f"conveyor-{s.name}-{i}",
            daemon=True,
        )
        proc.start()
        child_conn.close()  # our copy: the worker's death must close the pipe
        w = _Worker(proc, parent_conn, current)
        self._workers.append(w)
        w.proxy = threading.Thread(
            target=self._proxy, args=(i,), name=f"conveyor-{s.name}-proxy-{i}", daemon=True
        )
        w.proxy.start()

    def submit(self, task: Task) -> None:
        self._inbox.put(task)

    def pids(self) -> list[int]:
        if self._closed:
            return []
        return [w.proc.pid for w in self._workers if w.proc.is_alive()]

    def _receive(self, i: int) -> bytes | None:
        """The worker's next message; None if it died, or if it ran one unit past the
        stage's timeout, in which case it has been killed (``_timed_out`` says so)."""
        w = self._workers[i]
        timeout = self.stage.timeout
        # Without a timeout, wait for the reply or the death; with one, look at the
        # unit's start time the worker publishes, a few times per timeout.
        poll = None if timeout is None else min(0.05, timeout / 4)
        while True:
            ready = multiprocessing.connection.wait([w.conn, w.proc.sentinel], timeout=poll)
            if w.conn in ready:
                try:
                    return w.conn.recv_bytes()
                except (EOFError, OSError):
                    return None
            if ready:
                return None
            started = w.current[1]
            if timeout is not None and started and monotonic_ns() - started > timeout * 1e9:
                w.timed_out = True
                w.proc.kill()
                return None

    def _lost(self, i: int, task: Task) -> Outcome:
        w = self._workers[i]
        w.proc.join(timeout=1.0)
        lost = LostWorker(
            pid=w.proc.pid,
            exitcode=w.proc.exitcode,
            unit_index=int(w.current[0]),
            timed_out=w.timed_out,
        )
        return Outcome(task.id, i, [], [], lost=lost)

    def _replace(self) -> None:
        """Start a worker in place of one that died or was killed (unless stopping)."""
        with self._lock:
            if not self._closing and not self._cancelled.is_set():
                self._start_worker(len(self._workers))

    def _died_at_start(self, i: int, task: Task) -> Outcome:
        proc = self._workers[i].proc
        proc.join(timeout=1.0)
        return Outcome(
            task.id,
            i,
            [],
            [0, 0],
            RuntimeError(
                f"process worker {i} (pid {proc.pid}) exited with code {proc.exitcode} before "
                "it could start; its error is printed above. Usually the main module cannot be "
                "imported again in a spawned process: run from a file, keep the stage's "
                "function at the top level of a module, and guard the script's entry point "
                "with `if __name__ == '__main__':`"
            ),
        )

    def _proxy(self, i: int) -> None:
        try:
            self._serve(i)
        except BaseException as exc:
            # A proxy must never die silently: the scheduler would wait for its tasks
            # forever. The task the worker ran fails; those queued behind it run again.
            pending = self._holding.pop(i, deque())
            if pending and not self._cancelled.is_set():
                error = RuntimeError(
                    f"conveyor's proxy for process worker {i} failed: {type(exc).__name__}: {exc}"
                )
                error.__cause__ = exc
                first, _ = pending.popleft()
                self.post(Outcome(first.id, i, [], [0, 0], error, traceback.format_exc()))
                for task, _ in pending:
                    self.post(Outcome(task.id, i, [], [], lost=_NEVER_STARTED))

    def _serve(self, i: int) -> None:
        conn = self._workers[i].conn
        hello = self._receive(i)
        init_error: BaseException | None = None
        if hello is not None:
            msg = loads(hello, self._registry)
            if msg != _READY:
                init_error = _as_exception(*msg)
        # Up to two tasks at the worker: the one it runs and the next, waiting in its
        # pipe, so that it starts the next the moment it answers. ``pinned`` keeps a
        # task's shared-memory inputs mapped until its reply is unpickled: an in-place
        # stage answers with those very segments.
        pending: deque[tuple[Task, list[object]]] = deque()
        self._holding[i] = pending
        stopping = False
        while True:
            while len(pending) < 2 and not stopping:
                try:
                    task = self._inbox.get() if not pending else self._inbox.get_nowait()
                except queue.Empty:
                    break
                if task is None or self._cancelled.is_set():
                    stopping = True
                    break
                if hello is None:  # died at start
                    self.post(self._died_at_start(i, task))
                    return
                if init_error is not None:
                    self.post(Outcome(task.id, i, [], [0, 0], init_error, None))
                    continue
                data, pinned = dumps((task.id, task.units), self._registry)
                pending.append((task, pinned))
                try:
                    conn.send_bytes(data)
                except OSError:
                    break  # the worker is gone: _receive says so below
            if not pending:
                if stopping:
                    with contextlib.suppress(OSError):
                        conn.send_bytes(_STOP)
                    return
                continue
            reply = self._receive(i)
            if self._cancelled.is_set():
                return
            task, pinned = pending.popleft()
            if reply is None:
                self.post(self._lost(i, task))
                for never_ran, _ in pending:  # still in the dead worker's pipe
                    self.post(Outcome(never_ran.id, i, [], [], lost=_NEVER_STARTED))
                pending.clear()
                self._replace()
                return
            outcome = _outcome_from_message(loads(reply, self._registry), i)
            del pinned
            self.post(outcome)

    def shutdown(self, *, cancel: bool) -> None:
        with self._lock:
            self._closing = True  # no replacement starts from here on
        if cancel:
            self._cancelled.set()
        for _ in self._workers:
            self._inbox.put(None)
        if cancel:
            for w in self._workers:
                if w.proc.is_alive():
                    w.proc.terminate()
        for w in self._workers:
            w.proc.join(timeout=2.0)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=2.0)
        for w in self._workers:
            if w.proxy is not None:
                w.proxy.join(timeout=2.0)
            w.conn.close()
            w.proc.close()
        self._closed = True


def _as_exception(kind: str, exc: Any, tb: str) -> BaseException:
    """Rebuild a worker's exception with its remote traceback as ``__cause__``."""
    from conveyor.errors import RemoteTraceback

    if not isinstance(exc, BaseException):
        exc = RuntimeError(str(exc))
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def _outcome_from_message(msg: tuple[Any, ...], worker: int) -> Outcome:
    task_id, results, stamps, error, hits, uncached = msg
    exc = _as_exception(*error) if error is not None else None
    tb = error[2] if error is not None else None
    return Outcome(task_id, worker, results, stamps, exc, tb, hits=hits, uncached=uncached)


# --- the worker process ---------------------------------------------------------


def _worker_main(
    conn: multiprocessing.connection.Connection,
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
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    registry = SegmentRegistry(prefix, owner=False, threshold=threshold)
    try:
        fn = load_function(fn_bytes)
    except BaseException as exc:
        conn.send_bytes(dumps(("init", _picklable(exc), traceback.format_exc()), registry)[0])
        return
    conn.send_bytes(dumps(_READY, registry)[0])

    driver = os.getppid()

    def publish(i: int) -> None:
        if os.getppid() != driver:
            os._exit(0)  # the driver died: stop at once rather than work as an orphan
        current[1] = monotonic_ns()
        current[0] = i

    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the driver is gone: exit rather than linger as an orphan
        if data == _STOP:
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
            timeout=timeout if is_async else None,  # sync calls: the proxy kills on time
            on_unit=None if is_async else publish,
            cache=cache,
        )
        error = None
        if out.error is not None:
            error = ("error", _picklable(out.error), out.error_traceback or "")
        msg = (task_id, out.results, out.stamps, error, out.hits, out.uncached)
        try:
            payload = dumps(msg, registry)[0]
        except Exception as exc:
            tb = traceback.format_exc()
            bad = TypeError(
                f"the stage's result cannot be pickled to send it back from the process "
                f"worker ({type(exc).__name__}: {exc}); return plain data (numbers, strings, "
                "lists, dicts, NumPy arrays), or run this stage on threads"
            )
            msg = (task_id, [], out.stamps[:2], ("error", bad, tb), [], None)
            payload = dumps(msg, registry)[0]
        current[0] = -1
        current[1] = 0
        conn.send_bytes(payload)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc} (original exception not picklable)")
