"""Stages: a named function plus the policy that says how it runs.

A stage is a value. Build one with the :func:`stage` decorator or the :class:`Stage`
constructor; both validate at once, so a mistake is reported where it was made::

    @stage(workers=4, executor="processes")
    def parse(line: str) -> dict: ...

    embed = Stage(embed_rows, kind="batch", size=32, split=True)

Kinds (what one call of the function sees and returns):

    map       one item in, one result out
    flat_map  one item in, an iterable of results out (zero drops the item)
    batch     a list of up to ``size`` items in, one result out; with ``split=True``
              a list of len(batch) results out, each going on as its own item
    collect   every item of the run in one list, one result out: a barrier
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar, overload

from conveyor.core.policy import Retry, as_retry
from conveyor.errors import PipelineError

Kind = Literal["map", "flat_map", "batch", "collect"]
ExecutorName = Literal["sync", "threads", "processes"]
OnError = Literal["fail", "skip"]

KINDS: tuple[str, ...] = ("map", "flat_map", "batch", "collect")
EXECUTORS: tuple[str, ...] = ("sync", "threads", "processes")

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Stage:
    """A pipeline stage: ``fn`` applied to the items that reach it, under a policy.

    Args:
        fn: the function; ``async def`` functions run on an event loop with up to
            ``concurrency`` calls in flight per worker.
        name: unique within a pipeline; defaults to the function's name.
        kind: ``"map"``, ``"flat_map"``, ``"batch"`` or ``"collect"`` (module docstring).
        executor: ``"sync"`` (in the caller: deterministic, for tests and debugging),
            ``"threads"`` or ``"processes"`` (spawned; the function must be picklable).
        workers: how many calls of this stage run at the same time.
        size: items per micro-batch; required for ``kind="batch"``.
        split: for ``kind="batch"``: the function returns one result per input item,
            and each result continues as its own item, under its input's key.
        capacity: bound of this stage's input queue (items); ``None`` takes the
            pipeline's default.
        concurrency: for ``async def`` functions, calls in flight per worker.
        retry: retries of a failed call: a number (``retry=3``) or a :class:`Retry`
            policy (attempts, backoff with jitter, which exceptions).
        on_error: what happens to an item whose last attempt failed: ``"fail"``
            stops the run (the default); ``"skip"`` moves it to the dead letters
            (an ``Instrument.dead_lettered`` event, a row in the run store) and
            the run goes on.
        timeout: seconds one call may take. A process worker past it is killed and
            replaced; a thread past it is abandoned and replaced (Python cannot
            interrupt a thread); an ``async`` call is cancelled. The call then
            counts as a failure with :class:`TimeoutError`. Not for ``sync``.
        cache: look results up by content before calling the function, and store
            them after (see ``conveyor.cache``); resumed runs skip cached work.
            ``True`` uses ``$CONVEYOR_CACHE`` or ``./.conveyor/cache``; a path
            names another cache folder.
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
    is_async: bool = dataclasses.field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise PipelineError(
                f"stage {self.name or '?'!r}: {self.fn!r} is not callable; "
                "pass a function (or an object with __call__)",
                stage=self.name or None,
            )
        if not self.name:
            object.__setattr__(self, "name", _default_name(self.fn))
        # Whether the function is a coroutine function (``async def``).
        is_async = inspect.iscoroutinefunction(self.fn) or (
            not inspect.isroutine(self.fn) and inspect.iscoroutinefunction(type(self.fn).__call__)
        )
        object.__setattr__(self, "is_async", is_async)
        try:
            object.__setattr__(self, "retry", as_retry(self.retry))
        except PipelineError as exc:
            raise PipelineError(f"stage {self.name!r}: {exc}", stage=self.name) from None
        _check_policy(self)
        _check_arity(self)
        if self.executor == "processes":
            _check_picklable_early(self)

    def with_options(self, **changes: Any) -> Stage:
        """A copy of this stage with some options changed (validated again)."""
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
) -> Stage | Callable[[Callable[..., Any]], Stage]:
    """Make a :class:`Stage` from a function; usable bare (``@stage``) or with options."""
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
    )
    if fn is not None:
        return Stage(fn, **options)

    def decorate(f: Callable[..., Any]) -> Stage:
        return Stage(f, **options)

    return decorate


def _default_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else name


def _check_policy(s: Stage) -> None:
    def fail(rule: str) -> None:
        raise PipelineError(f"stage {s.name!r}: {rule}", stage=s.name)

    if s.kind not in KINDS:
        fail(f"kind={s.kind!r} is not one of {', '.join(KINDS)}")
    if s.executor not in EXECUTORS:
        fail(f"executor={s.executor!r} is not one of {', '.join(EXECUTORS)}")
    if not isinstance(s.workers, int) or s.workers < 1:
        fail(f"workers={s.workers!r}; give a whole number of at least 1")
    if not isinstance(s.concurrency, int) or s.concurrency < 1:
        fail(f"concurrency={s.concurrency!r}; give a whole number of at least 1")
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
        if s.executor == "sync":
            fail(
                "timeout needs executor='threads' or 'processes': a call running in the "
                "caller cannot be interrupted"
            )
    if s.cache and s.is_async:
        fail("cache=True is not supported for async def functions; cache a sync stage instead")
    if s.kind == "collect" and s.workers != 1:
        fail(f"kind='collect' runs once over every item; workers={s.workers} has no meaning, use 1")


def _check_arity(s: Stage) -> None:
    """Every kind calls the function with exactly one positional argument."""
    try:
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
        "batch": "one list (the batch)",
        "collect": "one list (every item)",
    }[s.kind]
    if len(required) > 1 or (not positional and not var_positional) or required_kw:
        shown = f"{getattr(s.fn, '__name__', s.fn)!s}{sig}"
        raise PipelineError(
            f"stage {s.name!r}: a {s.kind} stage calls its function with {what}, "
            f"but {shown} needs {len(required)} positional argument(s)"
            + (f" and keyword(s) {required_kw}" if required_kw else "")
            + "; give the function exactly one required parameter "
            "(bind the others with functools.partial)",
            stage=s.name,
        )


class _StageFunctionRef(NamedTuple):
    """A module-level function that ``@stage`` replaced by a Stage under its own name:
    pickle finds the Stage there, not the function, so it travels as this reference."""

    module: str
    qualname: str


def _lookup(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def dump_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a stage's function for a process worker (see :func:`load_function`)."""
    try:
        return pickle.dumps(fn)
    except Exception:
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
        if module and "<" not in qualname:
            try:
                bound = _lookup(module, qualname)
            except (ImportError, AttributeError):
                bound = None
            if isinstance(bound, Stage) and bound.fn is fn:
                return pickle.dumps(_StageFunctionRef(module, qualname))
        raise


def load_function(data: bytes) -> Callable[..., Any]:
    """The function :func:`dump_function` pickled, in a process worker."""
    fn: Any = pickle.loads(data)
    if isinstance(fn, _StageFunctionRef):
        fn = _lookup(fn.module, fn.qualname).fn
    return fn


def check_picklable(s: Stage) -> None:
    """Raise PipelineError unless ``s``'s function can be sent to a process worker."""
    try:
        dump_function(s.fn)
    except Exception as exc:
        raise PipelineError(
            f"stage {s.name!r}: its function cannot be sent to a process worker "
            f"({type(exc).__name__}: {exc}); define it at the top level of a module "
            "(not a lambda, a nested function or a closure), or use executor='threads'",
            stage=s.name,
        ) from exc


def _check_picklable_early(s: Stage) -> None:
    # ``@stage(executor="processes")`` runs before the module binds the function's
    # name (to this Stage), so a module-level function cannot be checked yet: the
    # Pipeline checks it when it is built. Anything else is checked now.
    fn = s.fn
    qualname = getattr(fn, "__qualname__", "")
    if inspect.isfunction(fn) and "<" not in qualname and fn.__module__ in sys.modules:
        return
    check_picklable(s)
