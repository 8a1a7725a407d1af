"""Config files: change a pipeline's policies (workers, executors, batch sizes,
capacities, retries, timeouts) by stage name, without editing its code.

A config is a TOML file (or the dict it reads as)::

    [pipeline]
    capacity = 64            # default bound of every stage's input queue
    ordered = true

    [stages.parse]
    workers = 4
    executor = "processes"

    [stages.embed]
    size = 64                # items per batch
    max_wait = 0.5

    [stages.fetch]
    retry = 3                # as the stage option retry=3
    timeout = 10.0
    on_error = "skip"

    [stages.fetch.retry]     # or a Retry policy, field by field
    attempts = 5
    backoff = 0.5

``Pipeline.with_config("prod.toml")`` returns a new pipeline with these changes
(the original is left as it was); ``conveyor run etl.py:pipe --config prod.toml``
runs with them; ``conveyor analyze RECORDING --write-config advice.toml`` writes the
report's advice as such a file. A stage the file does not name keeps its policy.

Every mistake is a :class:`~conveyor.ConfigError` naming the file, the key and the
fix: a stage the pipeline lacks, a key that is not a policy, a value of the wrong
type or one the stage refuses.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.core.policy import Retry
from conveyor.errors import ConfigError, PipelineError

if TYPE_CHECKING:
    from conveyor.core.pipeline import Pipeline

__all__ = ["apply_config", "load_config"]

_NUMBER = (int, float)
# key: (accepted types, what to give); None is accepted where the option allows it
STAGE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "workers": ((int,), "a whole number of at least 1, e.g. workers = 4"),
    "executor": ((str,), 'an executor name, e.g. executor = "processes"'),
    "size": ((int,), "a whole number of items per batch, e.g. size = 32"),
    "max_wait": (_NUMBER, "seconds, e.g. max_wait = 0.5"),
    "capacity": ((int,), "a whole number of items, e.g. capacity = 256"),
    "capacity_bytes": ((int,), "a whole number of bytes, e.g. capacity_bytes = 67108864"),
    "concurrency": ((int,), "a whole number of calls in flight, e.g. concurrency = 16"),
    "retry": ((int, dict), "a number of retries (retry = 3) or a [stages.NAME.retry] table"),
    "on_error": ((str,), 'on_error = "fail" or on_error = "skip"'),
    "timeout": (_NUMBER, "seconds, e.g. timeout = 30.0"),
    "cache": ((bool, str), 'cache = true, or a cache folder, e.g. cache = "/data/cache"'),
    "cpus": (_NUMBER, "CPUs per worker, e.g. cpus = 1"),
    "gpus": (_NUMBER, "GPUs per worker, a share (gpus = 0.5) or a whole number (gpus = 2)"),
    "memory": ((int, str), 'memory per worker, bytes or a size, e.g. memory = "2GB"'),
}
RETRY_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "attempts": ((int,), "a whole number of calls, the first included, e.g. attempts = 5"),
    "retries": ((int,), "a whole number of calls after the first, e.g. retries = 4"),
    "backoff": (_NUMBER, "seconds before the first retry, e.g. backoff = 0.5"),
    "factor": (_NUMBER, "the backoff's growth per retry, e.g. factor = 2.0"),
    "max_backoff": (_NUMBER, "the longest wait in seconds, e.g. max_backoff = 30.0"),
    "jitter": (_NUMBER, "a fraction between 0 and 1, e.g. jitter = 0.2"),
}
PIPELINE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "capacity": ((int,), "a whole number of items, e.g. capacity = 128"),
    "capacity_bytes": ((int,), "a whole number of bytes, e.g. capacity_bytes = 67108864"),
    "ordered": ((bool,), "ordered = true or ordered = false"),
    "fuse": ((bool, str), 'fuse = "auto" (processes and Ray), true (everywhere) or false'),
}
SECTIONS = ("pipeline", "stages")


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file into a dict (checked when applied); a file that is
    missing or not TOML is a :class:`~conveyor.ConfigError` naming it."""
    where = str(path)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 only
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config {where!r} does not exist; check the path", path=where) from None
    except OSError as exc:
        raise ConfigError(
            f"config {where!r} cannot be read: {exc.strerror or exc}", path=where
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config {where!r} is not valid TOML: {exc}; fix the file (see "
            "https://toml.io for the syntax)",
            path=where,
        ) from None


def apply_config(
    pipeline: Pipeline, config: Mapping[str, Any] | str | os.PathLike[str]
) -> Pipeline:
    """A new pipeline like ``pipeline`` with the config's policies applied (see the
    module docstring); ``config`` is a TOML file's path or the dict it reads as."""
    from conveyor.core.pipeline import Pipeline

    where: str | None = None
    if isinstance(config, (str, os.PathLike)):
        where = str(config)
        config = load_config(Path(config))
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"config {config!r} is neither a TOML file's path nor a dict; give one of them"
        )
    label = f"config {where!r}" if where else "config"

    def fail(key: str, rule: str, stage: str | None = None) -> ConfigError:
        return ConfigError(f"{label}: {key}: {rule}", path=where, key=key, stage=stage)

    _known(config, SECTIONS, "", fail, "sections")
    top = _table(config.get("pipeline", {}), "pipeline", fail)
    _known(top, PIPELINE_KEYS, "pipeline.", fail, "pipeline keys")
    for key, value in top.items():
        _typed(value, PIPELINE_KEYS[key], f"pipeline.{key}", fail)
    stages = _table(config.get("stages", {}), "stages", fail)
    names = list(pipeline.stages)
    for name in stages:
        if name not in pipeline.stages:
            near = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise fail(
                f"stages.{name}",
                f"pipeline {pipeline.name!r} has no stage {name!r} ({', '.join(names)}); "
                f"{hint}name one of its stages",
            )
    new_stages = []
    for name, current in pipeline.stages.items():
        options = _table(stages.get(name, {}), f"stages.{name}", fail)
        if not options:
            new_stages.append(current)
            continue
        prefix = f"stages.{name}."
        _known(options, STAGE_KEYS, prefix, fail, "stage policies")
        changes: dict[str, Any] = {}
        for key, value in options.items():
            _typed(value, STAGE_KEYS[key], prefix + key, fail)
            changes[key] = value
        if isinstance(changes.get("retry"), dict):
            changes["retry"] = _retry(current.retry, changes["retry"], prefix + "retry", fail)
        try:
            new_stages.append(current.with_options(**changes))
        except PipelineError as exc:
            keys = ", ".join(prefix + k for k in changes)
            raise fail(keys, f"stage {name!r} refuses it: {exc}", stage=name) from None
    edges = [(a, b) for a in pipeline.order for b in pipeline.successors[a]]
    try:
        return Pipeline(
            pipeline.name,
            new_stages,
            edges=edges,
            ordered=top.get("ordered", pipeline.ordered),
            capacity=top.get("capacity", pipeline.capacity_given),
            capacity_bytes=top.get("capacity_bytes", pipeline.capacity_bytes),
            source=pipeline.source,
            fuse=top.get("fuse", pipeline.fuse),
        )
    except PipelineError as exc:
        raise fail("pipeline", f"the pipeline refuses it: {exc}", stage=exc.stage) from None


def _table(value: Any, key: str, fail: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(key, f"is {value!r}; make it a table, e.g. [{key}]")
    return value


def _known(table: Mapping[str, Any], known: Any, prefix: str, fail: Any, what: str) -> None:
    for key in table:
        if key not in known:
            near = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise fail(
                prefix + key,
                f"unknown key; {hint}the {what} are {', '.join(known)}",
            )


def _typed(value: Any, spec: tuple[tuple[type, ...], str], key: str, fail: Any) -> None:
    types, give = spec
    ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
    if not ok:
        raise fail(key, f"is {value!r} ({type(value).__name__}); give {give}")


def _retry(current: Any, table: Mapping[str, Any], key: str, fail: Any) -> Retry:
    _known(table, RETRY_KEYS, key + ".", fail, "Retry fields")
    for k, v in table.items():
        _typed(v, RETRY_KEYS[k], f"{key}.{k}", fail)
    base = current if isinstance(current, Retry) else Retry()
    changes = dict(table)
    # attempts and retries say one thing: the one given decides, the other follows it
    if "attempts" in changes and "retries" not in changes:
        changes["retries"] = None
    elif "retries" in changes and "attempts" not in changes:
        changes["attempts"] = None
    try:
        return dataclasses.replace(base, **changes)
    except PipelineError as exc:
        raise fail(key, str(exc)) from None
