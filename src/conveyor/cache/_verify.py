"""Auditing the cache: recompute entries and compare them with what they hold.

A cache entry keeps, beside its result, the code fingerprint it was computed under
and (when it pickles into at most 1 MiB) its input; each run leaves a *manifest* per
cached stage that says how to load the stage's function. :func:`verify_cache`
loads an entry's function, checks that its code fingerprint is still the entry's
(otherwise the entry is *outdated*: no run can hit it any more), calls the function
on the stored input and compares the result with the cached one. A difference means
the fingerprint missed something the function depends on (or the function is not
deterministic): the report names the stage and what the fingerprint only named.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pickle
import random
import sys
from collections.abc import Iterator
from typing import Any

from conveyor.cache._cache import StageCache, StoredEntry
from conveyor.cache._engine import MANIFESTS, same, stage_code
from conveyor.errors import FingerprintError

SAME, DIFFERS, OUTDATED, UNCHECKED = "same", "differs", "outdated", "unchecked"


@dataclasses.dataclass(frozen=True)
class Finding:
    """What verifying one entry found: its ``status`` (``"same"``, ``"differs"``,
    ``"outdated"`` or ``"unchecked"``) and a sentence saying why."""

    stage: str
    key: str
    status: str
    detail: str


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The entries verified (of ``total`` in the cache, or of the stage asked for)."""

    total: int
    findings: tuple[Finding, ...]

    def count(self, status: str) -> int:
        return sum(1 for f in self.findings if f.status == status)

    @property
    def differing(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.status == DIFFERS)


def verify_cache(
    cache: StageCache,
    *,
    sample: int | None = None,
    stage: str | None = None,
    seed: int | None = None,
) -> VerifyReport:
    """Recompute ``sample`` entries picked at random (every entry if None), of
    ``stage`` alone if given, and compare each with its cached result."""
    entries = cache.entries(stage)
    picked = entries
    if sample is not None and sample < len(entries):
        picked = sorted(random.Random(seed).sample(entries, sample), key=lambda e: (e.stage, e.key))
    stages: dict[str, Any] = {}
    with contextlib.ExitStack() as paths:  # the stages' modules stay importable meanwhile
        findings = [_verify(cache, e.key, e.stage, stages, paths) for e in picked]
    return VerifyReport(len(entries), tuple(findings))


def _verify(
    cache: StageCache, key: str, label: str, stages: dict[str, Any], paths: contextlib.ExitStack
) -> Finding:
    entry = cache.entry(key)
    if entry is None:
        return Finding(label, key, UNCHECKED, "the blob is gone or damaged (it was removed)")
    if entry.code not in stages:
        stages[entry.code] = _load_stage(cache, entry, paths)
    loaded = stages[entry.code]
    if isinstance(loaded[0], str):
        return Finding(entry.stage, key, loaded[0], loaded[1])
    fn, kind, manifest = loaded
    if entry.input is None:
        why = "its input was not kept (over 1 MiB, or it does not pickle)"
        return Finding(entry.stage, key, UNCHECKED, why)
    try:
        unit = pickle.loads(entry.input)
        cached = pickle.loads(entry.result)
    except Exception as exc:
        why = f"its input or result no longer loads ({type(exc).__name__}: {exc})"
        return Finding(entry.stage, key, UNCHECKED, why)
    try:
        fresh = fn(unit)
        if kind == "flat_map":
            fresh = list(fresh)
    except Exception as exc:
        why = f"recomputing it raised {type(exc).__name__}: {exc}"
        return Finding(entry.stage, key, UNCHECKED, why)
    if same(cached, fresh):
        return Finding(entry.stage, key, SAME, "")
    return Finding(entry.stage, key, DIFFERS, _missed(unit, cached, fresh, manifest))


def _load_stage(
    cache: StageCache, entry: StoredEntry, paths: contextlib.ExitStack
) -> tuple[Any, ...]:
    """``(fn, kind, manifest)`` of the entry's stage, or ``(status, why)`` when the
    entry cannot be recomputed."""
    try:
        data = cache.storage.read(f"{MANIFESTS}/{entry.code}")
        if data is None:
            return UNCHECKED, "no run left its stage's manifest (how to load the function)"
        manifest: dict[str, Any] = pickle.loads(data)
    except Exception as exc:
        return UNCHECKED, f"its stage's manifest does not load ({type(exc).__name__}: {exc})"
    paths.enter_context(_importable(manifest.get("paths", [])))
    try:
        fn = _load(manifest["function"])
        key_fn = _load(manifest["key"]) if manifest.get("key") else None
    except Exception as exc:
        return UNCHECKED, (
            f"its stage's function cannot be loaded here ({type(exc).__name__}: {exc}); "
            "run verify in the folder the pipeline runs from"
        )
    try:
        digest, _ = stage_code(fn, key_fn, manifest.get("version"))
    except FingerprintError as exc:
        return UNCHECKED, f"its stage's code cannot be fingerprinted now ({exc})"
    if digest != entry.code:
        return OUTDATED, (
            "its stage's code changed since it was computed, so no run can hit it any "
            "more (`conveyor cache clear --stage` removes it)"
        )
    return fn, manifest["kind"], manifest


def _load(data: bytes | None) -> Any:
    if data is None:
        raise ValueError("the function could not be pickled when the run started")
    fn = pickle.loads(data)
    if isinstance(fn, tuple) and fn[:1] == ("conveyor-stage-ref",):  # @stage bound its name
        obj: Any = importlib.import_module(fn[1])
        for part in fn[2].split("."):
            obj = getattr(obj, part)
        fn = obj.fn
    return fn


@contextlib.contextmanager
def _importable(paths: list[str]) -> Iterator[None]:
    """Import the stage's modules from where the run imported them."""
    added = [p for p in paths if p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)


def _missed(unit: Any, cached: Any, fresh: Any, manifest: dict[str, Any]) -> str:
    named = manifest.get("named") or ()
    refused = manifest.get("refused") or ()
    parts = [f"input {_short(unit)}: cached {_short(cached)}, computed now {_short(fresh)}"]
    if named:
        parts.append("the fingerprint named but did not read: " + ", ".join(named))
    if refused:
        parts.append("it counted by type only: " + "; ".join(refused))
    parts.append(
        "the function depends on something its fingerprint does not see (a file, the "
        "clock, a library's state, a value read by name at run time) or is not "
        "deterministic; declare it with cache_version= or cache_key=, then clear the stage"
    )
    return "; ".join(parts)


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"a {type(value).__qualname__}"
    return text if len(text) <= 80 else text[:77] + "..."
