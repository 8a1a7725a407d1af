"""What a worker calls for each unit: the stage's function, set up once per worker.

Every executor asks :func:`worker_function` for the callable its worker runs, so
that the three ways a stage can be written behave the same everywhere:

- a plain function is called as it is;
- a *class* (or ``functools.partial`` of a class) is a stateful stage: each worker
  makes one instance, on its first call, and calls it per unit; ``close()``, if the
  instance has one (``async`` or not), runs when the worker stops. Making the
  instance is part of the worker's first unit, so the run's report shows it as
  warm-up. This is how a model is loaded once per worker;
- a stage's ``init``, if it has one, is called once per worker, before its first
  unit (as part of that unit, like a class stage's instance);
- a ``fold`` stage's unit is a chunk of items, folded from a copy of ``initial``
  with ``fn(acc, item)``; the scheduler combines the chunks' partial results.
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

from conveyor.executors.base import NO_INITIAL, is_stateful


class _Instance:
    """Calls a per-worker instance of a stage's class, made on the first call."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.instance: Any = None

    def __call__(self, unit: Any) -> Any:
        if self.instance is None:
            self.instance = self.factory()
        return self.instance(unit)

    def close(self) -> None:
        instance, self.instance = self.instance, None
        close = getattr(instance, "close", None)
        if close is None:
            return
        result = close()
        if inspect.isawaitable(result):
            from conveyor.executors.task import thread_loop

            thread_loop().run_until_complete(_awaited(result))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _fold(step: Callable[[Any, Any], Any], initial: Any, items: list[Any]) -> Any:
    acc = copy.deepcopy(initial)
    for item in items:
        acc = step(acc, item)
    return acc


def _no_close() -> None:
    return None


class _InitFirst:
    """Calls ``init()`` before the worker's first unit (again next unit if it raised)."""

    def __init__(self, fn: Callable[[Any], Any], init: Callable[[], Any]) -> None:
        self.fn = fn
        self.init: Callable[[], Any] | None = init

    def __call__(self, unit: Any) -> Any:
        if self.init is not None:
            self.init()
            self.init = None
        return self.fn(unit)


def worker_function(
    fn: Callable[..., Any],
    kind: str,
    initial: Any = NO_INITIAL,
    init: Callable[[], Any] | None = None,
) -> tuple[Callable[[Any], Any], Callable[[], None]]:
    """The callable one worker runs per unit, and what to call when the worker stops."""
    close = _no_close
    if is_stateful(fn):
        bound = _Instance(fn)
        fn, close = bound, bound.close
    if kind == "fold":
        fn = functools.partial(_fold, fn, initial)
    if init is not None:
        fn = _InitFirst(fn, init)
    return fn, close


def close_quietly(close: Callable[[], None], stage: str) -> None:
    """Run a worker's ``close``: what it raises becomes a warning naming the stage, since
    a worker on its way out has nobody to fail."""
    try:
        close()
    except Exception as exc:
        warnings.warn(
            f"stage {stage!r}: close() of a worker's instance raised {type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=2,
        )


__all__ = ["NO_INITIAL", "close_quietly", "is_stateful", "worker_function"]
