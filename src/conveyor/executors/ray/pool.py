"""The ray executor: a stage's workers are Ray actors, on any node of a cluster.

    submit ──▶ pending ──▶ actor.run.remote(task) ══ Ray ══▶ actor i (a node's process)
                                                                   ║
    post(outcome) ◀── collector thread: ray.wait on every reply ◀══╝

Each worker is one actor with the stage's resources (``Stage(resources=...)``): a
class stage's instance is made once per actor. Tasks go to the least loaded actor,
at most ``1 + in_flight_per_worker`` at a time each, so an actor starts its next
task without waiting for the driver. One thread per stage waits on Ray for the
replies and posts the outcomes; each reply is decoded as a process worker's is
(:mod:`..processes.messages`), so a value that cannot cross fails only its unit.

Faults keep the contract of :mod:`conveyor.executors.base`:

- an actor that dies (its process killed, its node lost) fails the task it was
  running with ``lost`` set, and the tasks queued behind it go back to the
  scheduler unrun; a new actor takes its place, and the stage's retry policy
  decides the rest, so no item is lost and none is duplicated;
- actors that die before they are ready, three in a row, break the stage: every
  task fails with a fatal :class:`~conveyor.WorkerLostError` (an import failing
  on the nodes, usually).

A stage ``timeout`` for plain functions: while an actor is busy the collector asks it
(``current()``, in a concurrency group of its own, so it answers mid-task) which
unit it runs and for how long; one past the timeout has its actor killed and
replaced, and that unit fails with :class:`TimeoutError` (``async def`` stages time
each call out in the actor).

Durations come from the actor's clock and are placed on the driver's: a task's
stamps are shifted to end when its reply arrived, so a node whose monotonic clock
differs is still measured right.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections import deque
from collections.abc import Sequence
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.executors.base import (
    CacheSpec,
    Executor,
    LostWorker,
    Outcome,
    Post,
    RunContext,
    Task,
    Traits,
    not_run,
)
from conveyor.executors.processes.functions import check_picklable, dump_function
from conveyor.executors.processes.messages import decode_reply, unpicklable_task
from conveyor.executors.processes.shm import dumps
from conveyor.executors.ray.actor import actor_class, plain_registry
from conveyor.executors.ray.budget import KeptBytes, KeptStatistics, default_cap
from conveyor.executors.ray.connect import connect, import_ray
from conveyor.executors.ray.faults import broken_outcome, load_failed, start_failed
from conveyor.executors.ray.handles import encode_task, handles, keeps_results, resolve, total_bytes
from conveyor.executors.ray.options import ray_options, unplaced
from conveyor.executors.ray.roster import Actor

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

MAX_START_FAILURES = 3
_PROBE: Any = object()  # in _refs: the answer of an actor's current()
UNPLACED_SECONDS = 30  # an actor not placed by then: say why the stage waits
WAIT_SECONDS = 0.05  # the collector's longest wait: how soon it sees new work or a stop
JOIN_SECONDS = 10.0  # how long shutdown waits for actors to close their instances


class RayExecutor(Executor):
    traits = Traits(target_task_ns=20_000_000, in_flight_per_worker=1, shares_memory=False)

    def __init__(
        self,
        stage: Stage,
        post: Post,
        *,
        cache: CacheSpec | None = None,
        context: RunContext | None = None,
    ) -> None:
        super().__init__(stage, post, cache=cache, context=context)
        self._registry = plain_registry()
        self._actors: list[Actor] = []
        self._pending: deque[tuple[Task, bytes, list[Any]]] = deque()
        self._refs: dict[Any, tuple[Actor, Task | None]] = {}  # None: the ready() call
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ray: Any = None
        self._args: tuple[Any, ...] = ()
        self._options: dict[str, Any] = {}
        self._started = False
        self._closing = False
        self._start_failures = 0
        self._broken: BaseException | None = None
        self._warned = False
        self._keep = False  # results stay in the object store (hand_on decides)
        self._bytes_bound: int | None = None
        self._budget: KeptBytes | None = None
        self._kept: dict[Any, Any] = {}  # a kept task's reply ref -> its outputs ref
        self._reads_handles = False  # a producer hands this stage handles (hand_on)

    @classmethod
    def check(cls, stage: Stage, *, pipeline_built: bool) -> None:
        check_picklable(stage, pipeline_built=pipeline_built)
        if pipeline_built:
            import_ray()

    # --- the scheduler's side ---------------------------------------------------------

    def hand_on(self, consumers: Sequence[Executor], *, bytes_bound: int | None) -> None:
        self._keep = keeps_results(self.stage.kind, consumers, RayExecutor)
        self._bytes_bound = bytes_bound
        for c in consumers if self._keep else ():
            c._reads_handles = True  # type: ignore[attr-defined]  # a RayExecutor

    def resolve(self, values: list[Any]) -> list[Any]:
        return resolve(self._ray or connect(), values)

    def kept_statistics(self) -> KeptStatistics | None:
        """The bytes this stage keeps in the object store (None: it returns values)."""
        return None if self._budget is None else self._budget.statistics()

    def start(self) -> None:
        self._ray = connect()
        s = self.stage
        fn_bytes = dump_function(s.fn)
        init_bytes = b"" if s.init is None else dump_function(s.init)
        # Ray's workers do not inherit the driver's environment: conveyor's own
        # settings (CONVEYOR_*) follow the run; others go through Ray's runtime_env.
        env = {k: v for k, v in os.environ.items() if k.startswith("CONVEYOR_")}
        env["CONVEYOR_WORKER"] = "ray"
        self._args = (
            list(sys.path),
            fn_bytes,
            init_bytes,
            s.kind,
            s.initial,
            s.is_async,
            s.concurrency,
            s.timeout,
            self.cache,
            s.name,
            env,
            s.split,
        )
        self._options = ray_options(s)
        if self._keep:
            cap = self._bytes_bound or default_cap(self._ray)
            self._budget = KeptBytes(cap, self._wake.set)
        with self._lock:
            self._started = True
            for _ in range(self.target):
                self._start_actor()
        self._thread = threading.Thread(
            target=self._collect, name=f"conveyor-{s.name}-ray", daemon=True
        )
        self._thread.start()

    def submit(self, task: Task) -> None:
        with self._lock:
            broken, closing = self._broken, self._closing
        if broken is not None:
            self.post(broken_outcome(task, broken))
            return
        if closing:
            self.post(not_run(task))
            return
        try:
            refs: list[Any]
            try:  # the plain pickle, in C; a handle refuses it: then the handles' own
                data, refs = dumps((task.id, task.units), self._registry)[0], []
            except TypeError:
                if not self._reads_handles:
                    raise
                data, refs = encode_task(task.id, task.units)
        except Exception as exc:
            self.post(unpicklable_task(task, exc, -1, self._registry))
            return
        with self._lock:
            self._pending.append((task, data, refs))
            self._dispatch()
        self._wake.set()

    def resize(self, workers: int) -> None:
        with self._lock:
            self.target = workers
            if not self._started or self._closing:
                return
            serving = [a for a in self._actors if a.serving]
            for _ in range(workers - len(serving)):
                self._start_actor()
            surplus = len(serving) - workers
            for a in sorted(serving, key=lambda a: (a.ready, len(a.held))):
                if surplus <= 0:
                    break
                if not a.held:
                    self._retire(a)
                    surplus -= 1
            self._dispatch()
        self._wake.set()

    def alive(self) -> int:
        with self._lock:
            if self._broken is not None:
                return 1  # it answers every task itself, with the reason it is broken
            return sum(1 for a in self._actors if a.serving)

    def shutdown(self, *, cancel: bool) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            actors = [a for a in self._actors if not a.dead]
            pending = [p[0] for p in self._pending]
            self._pending.clear()
        for task in pending:
            self.post(not_run(task))
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            held = [task for a in self._actors for task, _ in a.held]
            for a in self._actors:
                a.held.clear()
            self._refs.clear()
            self._kept.clear()
            closing = [self._kill(a, graceful=not cancel) for a in actors]
        for task in held:  # the run is ending (cancelled): every task still gets its answer
            self.post(not_run(task))
        # As process workers are joined: a class stage's instance is closed by the time
        # the run returns (close() runs in the actor).
        stops = [ref for ref in closing if ref is not None]
        if stops:
            with contextlib.suppress(Exception):
                self._ray.wait(stops, num_returns=len(stops), timeout=JOIN_SECONDS)

    # --- actors (lock held unless said otherwise) ----------------------------------------

    def _start_actor(self) -> None:
        i = len(self._actors)
        handle = actor_class().options(name=None, **self._options).remote(*self._args)
        a = Actor(i, handle, handle.ready.remote())
        self._actors.append(a)
        self._refs[a.ready_ref] = (a, None)

    def _retire(self, a: Actor) -> None:
        """``a`` takes no new task; it goes once it has answered those it holds."""
        a.serving = False
        if not a.held:
            self._kill(a, graceful=True)

    def _kill(self, a: Actor, *, graceful: bool) -> Any:
        """Stop ``a``: gracefully (close its instance, then exit; the ref of the
        close is returned) or at once."""
        a.serving = False
        if a.dead:
            return None
        a.dead = True
        self._refs.pop(a.ready_ref, None)
        stopped = None
        try:
            if graceful:
                stopped = a.handle.stop.remote()
                a.handle.__ray_terminate__.remote()
            else:
                self._ray.kill(a.handle, no_restart=True)
        except Exception:
            pass
        return stopped

    def _dispatch(self) -> None:
        """Send pending tasks to the least loaded serving actors, up to their depth."""
        depth = 1 + self.traits.in_flight_per_worker
        budget = self._budget
        while self._pending:
            room = [a for a in self._actors if a.serving and not a.dead and len(a.held) < depth]
            if not room:
                return
            if budget is not None and not budget.admits(len(self._pending[0][0].units)):
                return  # past the bytes cap: wait until consumers free some
            a = min(room, key=lambda a: (len(a.held), not a.ready))
            task, data, refs = self._pending.popleft()
            if budget is not None and budget.probe():
                ref, self._kept[ref] = a.handle.run_kept.remote(data, refs)
                budget.sent(len(task.units))
            else:
                ref = a.handle.run.remote(data, refs)
            a.held.append((task, ref))
            self._refs[ref] = (a, task)

    # --- the collector thread ------------------------------------------------------------

    def _collect(self) -> None:
        ray = self._ray
        while not self._stop.is_set():
            with self._lock:
                refs = list(self._refs)
                if self._pending and self._budget is not None:
                    self._dispatch()  # bytes may have been freed
            if not refs:
                self._wake.wait(WAIT_SECONDS)
                self._wake.clear()
                continue
            done, rest = ray.wait(refs, num_returns=1, timeout=WAIT_SECONDS)
            if done and rest:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                done += more
            for ref in done:
                self._answer(ref)
            if self.stage.timeout is not None and not self.stage.is_async:
                self._probe()
            self._warn_if_unplaced()

    def _warn_if_unplaced(self) -> None:
        """Say once when an actor has waited ``UNPLACED_SECONDS`` for a node: its
        resources are nowhere free (the run waits for a node that has them)."""
        if self._warned:
            return
        now = monotonic_ns()
        with self._lock:
            waiting = [
                a
                for a in self._actors
                if not a.ready and not a.dead and now - a.born > UNPLACED_SECONDS * 1e9
            ]
        if waiting:
            self._warned = True
            # -W error must not end this thread: the warning is advice, not a failure
            with contextlib.suppress(Warning):
                self._warn_unplaced(len(waiting))

    def _warn_unplaced(self, waiting: int) -> None:
        warnings.warn(unplaced(self.stage, waiting, UNPLACED_SECONDS), RuntimeWarning, stacklevel=1)

    def _probe(self) -> None:
        """Ask each busy actor which unit it runs and for how long (answered in
        :meth:`_answer`): one question out per actor at a time."""
        with self._lock:
            for a in self._actors:
                if a.held and a.ready and not a.dead and not a.probing:
                    a.probing = True
                    self._refs[a.handle.current.remote()] = (a, _PROBE)

    def _probed(self, a: Actor, value: tuple[int, int]) -> None:
        """Kill ``a`` if its unit has run past the timeout: Ray then reports it dead,
        and :meth:`_died` posts its task as timed out, blaming that unit."""
        unit, ran_ns = value
        assert self.stage.timeout is not None
        with self._lock:
            a.probing = False
            late = unit >= 0 and ran_ns > self.stage.timeout * 1e9 and not a.dead
            if late:
                a.timed_out = unit
        if late:
            with contextlib.suppress(Exception):
                self._ray.kill(a.handle, no_restart=True)

    def _answer(self, ref: Any) -> None:
        """The reply ``ref`` has come: post its outcome (collector thread)."""
        ray = self._ray
        with self._lock:
            entry = self._refs.pop(ref, None)
            kept = self._forget(ref, entry)
        if entry is None:
            return
        a, task = entry
        try:
            value = ray.get(ref)
        except ray.exceptions.RayActorError:
            self._died(a)
            return
        except Exception as exc:  # Ray lost the reply (its object, its owner): run again
            if task is _PROBE:
                a.probing = False
                return
            if task is None:
                self._died(a)
                return
            self._lost(a, task, exc)
            return
        if task is None:
            self._became_ready(a, value)
            return
        if task is _PROBE:
            self._probed(a, value)
            return
        received = monotonic_ns()
        if kept is not None:  # a kept task's reply: (whether it kept its results, reply)
            kept_them, value = value
            kept = kept if kept_them else None
            self._budget.answered(kept=kept_them)  # type: ignore[union-attr]
        out = decode_reply(value, task.id, a.index, self._registry)
        out.place = a.node or None
        if kept is not None and self._budget is not None:  # sizes came: make handles
            n = sum(1 for r in out.results if r is not None)
            outputs = self._budget.keep(kept, total_bytes(out.results), n, self.stage.name)
            out.results = handles(outputs, out.results)
        if out.stamps:  # the actor's clock, placed on ours: it ended as the reply came
            shift = received - out.stamps[-1]
            out.stamps = [t + shift for t in out.stamps]
            if out.ends is not None:
                out.ends = [t + shift for t in out.ends]
        with self._lock:
            if a.held and a.held[0][0] is task:
                a.held.popleft()
            else:
                a.held = deque(h for h in a.held if h[0] is not task)

            if a.serving and sum(1 for b in self._actors if b.serving) > self.target:
                a.serving = False
            if not a.serving and not a.held:
                self._kill(a, graceful=True)
            self._dispatch()
        self.post(out)

    def _became_ready(self, a: Actor, value: Any) -> None:
        pid, node, error = value
        with self._lock:
            a.ready, a.pid, a.node = True, pid, node
            self._start_failures = 0
        if error is not None:
            exc = load_failed(self.stage.name, *error)
            with self._lock:
                self._broken = self._broken or exc
            self._died(a)

    def _lost(self, a: Actor, task: Task, exc: BaseException) -> None:
        with self._lock:
            a.held = deque(h for h in a.held if h[0] is not task)
            self._dispatch()
        self.post(not_run(task, a.index))

    def _died(self, a: Actor) -> None:
        """``a`` is gone: account for every task it held, and replace it."""
        with self._lock:
            if a.dead and not a.held:
                return
            at_start = not a.ready
            was_serving = a.serving
            self._kill(a, graceful=False)
            held = [task for task, _ in a.held]
            for _, r in a.held:
                self._forget(r, self._refs.pop(r, None))
            a.held.clear()
            if at_start and not self._closing:
                self._start_failures += 1
                if self._start_failures >= MAX_START_FAILURES and self._broken is None:
                    self._broken = start_failed(self.stage.name, MAX_START_FAILURES, a.pid)
            broken = self._broken
            if was_serving and not self._closing and broken is None:
                self._start_actor()
            pending: list[Task] = []
            if broken is not None:
                pending = [p[0] for p in self._pending]
                self._pending.clear()
            else:
                self._dispatch()
        self._wake.set()
        if broken is not None:
            for task in [*held, *pending]:
                self.post(broken_outcome(task, broken))
            return
        if not held:
            return
        first, rest = held[0], held[1:]
        if at_start:
            self.post(not_run(first, a.index))
        else:
            unit = a.timed_out  # known when it timed out; else unknown (-1)
            lost = LostWorker(a.pid, None, unit, timed_out=unit >= 0)
            self.post(Outcome(first.id, a.index, [], [], lost=lost))
        for task in rest:
            self.post(not_run(task, a.index))

    def _forget(self, ref: Any, entry: tuple[Actor, Task | None] | None) -> Any:
        """``ref``'s task is answered or lost: the outputs ref of a kept one (lock held)."""
        task = None if entry is None else entry[1]
        kept = self._kept.pop(ref, None) if isinstance(task, Task) else None
        if kept is not None and self._budget is not None:
            self._budget.returned(len(task.units))  # type: ignore[union-attr]
        return kept


__all__ = ["RayExecutor", "ray_options"]
