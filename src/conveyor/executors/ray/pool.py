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

A stage ``timeout`` for plain functions, and actors no node can place: :mod:`.watch`.
Results kept in the object store (:mod:`.handles`, :mod:`.budget`) and lost with their
node are made again by re-running the tasks that made them (:mod:`.lineage`,
:mod:`.remaking`): this pool runs such a task first, and holds back an outcome whose
inputs were lost until they are made again.

Durations come from the actor's clock and are placed on the driver's: a task's
stamps are shifted to end when its reply arrived, so a node whose monotonic clock
differs is still measured right.
"""

from __future__ import annotations

import contextlib
import threading
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
from conveyor.executors.processes.functions import check_picklable
from conveyor.executors.processes.messages import decode_reply, unpicklable_task
from conveyor.executors.processes.shm import dumps
from conveyor.executors.ray.actor import actor_args, actor_class, plain_registry
from conveyor.executors.ray.budget import KeptBytes, KeptStatistics, default_cap
from conveyor.executors.ray.connect import connect, import_ray
from conveyor.executors.ray.faults import broken_outcome, load_failed, start_failed
from conveyor.executors.ray.handles import (
    Outputs,
    encode_task,
    handles,
    keeps_results,
    resolve,
    total_bytes,
)
from conveyor.executors.ray.lineage import Lineage
from conveyor.executors.ray.options import ray_options
from conveyor.executors.ray.remaking import Recovery, Rerun, Reruns, Sent
from conveyor.executors.ray.roster import Actor
from conveyor.executors.ray.sampling import GPUS, GpuPolls
from conveyor.executors.ray.watch import PROBE, Watch

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

MAX_START_FAILURES = 3
WAIT_SECONDS = 0.05  # the collector's longest wait: how soon it sees new work or a stop
JOIN_SECONDS = 10.0  # how long shutdown waits for actors to close their instances


class RayExecutor(Watch, GpuPolls, Reruns, Executor):
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
        self._pending: deque[tuple[Task, bytes, list[Outputs]]] = deque()
        self._reruns: deque[Rerun] = deque()  # tasks run again for a lineage: first
        self._refs: dict[Any, tuple[Actor, Any]] = {}  # a Task, a Rerun, PROBE, None: ready()
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
        self._sent: dict[Any, Sent] = {}  # reply ref -> a task that keeps or reads handles
        self._reads_handles = False  # a producer hands this stage handles (hand_on)
        self._recovery = Recovery(stage.name, post)  # its lost inputs made again

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
        self._args = actor_args(s, self.cache)
        self._options = ray_options(s)
        if self._keep:
            cap = self._bytes_bound or default_cap(self._ray)
            self._budget = KeptBytes(cap, self._wake.set)
        self._open_gpus()  # a GPU stage: its actors' series, for the recording
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
            objects: list[Outputs]
            try:  # the plain pickle, in C; a handle refuses it: then the handles' own
                data, objects = dumps((task.id, task.units), self._registry)[0], []
            except TypeError:
                if not self._reads_handles:
                    raise
                data, objects = encode_task(task.id, task.units)
        except Exception as exc:
            self.post(unpicklable_task(task, exc, -1, self._registry))
            return
        with self._lock:
            self._pending.append((task, data, objects))
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
            reruns = list(self._reruns)
            self._reruns.clear()
        for task in pending:
            self.post(not_run(task))
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._last_gpus(actors)  # before they stop
        with self._lock:
            held = [task for a in self._actors for task, _ in a.held]
            for a in self._actors:
                a.held.clear()
            self._refs.clear()
            self._sent.clear()
            closing = [self._kill(a, graceful=not cancel) for a in actors]
        for t in [*reruns, *held]:  # the run is ending: every task gets its answer
            if isinstance(t, Rerun):
                t.fail("the run is ending")
            else:
                self.post(not_run(t))
        self._recovery.close()  # its held outcomes are posted
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
        while self._pending or self._reruns:
            room = [a for a in self._actors if a.serving and not a.dead and len(a.held) < depth]
            if not room:
                return
            a = min(room, key=lambda a: (len(a.held), not a.ready))
            if self._reruns:  # lost results made again: first, whatever the bytes cap
                box = self._reruns.popleft()
                ref, box.outputs = a.handle.run_kept.remote(box.data, box.refs, True)
                a.held.append((box, ref))
                self._refs[ref] = (a, box)
                continue
            if budget is not None and not budget.admits(len(self._pending[0][0].units)):
                return  # past the bytes cap: wait until consumers free some
            task, data, objects = self._pending.popleft()
            refs = [o.ref for o in objects]  # read now: one made again since is new
            kept = None
            if budget is not None and budget.probe():
                ref, kept = a.handle.run_kept.remote(data, refs)
                budget.sent(len(task.units))
            else:
                ref = a.handle.run.remote(data, refs)
            if kept is not None or objects:
                self._sent[ref] = Sent(data, objects, refs, kept)
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
            self._poll_gpus()
            self._warn_if_unplaced()

    def _answer(self, ref: Any) -> None:
        """The reply ``ref`` has come: post its outcome (collector thread)."""
        ray = self._ray
        with self._lock:
            entry = self._refs.pop(ref, None)
            sent = self._forget(ref, entry)
        if entry is None:
            return
        a, task = entry
        try:
            value = ray.get(ref)
        except ray.exceptions.RayActorError:
            self._died(a)
            return
        except Exception as exc:  # Ray lost the reply (its object, its owner): run again
            if task is PROBE:
                a.probing = False
                return
            if task is GPUS:
                a.gpus_asked = 0
                return
            if task is None:
                self._died(a)
                return
            self._lost(a, task, exc)
            return
        if task is None:
            self._became_ready(a, value)
            return
        if task is PROBE:
            self._probed(a, value)
            return
        if task is GPUS:
            self._gpus_answered(a, value)
            return
        received = monotonic_ns()
        kept = None if sent is None else sent.kept
        rerun = isinstance(task, Rerun)
        if rerun:  # a task run again: (True, reply), its outputs kept whatever their size
            value = value[1]
        elif kept is not None:  # a kept task's reply: (whether it kept its results, reply)
            kept_them, value = value
            kept = kept if kept_them else None
            self._budget.answered(kept=kept_them)  # type: ignore[union-attr]
        out = decode_reply(value, -1 if rerun else task.id, a.index, self._registry)
        out.place = a.node or None
        if kept is not None and sent is not None and self._budget is not None:
            n = sum(1 for r in out.results if r is not None)  # sizes came: make handles
            lineage = Lineage(self, sent.data, sent.objects, out.results)
            nbytes = total_bytes(out.results)
            outputs = self._budget.keep(kept, nbytes, n, self.stage.name, lineage, a.node)
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
        if rerun:
            task.finish(out)
        elif not self._recovery.held_back(out, sent):  # else posted once inputs are made
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

    def _lost(self, a: Actor, task: Task | Rerun, exc: BaseException) -> None:
        with self._lock:
            a.held = deque(h for h in a.held if h[0] is not task)
            self._dispatch()
        if isinstance(task, Rerun):
            task.fail(f"its reply was lost ({type(exc).__name__})")
        else:
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
            pending: list[Task | Rerun] = []
            if broken is not None:
                pending = [p[0] for p in self._pending] + list(self._reruns)
                self._pending.clear()
                self._reruns.clear()
            else:
                self._dispatch()
        self._wake.set()
        for box in [t for t in [*held, *pending] if isinstance(t, Rerun)]:
            box.fail(f"its actor died ({broken})" if broken else "its actor died")
        if broken is not None:
            for task in [*held, *pending]:
                if isinstance(task, Task):
                    self.post(broken_outcome(task, broken))
            return
        if not held:
            return
        first, rest = held[0], held[1:]
        if isinstance(first, Rerun):  # it ran: the tasks behind it did not
            pass
        elif at_start:
            self.post(not_run(first, a.index))
        else:
            unit = a.timed_out  # known when it timed out; else unknown (-1)
            lost = LostWorker(a.pid, None, unit, timed_out=unit >= 0)
            self.post(Outcome(first.id, a.index, [], [], lost=lost))
        for task in rest:
            if isinstance(task, Task):
                self.post(not_run(task, a.index))

    def _forget(self, ref: Any, entry: tuple[Actor, Any] | None) -> Sent | None:
        """``ref``'s task is answered or lost: what was sent with it, if it keeps or
        reads handles (lock held)."""
        sent = self._sent.pop(ref, None)
        if sent is not None and sent.kept is not None and self._budget is not None:
            assert entry is not None
            self._budget.returned(len(entry[1].units))
        return sent


__all__ = ["RayExecutor", "ray_options"]
