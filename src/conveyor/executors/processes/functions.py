"""Sending a stage's function to a process worker.

A function defined at the top level of an importable module travels by reference
(pickle finds it by module and name). Anything a worker could not import that way
travels by value, with cloudpickle, as joblib, loky, dask and Ray send it: functions
and classes of ``__main__`` (a notebook, the IPython shell, ``python -``, a script),
lambdas, nested functions and closures. What cloudpickle cannot send either (a
closure over a lock, an open file, a connection) is refused when the stage is built,
naming the value's type.

One wrinkle: ``@stage`` on a module-level function binds the module's name to the
:class:`~conveyor.Stage`, not the function, so pickle would find the Stage there;
such a function travels as a :class:`_StageFunctionRef` and the worker takes the
Stage's ``fn``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from conveyor.errors import PipelineError

if TYPE_CHECKING:
    from conveyor.core.stage import Stage


class _StageFunctionRef(NamedTuple):
    """A module-level function that ``@stage`` replaced by a Stage under its own name."""

    module: str
    qualname: str


def _lookup(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _by_value(fn: Callable[..., Any]) -> bool:
    """Whether a worker could not import ``fn`` by its module and name: a function or
    class of ``__main__`` (which a spawned worker does not have when it is a notebook,
    a shell or stdin), or one whose qualified name is not a path (``<lambda>``,
    ``<locals>``)."""
    target = getattr(fn, "func", fn)  # functools.partial: what it wraps
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", "")
    return module in ("__main__", "__mp_main__") or "<" in qualname


def dump_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a stage's function for a process worker (see :func:`load_function`)."""
    if _by_value(fn):
        import cloudpickle

        return bytes(cloudpickle.dumps(fn))
    try:
        return pickle.dumps(fn)
    except Exception:
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
        if module and "<" not in qualname:
            try:
                bound = _lookup(module, qualname)
            except (ImportError, AttributeError):
                bound = None
            if getattr(bound, "fn", None) is fn:  # a Stage bound under the function's name
                return pickle.dumps(_StageFunctionRef(module, qualname))
        import cloudpickle  # e.g. a partial of a lambda, or a callable instance

        return bytes(cloudpickle.dumps(fn))


def load_function(data: bytes) -> Callable[..., Any]:
    """The function :func:`dump_function` pickled, in a process worker."""
    fn: Any = pickle.loads(data)
    if isinstance(fn, _StageFunctionRef):
        fn = _lookup(fn.module, fn.qualname).fn
    return fn


def check_picklable(stage: Stage, *, pipeline_built: bool) -> None:
    """Raise PipelineError unless ``stage``'s function can be sent to a process worker.

    ``@stage(executor="processes")`` runs before the module binds the function's name
    (to the Stage), so a module-level function of an importable module cannot be
    checked until the pipeline is built; anything else is checked at once.
    """
    fn = stage.fn
    qualname = getattr(fn, "__qualname__", "")
    routine = inspect.isfunction(fn) or inspect.isclass(fn)
    module_level = routine and "<" not in qualname and fn.__module__ in sys.modules
    if stage.init is not None:
        try:
            dump_function(stage.init)
        except Exception as exc:
            raise PipelineError(
                f"stage {stage.name!r}: its init cannot be sent to a process worker "
                f"({type(exc).__name__}: {exc}); make what it uses inside it, or use "
                "executor='threads'",
                stage=stage.name,
            ) from exc
    if module_level and not _by_value(fn) and not pipeline_built:
        return
    try:
        dump_function(fn)
    except Exception as exc:
        raise PipelineError(
            f"stage {stage.name!r}: its function cannot be sent to a process worker "
            f"({type(exc).__name__}: {exc}); it, or a value it uses (a global or a "
            "variable it closes over), cannot be pickled. Make that value inside the "
            "function, or write the stage as a class whose __init__ makes it once per "
            "worker, or use executor='threads'",
            stage=stage.name,
        ) from exc
    if stage.kind == "fold":
        try:
            pickle.dumps(stage.initial)
        except Exception as exc:
            raise PipelineError(
                f"stage {stage.name!r}: its initial value cannot be sent to a process worker "
                f"({type(exc).__name__}: {exc}); give a picklable initial, or use "
                "executor='threads'",
                stage=stage.name,
            ) from exc


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def spawnable_main() -> Iterator[None]:
    """Start worker processes within this: a ``__main__`` whose ``__file__`` names no
    file (``python -`` sets ``<stdin>``) is not run again in the worker, which spawn
    would try, and fail at; the functions of such a main travel by value anyway."""
    with _MAIN_LOCK:  # every start waits here, so none sees another's change
        main = sys.modules.get("__main__")
        path = getattr(main, "__file__", None)
        if main is None or path is None or os.path.exists(path):
            yield
            return
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = path
