"""The processes executor: spawned worker processes, each with a feeder and a reader.

    submit ──▶ inbox i ──▶ feeder thread i ═══ tasks ═══▶ worker process i
                                                                 ║
    post(outcome) ◀── reader thread i ◀═══ replies ══════════════╝
                       waits on the reply pipe AND the process sentinel

Each worker has two pipes and two driver threads. The feeder may block writing a
large task into a busy worker's pipe; the reader never writes, so a worker blocked
writing a large reply is always read. No thread ever blocks on a write while it is
the only reader: the rule ``concurrent.futures.process`` keeps with its feeder
thread, and the one that makes payloads of any size safe.

Every task gets exactly one outcome (the contract in :mod:`conveyor.executors.base`):

- a unit or a result that cannot be pickled, or unpickled on the other side, fails
  its own unit, and no other (:mod:`.messages`); an exception that cannot be
  pickled comes back as a proxy of its class (:mod:`.remote`);
- a worker that dies fails the unit it was running with ``lost`` set (naming the
  item, exit code and signal); the tasks queued behind it did not run and go back
  to the scheduler; a replacement starts at once;
- workers that die before they are ready are replaced a few times; then the stage
  is *broken*: every task fails with a fatal :class:`~conveyor.WorkerLostError`
  saying why (an import failing in the worker, usually), like ``BrokenProcessPool``.

Tasks go to the least loaded serving worker (ready ones first). Resizing keeps a
target: idle surplus workers retire at once, busy ones after their current task.
Processes are started with "spawn" (safe with threads, the same on every platform),
so the stage's function must be importable. Large NumPy arrays travel through
shared memory (:mod:`.shm`), never through the pipes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import secrets
import threading
from collections import deque
from time import monotonic, monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.errors import StageError, WorkerLostError
from conveyor.executors.base import (
    CacheSpec,
    Executor,
    Failure,
    LostWorker,
    Outcome,
    Post,
    RunContext,
    Task,
    Traits,
    not_run,
)
from conveyor.executors.gpus import check_gpus, gpu_devices, visible_gpus
from conveyor.executors.processes.functions import (
    check_picklable,
    dump_function,
    spawnable_main,
)
from conveyor.executors.processes.messages import decode_reply, unpicklable_task
from conveyor.executors.processes.output import WorkerOutput
from conveyor.executors.processes.remote import rebuild
from conveyor.executors.processes.shm import SegmentRegistry, dumps
from conveyor.executors.processes.worker import READY, STOP, worker_main

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

MAX_START_FAILURES = 3  # workers in a row that die before they are ready: the stage is broken
JOIN_SECONDS = 2.0


class _Worker:
    """One worker process, its pipes, its published unit and its two driver threads."""

    def __init__(self, index: int, proc: Any, tasks: Any, replies: Any, current: Any) -> None:
        self.index = index
        self.proc = proc
        self.tasks = tasks  # the driver writes tasks here (the feeder only)
        self.replies = replies  # and reads replies here (the reader only)
        self.current = current  # [unit index, its start in monotonic ns], published by the worker
        self.inbox: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self.queued = 0  # tasks in the inbox, not yet sent
        self.pending: deque[tuple[Task, list[object]]] = deque()  # sent, not answered
        self.ready = False
        self.serving = True  # counted by alive(): not retiring, not dead
        self.dead = False
        self.timed_out = False
        self.threads: list[threading.Thread] = []

    @property
    def load(self) -> tuple[bool, int]:
        return (not self.ready, self.queued + len(self.pending))


class ProcessExecutor(Executor):
    traits = Traits(
        target_task_ns=10_000_000, in_flight_per_worker=1, shares_memory=False, host_cores=True
    )

    def __init__(
        self,
        stage: Stage,
        post: Post,
        *,
        cache: CacheSpec | None = None,
        context: RunContext | None = None,
    ) -> None:
        super().__init__(stage, post, cache=cache, context=context)
        self._own_context = context is None  # then nothing else closes what it shares
        # One registry per run: arrays a process stage returns go on to the next
        # process stage by name, without a copy.
        self._registry = self.context.shared("shm", _new_registry, SegmentRegistry.cleanup)
        self._ctx = multiprocessing.get_context("spawn")
        self._output: WorkerOutput | None = None  # made at start (it starts a thread)
        self._fn_bytes = b""
        self._init_bytes = b""
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._started = False
        self._closing = False
        self._closed = False
        self._start_failures = 0
        self._broken: BaseException | None = None

    @classmethod
    def check(cls, stage: Stage, *, pipeline_built: bool) -> None:
        check_picklable(stage, pipeline_built=pipeline_built)
        if pipeline_built:
            check_gpus(stage.name, "processes", stage.needs.gpus, stage.workers)

    # --- the scheduler's side ---------------------------------------------------------

    def start(self) -> None:
        self._fn_bytes = dump_function(self.stage.fn)
        self._init_bytes = b"" if self.stage.init is None else dump_function(self.stage.init)
        # what the run's workers print and log, shown by the driver (one per run)
        if self._own_context:
            self._output = WorkerOutput(self._ctx)
        else:
            self._output = self.context.shared(
                "worker-output", lambda: WorkerOutput(self._ctx), WorkerOutput.close
            )
        with self._lock:
            self._started = True
            for _ in range(self.target):
                self._start_worker()

    def submit(self, task: Task) -> None:
        with self._lock:
            broken = self._broken
            serving = [w for w in self._workers if w.serving]
            w = min(serving, key=lambda w: w.load) if serving and broken is None else None
            if w is not None:
                w.queued += 1
        if w is not None:
            w.inbox.put(task)
        elif broken is not None:
            self.post(_broken_outcome(task, broken))
        else:
            self.post(not_run(task))  # closing: the run is ending

    def resize(self, workers: int) -> None:
        with self._lock:
            self.target = workers
            if not self._started or self._closing:
                return
            serving = [w for w in self._workers if w.serving]
            for _ in range(workers - len(serving)):
                self._start_worker()
            self._retire_idle_surplus()
            # Busy ones retire after their current task (the reader checks).

    def alive(self) -> int:
        with self._lock:
            if self._broken is not None:
                return 1  # it answers every task itself, with the reason it is broken
            return sum(1 for w in self._workers if w.serving)

    def pids(self) -> list[int]:
        with self._lock:
            if self._closed:
                return []
            return [w.proc.pid for w in self._workers if not w.dead and w.proc.is_alive()]

    def shutdown(self, *, cancel: bool) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True  # no replacement starts from here on
            workers = list(self._workers)
        if cancel:
            self._cancelled.set()
        for w in workers:
            w.inbox.put(None)
        if cancel:
            for w in workers:
                if w.proc.is_alive():
                    w.proc.terminate()
        deadline = monotonic() + JOIN_SECONDS
        for w in workers:
            w.proc.join(timeout=max(0.0, deadline - monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=JOIN_SECONDS)
        for w in workers:
            for t in w.threads:
                t.join(timeout=JOIN_SECONDS)
            w.tasks.close()
            w.replies.close()
            w.proc.close()
        if self._own_context and self._output is not None:
            self._output.close()  # what the workers sent is shown first
        with self._lock:
            self._closed = True

    # --- workers ------------------------------------------------------------------------

    def _start_worker(self) -> None:
        """Start one worker and its two threads (call with the lock held)."""
        s = self.stage
        i = len(self._workers)
        task_r, task_w = self._ctx.Pipe(duplex=False)
        reply_r, reply_w = self._ctx.Pipe(duplex=False)
        current = self._ctx.RawArray("q", 2)
        current[0] = -1
        proc = self._ctx.Process(
            target=worker_main,
            args=(
                task_r,
                reply_w,
                self._fn_bytes,
                s.kind,
                s.initial,
                s.is_async,
                s.concurrency,
                s.timeout,
                self.cache,
                i,
                current,
                self._registry.prefix,
                self._registry.threshold,
                None if self._output is None else self._output.queue,
                0 if self._output is None else self._output.level,
                s.name,
                self._init_bytes,
                _gpu_env(s.needs.gpus, i),
            ),
            name=f"conveyor-{s.name}-{i}",
            daemon=True,
        )
        with spawnable_main():
            proc.start()
        task_r.close()  # the worker's ends: its death must close the pipes
        reply_w.close()
        w = _Worker(i, proc, task_w, reply_r, current)
        self._workers.append(w)
        for role, target in (("feeder", self._feed), ("reader", self._read)):
            t = threading.Thread(
                target=target, args=(w,), name=f"conveyor-{s.name}-{role}-{i}", daemon=True
            )
            w.threads.append(t)
            t.start()

    def _retire_idle_surplus(self) -> None:
        """While more workers serve than the target, retire idle ones, those still
        starting first (lock held). Every idle worker is looked at, not only those
        before the first busy one: an idle worker left serving gets no reply that
        would retire it later, and the pool would stay above its target."""
        serving = [w for w in self._workers if w.serving]
        surplus = len(serving) - self.target
        for w in sorted(serving, key=lambda w: (w.ready, w.load[1])):
            if surplus <= 0:
                break
            if not w.load[1]:
                self._retire(w)
                surplus -= 1

    def _retire(self, w: _Worker) -> None:
        """``w`` takes no new task; it stops once those queued for it are done (lock held)."""
        w.serving = False
        w.inbox.put(None)

    def _feed(self, w: _Worker) -> None:
        """The feeder: pickle each task of ``w``'s inbox and write it to the worker."""
        try:
            self._feed_tasks(w)
        except BaseException as exc:  # a bug here must not lose tasks: fail them loudly
            self._fail_held(w, exc)

    def _feed_tasks(self, w: _Worker) -> None:
        while True:
            task = w.inbox.get()
            if task is None:
                break
            with self._lock:
                w.queued -= 1
                broken, dead = self._broken, w.dead
            if broken is not None:
                self.post(_broken_outcome(task, broken))
                continue
            if dead or self._cancelled.is_set():
                self.post(not_run(task, w.index))
                continue
            try:
                data, pinned = dumps((task.id, task.units), self._registry)
            except Exception as exc:
                self.post(unpicklable_task(task, exc, w.index, self._registry))
                continue
            with self._lock:
                if w.dead:
                    self.post(not_run(task, w.index))
                    continue
                w.pending.append((task, pinned))
            with contextlib.suppress(OSError):  # the worker died: its reader reports it
                w.tasks.send_bytes(data)
        with contextlib.suppress(OSError):
            w.tasks.send_bytes(STOP)

    def _read(self, w: _Worker) -> None:
        """The reader: post each reply of ``w`` as an outcome; report its death."""
        try:
            hello = self._receive(w)
            if hello is None:
                self._died(w, at_start=True)
                return
            msg = pickle.loads(hello)
            if msg != READY:
                self._cannot_load(w, msg)
                return
            with self._lock:
                w.ready = True
                self._start_failures = 0
                self._retire_idle_surplus()
            while True:
                reply = self._receive(w)
                if reply is None:
                    self._died(w, at_start=False)
                    return
                with self._lock:
                    task = w.pending[0][0]
                outcome = decode_reply(reply, task.id, w.index, self._registry)
                with self._lock:
                    _, pinned = w.pending.popleft()
                del pinned  # its segments stay mapped until the reply is unpickled
                self.post(outcome)
                with self._lock:
                    serving = sum(1 for x in self._workers if x.serving)
                    if w.serving and serving > self.target:
                        self._retire(w)  # after the tasks already queued for it
                    self._retire_idle_surplus()
        except BaseException as exc:  # a bug here must not lose tasks: fail them loudly
            self._fail_held(w, exc)

    def _receive(self, w: _Worker) -> bytes | None:
        """The worker's next message; None once it has died (or, past the stage's timeout,
        been killed: ``w.timed_out`` says so)."""
        timeout = self.stage.timeout
        # Without a timeout, wait for the reply or the death; with one, look at the
        # unit's start time the worker publishes, a few times per timeout.
        poll = None if timeout is None else min(0.05, timeout / 4)
        while True:
            ready = multiprocessing.connection.wait([w.replies, w.proc.sentinel], timeout=poll)
            if w.replies in ready or (ready and w.replies.poll()):
                try:
                    return w.replies.recv_bytes()
                except (EOFError, OSError):
                    return None
            if ready:
                return None
            started = w.current[1]
            if timeout is not None and started and monotonic_ns() - started > timeout * 1e9:
                w.timed_out = True
                w.proc.kill()
                return None

    def _died(self, w: _Worker, *, at_start: bool) -> None:
        """``w``'s process is gone: account for every task it held, and replace it."""
        w.proc.join(timeout=JOIN_SECONDS)
        with self._lock:
            was_serving = w.serving
            w.dead, w.serving = True, False
            held = [task for task, _ in w.pending]
            w.pending.clear()
            if at_start and not self._closing:
                self._start_failures += 1
                if self._start_failures >= MAX_START_FAILURES and self._broken is None:
                    self._broken = self._start_error(w)
            replace = was_serving and not self._closing and self._broken is None
            if replace and not self._cancelled.is_set():
                self._start_worker()
            broken = self._broken
        w.inbox.put(None)  # the feeder answers what is still queued for it, then exits
        if not held:
            return  # it retired (told to stop) or never got a task
        if broken is not None:
            for task in held:
                self.post(_broken_outcome(task, broken))
            return
        first, rest = held[0], held[1:]
        unit = int(w.current[0])
        if at_start or unit < 0:
            self.post(not_run(first, w.index))  # nothing had started: run it again
        else:
            lost = LostWorker(w.proc.pid, w.proc.exitcode, unit, timed_out=w.timed_out)
            self.post(Outcome(first.id, w.index, [], [], lost=lost))
        for task in rest:
            self.post(not_run(task, w.index))

    def _start_error(self, w: _Worker) -> WorkerLostError:
        code = w.proc.exitcode
        return WorkerLostError(
            f"stage {self.stage.name!r}: its process workers exit before they can start "
            f"({MAX_START_FAILURES} in a row; the last, pid {w.proc.pid}, exited with code "
            f"{code}); its error is printed above. Usually the main module cannot be imported "
            "again in a spawned process: run from a file, keep the stage's function at the top "
            "level of a module, and guard the script's entry point with "
            "`if __name__ == '__main__':`",
            stage=self.stage.name,
            pid=w.proc.pid,
            exitcode=code,
        )

    def _cannot_load(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        """The worker could not load the stage's function: no worker ever will."""
        _, packed, tb = msg
        cause = rebuild(packed, tb)
        error = StageError(
            f"stage {self.stage.name!r} cannot run on process workers: loading its function "
            f"in a worker raised {packed.describe}; make the function importable (defined at the top "
            "level of a module that imports cleanly), or use executor='threads'",
            stage=self.stage.name,
        )
        error.__cause__ = cause
        with self._lock:
            self._broken = self._broken or error
        self._died(w, at_start=False)

    def _fail_held(self, w: _Worker, exc: BaseException) -> None:
        error = RuntimeError(
            f"conveyor's reader for process worker {w.index} of stage {self.stage.name!r} "
            f"failed: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        with self._lock:
            w.dead, w.serving = True, False
            held = [task for task, _ in w.pending]
            w.pending.clear()
        for task in held:
            self.post(_broken_outcome(task, error))
        w.inbox.put(None)
        with contextlib.suppress(Exception):
            w.proc.kill()


def _gpu_env(gpus: float, worker: int) -> dict[str, str] | None:
    """The environment worker ``worker`` starts with: its GPUs (None: the driver's)."""
    if not gpus:
        return None
    return {"CUDA_VISIBLE_DEVICES": ",".join(gpu_devices(gpus, worker, visible_gpus()))}


def _new_registry() -> SegmentRegistry:
    return SegmentRegistry(f"cv{os.getpid()}x{secrets.token_hex(3)}", owner=True)


def _broken_outcome(task: Task, error: BaseException) -> Outcome:
    return Outcome(task.id, -1, [], [], [Failure(0, error, None, fatal=True)])
