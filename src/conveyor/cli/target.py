"""Loading what ``conveyor run`` names: ``TARGET`` and ``--source``.

``TARGET`` is ``module:attr`` or ``path/to/file.py:attr``; ``attr`` names a
:class:`~conveyor.Pipeline` or a function of no arguments that returns one. Errors
are click exceptions: a usage error (exit 2) for a target that cannot be found,
an exception (exit 1) for one that fails while loading.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from conveyor import Pipeline, Stage
from conveyor.errors import ConveyorError, SourceError
from conveyor.sources import FileSource, read
from conveyor.store import DigestingSource, ItemDigest, file_fingerprint

TARGET_HELP = "TARGET is module:attr or path/to/file.py:attr, e.g. examples/science.py:pipeline"


def load_pipeline(target: str) -> Pipeline:
    """The :class:`Pipeline` that ``target`` (``module:attr`` or ``file.py:attr``) names.

    A file is loaded as a module named after its stem, with its directory put first
    on ``sys.path`` so process workers can import it too. Raises
    :class:`click.UsageError` (exit 2) for a target that cannot be found and
    :class:`click.ClickException` (exit 1) for one that fails while loading.
    """
    return _as_pipeline(load_attr(target, Pipeline), target)


def load_attr(target: str, kind: type = Pipeline) -> Any:
    """The object ``target`` names, loaded as :func:`load_pipeline` does; a missing
    attribute's error lists the module's objects of type ``kind``."""
    where, sep, attr = target.rpartition(":")
    if not sep or not where or not attr or not attr.isidentifier():
        raise click.UsageError(f"bad TARGET {target!r}: {TARGET_HELP}")
    module = _load_file(where) if _is_path(where) else _import_module(where)
    try:
        return getattr(module, attr)
    except AttributeError:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, kind))
        what = kind.__name__
        hint = (
            f"it defines these {what.lower()}s: {', '.join(found)}"
            if found
            else f"it defines no {what} at module level"
        )
        raise click.UsageError(f"{where!r} has no attribute {attr!r}; {hint}") from None


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _load_file(where: str) -> ModuleType:
    path = Path(where)
    if not path.is_file():
        raise click.UsageError(
            f"file {where!r} not found (from {Path.cwd()}); give a path to a .py file, "
            "e.g. examples/science.py:pipeline"
        )
    if path.suffix != ".py":
        raise click.UsageError(f"{where!r} is not a .py file; {TARGET_HELP}")
    path = path.resolve()
    name = path.stem
    # First on sys.path before loading: spawned process workers inherit sys.path and
    # import the stages' functions from this module by name.
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise click.UsageError(f"cannot load {where!r} as a Python module")
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) != str(path):
        raise click.UsageError(
            f"{where!r} would be imported as module {name!r}, but a module of that name is "
            f"already loaded ({getattr(loaded, '__file__', None) or 'built in'}); "
            "rename the file"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ConveyorError:
        del sys.modules[name]
        raise
    except Exception as exc:
        del sys.modules[name]
        raise click.ClickException(
            f"loading {where!r} raised {type(exc).__name__}: {exc}; fix the file "
            f"(try: python {where})"
        ) from exc
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            raise click.UsageError(
                f"no module named {name!r}; check the name and that it is importable from "
                f"here, or give a file: path/to/{name.rpartition('.')[2]}.py:attr"
            ) from None
        raise click.ClickException(
            f"importing {name!r} raised ModuleNotFoundError: {exc}; install the missing module"
        ) from exc
    except ConveyorError:
        raise
    except Exception as exc:
        raise click.ClickException(
            f"importing {name!r} raised {type(exc).__name__}: {exc}"
        ) from exc


def _as_pipeline(obj: Any, target: str) -> Pipeline:
    if isinstance(obj, Pipeline):
        return obj
    if isinstance(obj, Stage):
        raise click.UsageError(
            f"{target!r} is a Stage, not a Pipeline; wrap it: "
            f"Pipeline('name', [{obj.name}], source=...)"
        )
    if not callable(obj):
        raise click.UsageError(
            f"{target!r} is a {type(obj).__name__}, not a Pipeline; name a Pipeline or a "
            "function of no arguments that returns one"
        )
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise click.UsageError(
            f"{target!r} is a callable that needs arguments; name a Pipeline or a function "
            "of no arguments that returns one"
        ) from None
    except ValueError:
        pass  # no signature to check (some builtins): just call it
    try:
        result = obj()
    except ConveyorError:
        raise
    except Exception as exc:
        raise click.ClickException(
            f"calling {target!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, Pipeline):
        raise click.UsageError(
            f"{target!r}() returned a {type(result).__name__}, not a Pipeline; return the Pipeline"
        )
    return result


def source_file(path: str, format: str | None) -> FileSource:
    """``--source PATH``'s items: read in ``format``, or the one its name says. A path
    that cannot be read is a usage error naming ``--source``."""
    try:
        return read(path, format)
    except SourceError as exc:
        raise click.BadParameter(str(exc), param_hint="'--source'") from None


def stored_source(path: str) -> str:
    """``--source PATH`` as the run store keeps it: a local path (or glob) made
    absolute, so that ``conveyor resume`` reads it from any folder; a URL as it is."""
    if "://" in path or "::" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def fingerprinted_source(
    pipeline: Pipeline, source: Any, stored_path: str | None
) -> tuple[Any, ItemDigest | None, dict[str, Any] | None]:
    """The run's source, and what to keep of it for resume: a --source file's
    fingerprint (path, size, mtime, content hash), or the pipeline's own source read
    through a running fingerprint of its items."""
    if stored_path is not None:
        try:
            return source, None, file_fingerprint(stored_path)
        except OSError:  # a name the reader understands but os does not: kept by name
            return source, None, None
    own: Any = pipeline.source
    if callable(own) and not hasattr(own, "__iter__"):
        own = own()
    digest = ItemDigest()
    return DigestingSource(own, digest).runnable(), digest, None
