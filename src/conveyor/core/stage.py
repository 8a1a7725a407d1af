"""Stages: a named function plus the policy that says how it runs.

A stage is a value. Build one with the :func:`stage` decorator or the :class:`Stage`
constructor; both validate at once, so a mistake is reported where it was made::

    @stage(workers=4, executor="processes")
    def parse(line: str) -> dict: ...

    embed = Stage(embed_rows, kind="batch", size=32, split=True)

Kinds (what one call of the function sees and returns):

    map       one item in, one result out
    flat_map  one item in, an iterable of results out (zero drops the item)
    filter    one item in, a truth value out: the item goes on, unchanged and under
              its own key, only when it is true
    batch     a list of up to ``size`` items in, one result out; with ``split=True``
              a list of len(batch) results out, each going on as its own item
    collect   every item of the run in one list, one result out: a barrier
    fold      ``fn(acc, item) -> acc`` from ``initial``, one result out when no item
              can come any more; chunks fold in parallel and their partial results
              are merged with ``combine(a, b)``, so only the state is held

A stage's function may be a class (or ``functools.partial`` of one): each worker
makes one instance on its first call and calls it per item or batch; the
instance's ``close()``, if any, runs when the worker stops. That is how a model, a
client or a connection is set up once per worker.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, overload

from conveyor.core.cacheopts import cache_rule
from conveyor.core.policy import Retry, as_retry
from conveyor.core.resources import Resources, resources_of
from conveyor.errors import PipelineError
from conveyor.executors.base import (
    NO_INITIAL,
    CacheSpec,
    executor_class,
    executor_names,
    is_stateful,
)

Kind = Literal["map", "flat_map", "filter", "batch", "collect", "fold"]
ExecutorName = str  # a registered executor: "sync", "threads", "processes", "ray", a plug-in
OnError = Literal["fail", "skip"]

KINDS: tuple[str, ...] = ("map", "flat_map", "filter", "batch", "collect", "fold")

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Stage:
    """A pipeline stage: ``fn`` applied to the items that reach it, under a policy.

    Args:
        fn: the function; ``async def`` functions run on an event loop with up to
            ``concurrency`` calls in flight per worker.
        name: unique within a pipeline; defaults to the function's name.
        kind: ``"map"``, ``"flat_map"``, ``"filter"``, ``"batch"``, ``"collect"`` or
            ``"fold"`` (module docstring).
        executor: ``"sync"`` (in the caller: deterministic, for tests and debugging),
            ``"threads"``, ``"processes"`` (spawned; the function must be picklable)
            or ``"ray"`` (actors on a Ray cluster), or one a package registers.
        workers: how many calls of this stage run at the same time.
        size: items per micro-batch; required for ``kind="batch"``.
        split: for ``kind="batch"``: the function returns one result per input item,
            and each result continues as its own item, under its input's key.
        capacity: bound of this stage's input queue (items); ``None`` takes the
            pipeline's default.
        concurrency: for ``async def`` functions, calls in flight per worker.
        retry: retries of a failed call: a number (``retry=3``: three retries, four
            calls in all, as ``Retry()``) or a :class:`Retry` policy (retries,
            backoff with jitter, which exceptions).
        on_error: what happens to an item whose last attempt failed: ``"fail"``
            stops the run (the default); ``"skip"`` moves it to the dead letters
            (an ``Instrument.dead_lettered`` event, a row in the run store) and
            the run goes on.
        timeout: seconds one call may take. A process worker past it is killed and
            replaced; a thread past it is abandoned and replaced (Python cannot
            interrupt a thread); an ``async`` call is cancelled. The call then
            counts as a failure with :class:`TimeoutError`. Not for ``sync``.
        cache: look results up by content before calling the function, and store
            them after (see ``conveyor.cache``); resumed runs skip cached work. An
            ``async def`` stage looks a task's units up first and runs the misses
            together on its event loop.
            ``True`` uses ``$CONVEYOR_CACHE``, else ``.conveyor/cache`` in the
            nearest folder upwards that has a ``.conveyor/``, else
            ``./.conveyor/cache``; a path names another cache folder.
        max_wait: for ``kind="batch"``: seconds the oldest queued item may wait for
            its batch to fill; then the partial batch goes (a slow stream never
            holds an item longer).
        capacity_bytes: a bound in bytes on this stage's input queue, besides
            ``capacity`` in items, from the measured size of the items that pass
            (at least one item always fits).
        initial: for ``kind="fold"``: the fold's starting value (copied per chunk).
        combine: for ``kind="fold"``: ``combine(a, b)`` merges two partial results;
            it must be associative and commutative (chunks finish in any order).
        join: for a stage with several predecessors: each call sees one item's
            results from its predecessors, ``{predecessor name: result}``, instead
            of each result on its own. Results meet by item key; an item that a
            branch filtered out or dead-lettered arrives with that name missing.
        cache_key, cache_version, cache_check, cache_required: how a cached stage
            keys, versions, audits and does without its cache
            (:mod:`conveyor.core.cacheopts`).
        init: a function of no arguments that each worker calls once, before its
            first call of ``fn`` (as part of that first unit, so an error in it fails
            the unit): set up what a plain function needs per worker (a seed, a
            client in a global, logging). For state the function carries, write the
            stage as a class: its ``__init__`` runs once per worker.
        resources: what one worker needs, ``{"cpus": 1, "gpus": 0.5, "memory": "2GB"}``
            and named resources a cluster's nodes advertise (``{"node2": 1}``); or
            the same as ``cpus=``, ``gpus=``, ``memory=``. Process workers get their
            GPUs through ``CUDA_VISIBLE_DEVICES``; Ray places each worker where they
            are free (:mod:`conveyor.core.resources`).
        cpus, gpus, memory: the same as ``resources``' keys, one by one (``gpus=0.5``).
    """

    fn: Callable[..., Any]
    name: str = ""
    kind: Kind = "map"
    executor: ExecutorName = "threads"
    workers: int = 1
    size: int | None = None
    split: bool = False
    capacity: int | None = None
    concurrency: int = 1
    retry: Retry | int | None = None
    on_error: OnError = "fail"
    timeout: float | None = None
    cache: bool | str | os.PathLike[str] = False
    max_wait: float | None = None
    capacity_bytes: int | None = None
    initial: Any = NO_INITIAL
    combine: Callable[[Any, Any], Any] | None = None
    join: bool = False
    cache_key: Callable[[Any], Any] | None = None
    cache_version: str | int | None = None
    cache_check: float = 0.0
    cache_required: bool = True
    init: Callable[[], Any] | None = None
    resources: Mapping[str, Any] | Resources | None = None
    is_async: bool = dataclasses.field(init=False, repr=False, compare=False, default=False)
    cpus: dataclasses.InitVar[float | None] = None
    gpus: dataclasses.InitVar[float | None] = None
    memory: dataclasses.InitVar[int | str | None] = None

    def __post_init__(
        self, cpus: float | None, gpus: float | None, memory: int | str | None
    ) -> None:
        if not callable(self.fn):
            raise PipelineError(
                f"stage {self.name or '?'!r}: {self.fn!r} is not callable; "
                "pass a function (or an object with __call__)",
                stage=self.name or None,
            )
        if not self.name:
            object.__setattr__(self, "name", _default_name(self.fn))
        # Whether the function is a coroutine function (``async def``).
        is_async = inspect.iscoroutinefunction(_called(self.fn))
        object.__setattr__(self, "is_async", is_async)
        try:
            object.__setattr__(self, "retry", as_retry(self.retry))
        except PipelineError as exc:
            raise PipelineError(f"stage {self.name!r}: {exc}", stage=self.name) from None
        need = resources_of(self.name, self.resources, cpus=cpus, gpus=gpus, memory=memory)
        object.__setattr__(self, "resources", need)
        _check_policy(self)
        _check_arity(self)
        executor_class(self.executor).check(self, pipeline_built=False)

    @property
    def needs(self) -> Resources:
        """What one worker needs (``resources``, checked)."""
        assert isinstance(self.resources, Resources)
        return self.resources

    def with_options(self, **changes: Any) -> Stage:
        """A copy of this stage with some options changed (validated again); ``cpus``,
        ``gpus`` and ``memory`` change those of its resources."""
        given = {k: changes.pop(k) for k in ("cpus", "gpus", "memory") if k in changes}
        if given:
            base = changes.get("resources", self.needs)
            changes["resources"] = {**resources_of(self.name, base).as_dict(), **given}
        return dataclasses.replace(self, **changes)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # A stage stays usable as the plain function it wraps.
        return self.fn(*args, **kwargs)


@overload
def stage(fn: F, /) -> Stage: ...


@overload
def stage(
    fn: None = None,
    /,
    *,
    name: str = "",
    kind: Kind = "map",
    executor: ExecutorName = "threads",
    workers: int = 1,
    size: int | None = None,
    split: bool = False,
    capacity: int | None = None,
    concurrency: int = 1,
    retry: Retry | int | None = None,
    on_error: OnError = "fail",
    timeout: float | None = None,
    cache: bool | str | os.PathLike[str] = False,
    max_wait: float | None = None,
    capacity_bytes: int | None = None,
    initial: Any = NO_INITIAL,
    combine: Callable[[Any, Any], Any] | None = None,
    join: bool = False,
    cache_key: Callable[[Any], Any] | None = None,
    cache_version: str | int | None = None,
    cache_check: float = 0.0,
    cache_required: bool = True,
    init: Callable[[], Any] | None = None,
    resources: Mapping[str, Any] | None = None,
    cpus: float | None = None,
    gpus: float | None = None,
    memory: int | str | None = None,
) -> Callable[[F], Stage]: ...


def stage(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str = "",
    kind: Kind = "map",
    executor: ExecutorName = "threads",
    workers: int = 1,
    size: int | None = None,
    split: bool = False,
    capacity: int | None = None,
    concurrency: int = 1,
    retry: Retry | int | None = None,
    on_error: OnError = "fail",
    timeout: float | None = None,
    cache: bool | str | os.PathLike[str] = False,
    max_wait: float | None = None,
    capacity_bytes: int | None = None,
    initial: Any = NO_INITIAL,
    combine: Callable[[Any, Any], Any] | None = None,
    join: bool = False,
    cache_key: Callable[[Any], Any] | None = None,
    cache_version: str | int | None = None,
    cache_check: float = 0.0,
    cache_required: bool = True,
    init: Callable[[], Any] | None = None,
    resources: Mapping[str, Any] | None = None,
    cpus: float | None = None,
    gpus: float | None = None,
    memory: int | str | None = None,
) -> Stage | Callable[[Callable[..., Any]], Stage]:
    """Make a :class:`Stage` from a function: bare (``@stage``), with options
    (``@stage(workers=4)``), or called on a function (``stage(parse, workers=4)``).

    Examples::

        @cv.stage
        def parse(line): return json.loads(line)

        @cv.stage(executor="processes", workers=4, retry=3, on_error="skip")
        def embed(doc): ...                          # 3 retries, then a dead letter

        @cv.stage(kind="batch", size=64, max_wait=0.05)
        def infer(batch): return model(batch)        # a list in, a list out

        fetch = cv.stage(fetch_url, workers=32, timeout=10, cache=True)

    The stage is checked when it is made: a bad option, or a function a process
    worker cannot receive, is a :class:`~conveyor.PipelineError` naming the stage
    and the fix. The options are :class:`Stage`'s (``fn`` is the function):
    """
    options: dict[str, Any] = dict(
        name=name,
        kind=kind,
        executor=executor,
        workers=workers,
        size=size,
        split=split,
        capacity=capacity,
        concurrency=concurrency,
        retry=retry,
        on_error=on_error,
        timeout=timeout,
        cache=cache,
        max_wait=max_wait,
        capacity_bytes=capacity_bytes,
        initial=initial,
        combine=combine,
        join=join,
        cache_key=cache_key,
        cache_version=cache_version,
        cache_check=cache_check,
        cache_required=cache_required,
        init=init,
        resources=resources,
        cpus=cpus,
        gpus=gpus,
        memory=memory,
    )
    if fn is not None:
        return Stage(fn, **options)

    def decorate(f: Callable[..., Any]) -> Stage:
        return Stage(f, **options)

    return decorate


def cache_spec(stage: Stage, pipeline: str) -> CacheSpec | None:
    """Where and under which key a cached stage looks its results up (CacheError if its
    cache folder cannot be used; None, with a CacheWarning, to run uncached)."""
    if not stage.cache:
        return None
    from conveyor.cache._engine import cache_spec as spec

    return spec(stage, pipeline)


def _called(fn: Any) -> Any:
    """What a call of the stage runs: the function, or a class stage's ``__call__``."""
    if isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isclass(fn):
        return fn.__call__
    if not inspect.isroutine(fn):
        return type(fn).__call__
    return fn


def _default_name(fn: Callable[..., Any]) -> str:
    if isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else name


def _check_policy(s: Stage) -> None:
    def fail(rule: str) -> None:
        raise PipelineError(f"stage {s.name!r}: {rule}", stage=s.name)

    if s.kind not in KINDS:
        fail(f"kind={s.kind!r} is not one of {', '.join(KINDS)}")
    if s.executor not in executor_names():
        fail(f"executor={s.executor!r} is not one of {', '.join(executor_names())}")
    if not isinstance(s.workers, int) or s.workers < 1:
        fail(f"workers={s.workers!r}; give a whole number of at least 1")
    if not isinstance(s.concurrency, int) or s.concurrency < 1:
        fail(f"concurrency={s.concurrency!r}; give a whole number of at least 1")
    if s.init is not None and not callable(s.init):
        fail(f"init={s.init!r} is not callable; give a function of no arguments")
    if s.capacity is not None and (not isinstance(s.capacity, int) or s.capacity < 1):
        fail(f"capacity={s.capacity!r}; give a whole number of at least 1, or None")
    if s.kind == "batch":
        if not isinstance(s.size, int) or s.size < 1:
            fail(
                f"kind='batch' needs size, the items per batch (got size={s.size!r}); e.g. size=32"
            )
    elif s.size is not None:
        fail(f"size={s.size} is only for kind='batch' (this stage is kind={s.kind!r})")
    if s.split and s.kind != "batch":
        fail(f"split=True is only for kind='batch' (this stage is kind={s.kind!r})")
    if s.on_error not in ("fail", "skip"):
        fail(
            f"on_error={s.on_error!r}; give 'fail' (stop the run) or 'skip' (dead-letter the item)"
        )
    if s.timeout is not None:
        if isinstance(s.timeout, bool) or not isinstance(s.timeout, (int, float)) or s.timeout <= 0:
            fail(f"timeout={s.timeout!r}; give the seconds one call may take, e.g. timeout=30")
        if executor_class(s.executor).traits.runs_in_caller:
            fail(
                f"timeout needs an executor with workers of its own ('threads', 'processes'), "
                f"not {s.executor!r}: a call running in the caller cannot be interrupted"
            )
    if (rule := cache_rule(s)) is not None:
        fail(rule)
    if s.kind == "collect" and s.workers != 1:
        fail(f"kind='collect' runs once over every item; workers={s.workers} has no meaning, use 1")
    _check_stream_options(s, fail)


def _check_stream_options(s: Stage, fail: Callable[[str], None]) -> None:
    """max_wait, capacity_bytes, fold's initial and combine, join."""
    if s.max_wait is not None:
        if s.kind != "batch":
            fail(f"max_wait is only for kind='batch' (this stage is kind={s.kind!r})")
        if isinstance(s.max_wait, bool) or not isinstance(s.max_wait, (int, float)):
            fail(f"max_wait={s.max_wait!r}; give seconds, e.g. max_wait=0.01")
        if not s.max_wait >= 0:
            fail(f"max_wait={s.max_wait!r}; give seconds of at least 0, e.g. max_wait=0.01")
    if s.capacity_bytes is not None and (
        isinstance(s.capacity_bytes, bool)
        or not isinstance(s.capacity_bytes, int)
        or s.capacity_bytes < 1
    ):
        fail(f"capacity_bytes={s.capacity_bytes!r}; give a whole number of bytes, e.g. 64 << 20")
    if s.kind == "fold":
        if s.initial is NO_INITIAL:
            fail("kind='fold' needs initial, the fold's starting value, e.g. initial=0")
        if not callable(s.combine):
            fail(
                "kind='fold' needs combine(a, b), which merges two partial results "
                "(e.g. combine=operator.add): chunks are folded in parallel"
            )
        if s.cache:
            fail("cache=True is not supported for kind='fold'; cache the stage before it")
        if s.is_async:
            fail("kind='fold' needs a plain function fn(acc, item), not an async def one")
    else:
        if s.initial is not NO_INITIAL:
            fail(f"initial is only for kind='fold' (this stage is kind={s.kind!r})")
        if s.combine is not None:
            fail(f"combine is only for kind='fold' (this stage is kind={s.kind!r})")
    if s.join not in (True, False):
        fail(f"join={s.join!r}; give True or False")
    if s.join and s.kind not in ("map", "flat_map", "filter"):
        fail(f"join=True is for map, flat_map and filter stages (this stage is kind={s.kind!r})")
    if is_stateful(s.fn):
        try:
            inspect.signature(s.fn).bind()
        except TypeError as exc:
            fail(
                f"its class is made once per worker with no arguments, but {exc}; pass them "
                "with functools.partial(YourClass, ...)"
            )
        except ValueError:
            pass  # no signature to check: it fails at run time instead
        if s.cache:
            fail(
                "cache=True is not supported for a class stage (its instance's state is not "
                "part of the cache key); cache a function stage instead"
            )


def _check_arity(s: Stage) -> None:
    """Every kind calls the function with exactly one positional argument (a fold with
    two: the accumulator and the item); a class stage's ``__call__`` likewise."""
    try:
        if is_stateful(s.fn):
            cls: Any = s.fn.func if isinstance(s.fn, functools.partial) else s.fn
            sig = inspect.signature(cls.__call__)
            sig = sig.replace(parameters=list(sig.parameters.values())[1:])  # self
        else:
            sig = inspect.signature(s.fn)
    except (TypeError, ValueError):
        return  # some builtins have no signature; they fail at run time instead
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    var_positional = any(p.kind is p.VAR_POSITIONAL for p in params)
    required_kw = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    what = {
        "map": "one item",
        "flat_map": "one item",
        "filter": "one item",
        "batch": "one list (the batch)",
        "collect": "one list (every item)",
        "fold": "two arguments (the accumulator, then one item)",
    }[s.kind]
    wanted = 2 if s.kind == "fold" else 1
    too_few = len(positional) < wanted and not var_positional
    if len(required) > wanted or too_few or required_kw:
        shown = f"{getattr(s.fn, '__name__', s.fn)!s}{sig}"
        raise PipelineError(
            f"stage {s.name!r}: a {s.kind} stage calls its function with {what}, "
            f"but {shown} needs {len(required)} positional argument(s)"
            + (f" and keyword(s) {required_kw}" if required_kw else "")
            + f"; give the function exactly {('one', 'two')[wanted - 1]} required parameter"
            + ("s " if wanted > 1 else " ")
            + "(bind the others with functools.partial)",
            stage=s.name,
        )


# help(stage) lists every option, in the words of Stage's own docstring
_args = (Stage.__doc__ or "").split("    Args:\n", 1)
if stage.__doc__ is not None and len(_args) == 2:
    stage.__doc__ += "\n    Args:\n" + _args[1]
