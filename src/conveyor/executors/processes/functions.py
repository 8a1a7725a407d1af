"""Sending a stage's function to a process worker.

Functions travel by reference (pickle finds them by module and name), so they must
be defined at the top level of an importable module. One wrinkle: ``@stage`` on a
module-level function binds the module's name to the :class:`~conveyor.Stage`, not
the function, so pickle would find the Stage there; such a function travels as a
:class:`_StageFunctionRef` and the worker takes the Stage's ``fn``.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import sys
from collections.abc import Callable
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
            if getattr(bound, "fn", None) is fn:  # a Stage bound under the function's name
                return pickle.dumps(_StageFunctionRef(module, qualname))
        raise


def load_function(data: bytes) -> Callable[..., Any]:
    """The function :func:`dump_function` pickled, in a process worker."""
    fn: Any = pickle.loads(data)
    if isinstance(fn, _StageFunctionRef):
        fn = _lookup(fn.module, fn.qualname).fn
    return fn


def check_picklable(stage: Stage, *, pipeline_built: bool) -> None:
    """Raise PipelineError unless ``stage``'s function can be sent to a process worker.

    ``@stage(executor="processes")`` runs before the module binds the function's name
    (to the Stage), so a module-level function cannot be checked until the pipeline
    is built; anything else is checked at once.
    """
    fn = stage.fn
    qualname = getattr(fn, "__qualname__", "")
    routine = inspect.isfunction(fn) or inspect.isclass(fn)
    module_level = routine and "<" not in qualname and fn.__module__ in sys.modules
    if module_level and not pipeline_built:
        return
    try:
        dump_function(fn)
    except Exception as exc:
        raise PipelineError(
            f"stage {stage.name!r}: its function cannot be sent to a process worker "
            f"({type(exc).__name__}: {exc}); define it at the top level of a module "
            "(not a lambda, a nested function or a closure), or use executor='threads'",
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
