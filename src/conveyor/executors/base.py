"""The executor contract: where a stage's workers run, and what they promise.

An executor owns one stage's workers for one run. The scheduler hands it tasks
(:class:`Task`, a chunk of units) and gets back one :class:`Outcome` per task
through ``post``, from whatever thread the worker runs on. Everything else
(queues, backpressure, ordering, retries, dead letters) lives once in the
scheduler. The contract, which every executor must keep and
``tests/test_executor_contract.py`` attacks:

1. **Exactly one outcome per submitted task, on every path.** Whatever the
   function raises (any ``BaseException``), whatever cannot be pickled on the
   way out or back, whenever a worker dies (before it is ready, mid-task,
   between tasks) and however the pool is resized. A unit whose result is lost
   with its worker is reported not run (``Outcome.results`` stops before it) so
   the scheduler can run it again; a unit that failed is named in
   ``Outcome.failures``. An executor that ``runs_in_caller`` may instead let an
   exception propagate out of :meth:`Executor.submit`, which ends the run.
2. **A call that succeeded is never repeated by the executor.** Results of the
   units of a task that succeeded are reported even when another unit of the same
   task failed (async units run concurrently). Only a worker that dies mid-task
   loses the results it had not yet sent: those units run again (at least once
   under worker death), and the statistics count every call.
3. **submit never blocks.** It queues the task and returns; the scheduler sends at
   most ``slots * (1 + traits.in_flight_per_worker)`` tasks at once.
4. **resize keeps a target count.** Growing starts workers until that many are
   live; shrinking lets the surplus retire after their current task. No stop
   tokens, so any sequence of resizes converges on the last target.
5. **alive() tells the truth.** The number of workers that can still answer a
   task (starting ones count; dead, retired and abandoned ones do not; an executor
   that fails every task itself, being broken, counts as one). With work in flight
   and ``alive() == 0`` at two wake-ups in a row the scheduler raises
   :class:`~conveyor.StallError` naming the stage and its items, instead of waiting
   forever.
6. **start and shutdown are safe.** All state is made in ``__init__``;
   ``shutdown`` may be called before ``start``, twice, or after a failed start.

Executors register under a name (``Stage(executor=NAME)``): a package declares
them as entry points in the ``conveyor.executors`` group (conveyor's own three and
``ray`` are declared so too), or a program calls :func:`register`. The scheduler
and the report know none by name, only their :class:`Traits`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import threading
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

__all__ = [
    "NO_INITIAL",
    "CacheSpec",
    "Executor",
    "Failure",
    "LostWorker",
    "Outcome",
    "Post",
    "RunContext",
    "Task",
    "Traits",
    "executor_class",
    "executor_names",
    "executor_traits",
    "is_stateful",
    "materialise",
    "not_run",
    "register",
]

Key = tuple[Any, ...]


@dataclasses.dataclass
class Task:
    """A chunk of units for one stage, as the scheduler dispatched it."""

    id: int
    stage: str
    units: list[Any]  # what the function is called on, one call per unit
    keys: list[Key]  # one per unit (a batch's first key)
    batch_keys: list[list[Key]] | None = None  # batch/collect: each unit's item keys
    reserved: int = 0  # downstream queue places held for this task's results
    dispatched_ns: int = 0


@dataclasses.dataclass(frozen=True)
class Failure:
    """Unit ``unit`` of a task failed with ``error``.

    ``fatal`` failures end the run whatever the stage's retry and skip policy: the
    function raised a ``BaseException`` that is not an ``Exception`` (``SystemExit``,
    ``KeyboardInterrupt``, ``asyncio.CancelledError``), or the executor cannot run
    the stage at all (its workers die before they start)."""

    unit: int
    error: BaseException
    traceback: str | None = None
    fatal: bool = False


@dataclasses.dataclass(frozen=True)
class LostWorker:
    """The worker stopped mid-task: its process died, or it ran past the stage's timeout
    and was killed (a process) or abandoned (a thread). Results it had not sent are lost.

    ``unit_index`` is the unit it was running (-1: unknown, or none had started)."""

    pid: int | None
    exitcode: int | None
    unit_index: int
    timed_out: bool = False


@dataclasses.dataclass
class Outcome:
    """What came back from a task: the fate of each of its units.

    Unit i *succeeded* when ``i < len(results)`` and no failure names it (then
    ``results[i]`` is its return value, a flat_map's iterable already made a
    list); it *failed* when ``failures`` names it; otherwise it *did not run*, or
    its result was lost with its worker, and the scheduler runs it again at no
    cost of an attempt. ``stamps`` holds n + 1 monotonic times for the first n
    units, which ran one after the other: unit i ran from ``stamps[i]`` to
    ``stamps[i + 1]``. Async units overlap: then ``stamps`` are their starts plus
    the last end, and ``ends[i]`` is when unit i ended. ``lost`` is set when the worker died or timed out mid-task: the unit
    it was running fails with :class:`~conveyor.WorkerLostError` or
    :class:`TimeoutError`.
    """

    task_id: int
    worker: int
    results: list[Any]
    stamps: list[int]
    failures: list[Failure] = dataclasses.field(default_factory=list)
    lost: LostWorker | None = None
    hits: list[int] = dataclasses.field(default_factory=list)  # units answered by the cache
    uncached: str | None = None  # what the cache could not do, and the fix: warned once
    ends: list[int] | None = None  # units that overlap (async): when each one ended
    place: str | None = None  # the node the worker ran on (a cluster's); None: this machine
    # results of other stages made again for this task (lost with their node, or freed
    # and needed again by a re-run): (stage, the node they were lost with or "", count)
    remade: list[tuple[str, str, int]] | None = None

    @property
    def calls(self) -> int:
        """How many times the function was called for this task (cache hits excluded)."""
        return max(0, len(self.stamps) - 1) - len(self.hits)


def materialise(r: Any) -> list[Any]:
    """A flat_map call's result as the list its outcome carries (a TypeError saying what
    to return when it is not an iterable of results)."""
    if isinstance(r, (str, bytes)) or not isinstance(r, Iterable):
        raise TypeError(
            f"a flat_map stage must return an iterable of results (a list, a generator), "
            f"got {type(r).__name__}; return [value] for one result, [] for none"
        )
    return list(r)


def not_run(task: Task, worker: int = -1) -> Outcome:
    """The outcome of a task none of whose units ran: they all run again."""
    return Outcome(task.id, worker, [], [])


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """What a worker needs to consult a stage's cache: picklable, made by the driver."""

    root: str
    stage: str  # the key's qualified stage name: "<pipeline>/<stage>"
    code: str  # fingerprint of the stage's function (and cache_key, cache_version)
    key: Callable[[Any], Any] | None = None  # the stage's cache_key: what identifies an input
    check: float = 0.0  # the share of hits recomputed and compared (cache_check)


@dataclasses.dataclass(frozen=True)
class Traits:
    """What the scheduler needs to know about an executor, instead of its name.

    ``target_task_ns``: how long one task should last, long enough to amortise the
    hand-off (microseconds for threads, a few hundred for processes), short enough
    to keep latency low and work spread over the workers.
    ``in_flight_per_worker``: tasks sent to a worker beyond the one it runs, so it
    starts the next at once instead of waiting for the scheduler's round trip.
    ``runs_in_caller``: ``submit`` runs the task in the caller's thread before it
    returns (deterministic runs, no timeouts, nothing to resize or stall).
    ``shares_memory``: workers see the driver's objects; nothing is pickled.
    ``max_units``: the most units one task may carry when the clock does not decide
    (sync tasks are never sized from the clock, to stay deterministic).
    ``host_cores``: each worker is a process of this machine that needs one of its
    cores (the report weighs such workers against the machine's CPUs; a cluster's
    workers do not count against them).
    ``async_overlap``: a worker of an ``async def`` stage runs several tasks at once,
    up to the stage's ``concurrency`` calls in flight across them, so the scheduler
    keeps that many tasks in flight per worker instead of widening each task.
    """

    target_task_ns: int
    in_flight_per_worker: int = 1
    runs_in_caller: bool = False
    shares_memory: bool = True
    max_units: int | None = None
    host_cores: bool = False
    async_overlap: bool = False


class NoInitial:
    """The ``initial`` of a stage that is not a fold."""

    def __repr__(self) -> str:
        return "NO_INITIAL"


NO_INITIAL: Any = NoInitial()


def is_stateful(fn: Any) -> bool:
    """Whether a stage's ``fn`` is a class (or a partial of one): each worker makes one
    instance and calls it (see :mod:`conveyor.executors.calls`)."""
    if isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.isclass(fn)


Post = Callable[[Outcome], None]
T = TypeVar("T")


class RunContext:
    """What the executors of one run share: its id, and resources made once per run
    (process stages share one shared-memory registry), closed once every executor of the
    run has stopped."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._shared: dict[str, Any] = {}
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def shared(self, key: str, make: Callable[[], T], close: Callable[[T], None]) -> T:
        """The run's resource ``key``, made by ``make()`` on first use; ``close(resource)``
        runs when the run ends."""
        with self._lock:
            if key not in self._shared:
                resource = make()
                self._shared[key] = resource
                self._closers.append(lambda: close(resource))
            return self._shared[key]

    def close(self) -> None:
        """Close every resource (each one even if another's close raised); idempotent."""
        with self._lock:
            closers, self._closers = self._closers, []
        errors: list[BaseException] = []
        for closer in closers:
            try:
                closer()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


class Executor:
    """Base class: run ``stage``'s tasks and post their outcomes (see the module docstring).

    Subclasses set ``traits`` and override :meth:`submit`, and where they have workers
    of their own :meth:`start`, :meth:`resize`, :meth:`alive` and :meth:`shutdown`.
    """

    traits: ClassVar[Traits]

    def __init__(
        self,
        stage: Stage,
        post: Post,
        *,
        cache: CacheSpec | None = None,
        context: RunContext | None = None,
    ) -> None:
        self.stage = stage
        self.post = post
        self.cache = cache
        self.context = context or RunContext("-")
        self.target = stage.workers

    @classmethod
    def check(cls, stage: Stage, *, pipeline_built: bool) -> None:
        """Raise :class:`~conveyor.PipelineError` if ``stage`` cannot run here: called when
        the stage is made and again when its pipeline is built. By default every stage can."""

    def start(self) -> None:
        """Start the workers; called once, before any ``submit``."""

    def submit(self, task: Task) -> None:
        """Queue ``task`` for a worker and return at once; its outcome comes through ``post``."""
        raise NotImplementedError(f"{type(self).__name__} must implement submit()")

    def resize(self, workers: int) -> None:
        """Aim for ``workers`` live workers from now on (see the module docstring)."""
        self.target = workers

    def alive(self) -> int:
        """Workers that can still finish a task."""
        return self.target

    def shutdown(self, *, cancel: bool) -> None:
        """Stop every worker and wait for them. With ``cancel``, abandon running work:
        threads stop before their next unit, processes are terminated. Idempotent."""

    def pids(self) -> list[int]:
        """Process ids of live worker processes (none for in-process executors)."""
        return []

    def hand_on(self, consumers: Sequence[Executor], *, bytes_bound: int | None) -> None:
        """Told once, before :meth:`start`, the executors this stage's results go to
        (none: they must come back as values, to the run's output or a fused chain) and
        the bytes bound of their queues (None: unbounded in bytes). An executor whose workers can leave results where they were made, as
        handles that every consumer's workers read, may do so; by default results come
        back as values."""

    def resolve(self, values: list[Any]) -> list[Any]:
        """``values`` (units of this stage's tasks) as plain values the driver can keep:
        called where they leave the executors (a dead-lettered item). Handles another
        executor left in place are fetched; by default values are already plain."""
        return values


# --- the registry -------------------------------------------------------------------

ENTRY_POINTS = "conveyor.executors"  # the entry-point group executors register in
# conveyor's own, also declared as entry points; listed here so that a source tree
# that was never installed still has them.
_registry: dict[str, type[Executor] | str] = {
    "sync": "conveyor.executors.sync:SyncExecutor",
    "threads": "conveyor.executors.threads:ThreadExecutor",
    "processes": "conveyor.executors.processes.pool:ProcessExecutor",
    "ray": "conveyor.executors.ray:RayExecutor",
}
_registry_lock = threading.RLock()  # importing an executor may register others
_discovered = False


def _discover() -> None:
    """Add the executors installed packages declare (once; lock held). A name given to
    :func:`register` first wins over an entry point of the same name."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in metadata.entry_points(group=ENTRY_POINTS):
        _registry.setdefault(ep.name, ep.value)


def register(name: str, executor: type[Executor] | str) -> None:
    """Make ``Stage(executor=name)`` run on ``executor``: a subclass of :class:`Executor`,
    or ``"module:Class"`` imported when first used. A package does the same with an
    entry point: ``[project.entry-points."conveyor.executors"] name = "module:Class"``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"executor name {name!r}: give an identifier, e.g. 'ray'")
    with _registry_lock:
        _discover()
        _registry[name] = executor


def executor_names() -> tuple[str, ...]:
    """The names stages may give as ``executor=``."""
    with _registry_lock:
        _discover()
        return tuple(_registry)


def executor_class(name: str) -> type[Executor]:
    """The executor registered under ``name``; KeyError naming the known ones."""
    with _registry_lock:
        _discover()
        entry = _registry.get(name)
        if entry is None:
            raise KeyError(f"no executor named {name!r} (known: {', '.join(_registry)})")
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            _registry[name] = entry
    if not (isinstance(entry, type) and issubclass(entry, Executor)):
        raise TypeError(f"executor {name!r} is {entry!r}, not a subclass of Executor")
    return entry


def executor_traits(name: str) -> Traits | None:
    """The traits of the executor registered under ``name``, or None when none is (a
    recorded run of an executor this installation lacks)."""
    try:
        return executor_class(name).traits
    except (KeyError, ImportError):
        return None
