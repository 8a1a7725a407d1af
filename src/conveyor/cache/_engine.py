"""The cache in a run: the driver's check at run start, and the worker's lookups.

The driver calls :func:`cache_spec` for each cached stage before any worker starts:
it fingerprints the stage's code (with its ``cache_key`` and ``cache_version``),
checks that the cache folder can be written (one clear :class:`CacheError`, or with
``cache_required=False`` a :class:`CacheWarning` and no cache), and leaves a
*manifest* there that lets ``conveyor cache verify`` load the stage's function again.

Workers call :func:`run_cached` (through ``run_task``) for each task: per unit, a
key from the code and the input; a hit is returned without calling the function
(or, for the share ``cache_check`` of hits, recomputed and compared); a miss is
computed and stored. Whatever the cache cannot do is reported back as one sentence
(``Outcome.uncached``) that the driver warns with once; it never fails the item.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import pickle
import random
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.cache._cache import StageCache, default_cache_root
from conveyor.cache._fingerprint import CodeFingerprint, code_fingerprint
from conveyor.cache._storage import is_url
from conveyor.errors import CacheError, CacheWarning, FingerprintError
from conveyor.executors.base import CacheSpec, Outcome, executor_class

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

MANIFESTS = "stages-v1"
_rng = random.Random()  # the spot checks' draws: never the user's global random state
_caches: dict[str, StageCache] = {}
_caches_lock = threading.Lock()


def cache_at(root: str) -> StageCache:
    """This process's StageCache for ``root`` (shared by its workers)."""
    with _caches_lock:
        if root not in _caches:
            _caches[root] = StageCache(root)
        return _caches[root]


# --- the driver ---------------------------------------------------------------------


def cache_spec(stage: Stage, pipeline: str) -> CacheSpec | None:
    """What the workers of a cached stage need, or None when the stage runs uncached
    in this run (a CacheWarning said why). Raises CacheError when the cache folder
    cannot be used and the stage requires its cache."""
    version = getattr(stage, "cache_version", None)
    key_fn = getattr(stage, "cache_key", None)
    try:
        digest, code = stage_code(stage.fn, key_fn, version)
    except FingerprintError as exc:
        warnings.warn(
            f"stage {stage.name!r} is not cached in this run: {exc}, so a cached result "
            "could have been computed under another value of it. If the stage's results "
            "do not depend on it, or to cache anyway, declare the stage's version: "
            "cache_version='1' (change it whenever what the fingerprint cannot see changes)",
            CacheWarning,
            stacklevel=4,
        )
        return None
    root = _root(stage)
    try:
        _check_reach(stage, root)
        cache = cache_at(root)
        cache.probe()
    except (OSError, CacheError) as exc:
        where = (
            "$CONVEYOR_CACHE"
            if stage.cache is True and os.environ.get("CONVEYOR_CACHE")
            else "the stage's cache="
        )
        if isinstance(exc, CacheError):
            message = f"stage {stage.name!r}: {exc}"
        else:
            kind = "URL" if is_url(root) else "folder"
            message = (
                f"stage {stage.name!r}: cannot use the cache {kind} {root}: {_why(exc, root)}; "
                f"point {where} at a writable {kind}"
            )
        if getattr(stage, "cache_required", True):
            raise CacheError(
                message + ", or give the stage cache_required=False to run it uncached",
                stage=stage.name,
                path=root,
            ) from None
        warnings.warn(
            message + "; the stage runs uncached (cache_required=False)",
            CacheWarning,
            stacklevel=4,
        )
        return None
    qualname = f"{pipeline}/{stage.name}"
    _write_manifest(cache, qualname, digest, stage, code)
    check = float(getattr(stage, "cache_check", 0.0) or 0.0)
    return CacheSpec(root, qualname, digest, key=key_fn, check=check)


def stage_code(fn: Any, key_fn: Any, version: str | int | None) -> tuple[str, CodeFingerprint]:
    """The code half of a stage's cache keys: its function's fingerprint, its
    cache_key's and its cache_version. With a version, values the fingerprint cannot
    read count by their type (the user vouches for them); without, they raise
    FingerprintError."""
    code = code_fingerprint(fn, strict=version is None)
    key_code = code_fingerprint(key_fn, strict=version is None) if key_fn is not None else None
    h = hashlib.sha256(b"conveyor-stage-code/1")
    for part in (code.digest, key_code.digest if key_code else "", str(version or "")):
        h.update(len(part).to_bytes(8, "big") + part.encode())
    if key_code is not None:
        named = tuple(sorted({*code.named, *key_code.named}))
        code = CodeFingerprint(code.digest, named, code.refused + key_code.refused)
    return h.hexdigest(), code


def _root(stage: Stage) -> str:
    root = stage.cache if stage.cache is not True else default_cache_root()
    if is_url(root):  # type: ignore[arg-type]
        return str(root)
    return os.path.abspath(os.fspath(root))  # type: ignore[arg-type]


def _check_reach(stage: Stage, root: str) -> None:
    """A ``memory://`` cache lives in one process: workers in other processes or on
    other nodes would each see their own, empty one."""
    if root.startswith("memory://") and not executor_class(stage.executor).traits.shares_memory:
        raise CacheError(
            f"a memory:// cache ({root}) lives in one process, so {stage.executor!r} "
            "workers would each see their own empty copy; give a folder or a URL every "
            "worker reaches (file://, s3://...)"
        )


def _why(exc: OSError, root: str) -> str:
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) or Path(root).is_file():
        return "it is a file, not a folder"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"it cannot be written ({exc.strerror})"
    return exc.strerror or str(exc)


def _write_manifest(
    cache: StageCache, qualname: str, digest: str, stage: Stage, code: CodeFingerprint
) -> None:
    """What ``conveyor cache verify`` needs to recompute this stage's entries: how to
    load its function (and cache_key), its kind, and what the fingerprint only named."""
    name = f"{MANIFESTS}/{digest}"
    with contextlib.suppress(OSError):
        if cache.storage.read(name, 0, 1):
            return
    manifest = {
        "stage": qualname,
        "code": digest,
        "kind": stage.kind,
        "function": _dump(stage.fn),
        "key": _dump(stage.cache_key) if getattr(stage, "cache_key", None) else None,
        "version": getattr(stage, "cache_version", None),
        "paths": _import_roots(stage.fn),
        "named": code.named,
        "refused": code.refused,
    }
    with contextlib.suppress(OSError):  # only the audit needs it; the run does not
        cache.storage.write(name, (pickle.dumps(manifest, protocol=5),))


def _dump(fn: Any) -> bytes | None:
    """``fn`` pickled by reference, or a reference to the Stage ``@stage`` bound under
    its name (as process workers receive it); None if it cannot be pickled."""
    try:
        return pickle.dumps(fn, protocol=5)
    except Exception:
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
        if module and "<" not in qualname:
            return pickle.dumps(("conveyor-stage-ref", module, qualname))
        return None


def _import_roots(fn: Any) -> list[str]:
    """The folder from which ``fn``'s module was imported (so that the audit, run from
    elsewhere, imports it the same way)."""
    fn = getattr(fn, "func", fn)  # a partial's function
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if not path or module is None:
        return []
    root = Path(path).resolve().parent
    for _ in range(module.__name__.count(".")):
        root = root.parent
    return [str(root)]


# --- the workers --------------------------------------------------------------------


def run_cached(
    fn: Callable[[Any], Any],
    kind: str,
    units: list[Any],
    worker: int,
    task_id: int,
    on_unit: Callable[[int], None] | None,
    spec: CacheSpec,
    in_caller: bool,
) -> Outcome:
    """``run_task`` for a cached stage: look each unit up by content first."""
    from conveyor.executors.base import materialise
    from conveyor.executors.task import failure

    notes: dict[str, str] = {}
    cache = _open(spec, notes)
    results: list[Any] = []
    stamps = [monotonic_ns()]
    hits: list[int] = []
    memo: dict[int, tuple[type, bytes]] = {}  # the inputs' classes, walked once per task

    def call(unit: Any) -> Any:
        r = fn(unit)
        return materialise(r) if kind == "flat_map" else r

    for i, unit in enumerate(units):
        if on_unit is not None:
            on_unit(i)
        try:
            key = _key(cache, spec, unit, notes, memo)
            hit, value = _lookup(cache, key, notes)
            if hit and not (spec.check and _rng.random() < spec.check):
                results.append(value)
                hits.append(i)
                stamps.append(monotonic_ns())
                continue
            r = call(unit)
        except BaseException as exc:
            if in_caller and isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            stamps.append(monotonic_ns())
            out = Outcome(task_id, worker, results, stamps, [failure(i, exc)])
            out.hits, out.uncached = hits, _sentence(notes)
            return out
        if hit and not same(value, r):
            notes.setdefault("check", _MISMATCH)
            hit = False
        if key is not None and not hit:
            _store(cache, spec, key, r, unit, notes)
        stamps.append(monotonic_ns())
        results.append(r)
    return Outcome(task_id, worker, results, stamps, hits=hits, uncached=_sentence(notes))


async def run_cached_async(
    units: list[Any],
    worker: int,
    task_id: int,
    spec: CacheSpec,
    in_caller: bool,
    run_async: Callable[[list[Any]], Awaitable[Outcome]],
) -> Outcome:
    """A task of a cached ``async def`` stage: every unit is looked up first; the
    misses then run together on the event loop (``run_async``, up to the worker's
    calls in flight), and their results are stored."""
    from conveyor.executors.task import failure

    notes: dict[str, str] = {}
    cache = _open(spec, notes)
    n = len(units)
    results: list[Any] = [None] * n
    starts = [0] * n
    ends = [0] * n
    hits: list[int] = []
    failures = []
    memo: dict[int, tuple[type, bytes]] = {}
    todo: list[tuple[int, str | None, bool, Any]] = []  # (unit, key, hit to check, value)
    for i, unit in enumerate(units):
        starts[i] = monotonic_ns()
        try:
            key = _key(cache, spec, unit, notes, memo)
            hit, value = _lookup(cache, key, notes)
        except BaseException as exc:
            if in_caller and isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failures.append(failure(i, exc))
            ends[i] = monotonic_ns()
            continue
        ends[i] = monotonic_ns()
        if hit and not (spec.check and _rng.random() < spec.check):
            results[i] = value
            hits.append(i)
        else:
            todo.append((i, key, hit, value))
    if todo:
        out = await run_async([units[i] for i, *_ in todo])
        failed = {f.unit: f for f in out.failures}
        for j, (i, key, hit, value) in enumerate(todo):
            starts[i] = out.stamps[j]
            ends[i] = out.ends[j] if out.ends is not None else out.stamps[-1]
            if j in failed:
                failures.append(dataclasses.replace(failed[j], unit=i))
                continue
            r = results[i] = out.results[j]
            if hit and not same(value, r):
                notes.setdefault("check", _MISMATCH)
                hit = False
            if key is not None and not hit:
                _store(cache, spec, key, r, units[i], notes)
    failures.sort(key=lambda f: f.unit)
    return Outcome(
        task_id, worker, results, [*starts, max(ends, default=monotonic_ns())], failures,
        hits=hits, uncached=_sentence(notes), ends=ends,
    )  # fmt: skip


def _open(spec: CacheSpec, notes: dict[str, str]) -> StageCache | None:
    """This worker's cache, or None (with a note) when it cannot be opened here: a
    URL that the driver reached but this node cannot, or a package missing here."""
    try:
        return cache_at(spec.root)
    except (OSError, CacheError) as exc:
        notes["open"] = f"the cache cannot be opened on this worker ({exc}), so items are computed"
        return None


def _key(
    cache: StageCache | None,
    spec: CacheSpec,
    unit: Any,
    notes: dict[str, str],
    memo: dict[int, tuple[type, bytes]],
) -> str | None:
    if cache is None:
        return None
    basis = spec.key(unit) if spec.key is not None else unit  # cache_key may raise: the unit's
    key = cache.key(spec.stage, spec.code, basis, warn=False, memo=memo)
    if key is None and "input" not in notes:
        notes["input"] = _unfingerprintable(basis, spec.key is not None)
    return key


def _lookup(cache: StageCache | None, key: str | None, notes: dict[str, str]) -> tuple[bool, Any]:
    if key is None or cache is None:
        return False, None
    try:
        return cache.get(key)
    except OSError as exc:  # the folder became a file, or unreadable, mid-run
        why = exc.strerror or str(exc)
        notes.setdefault(
            "read", f"reading the cache failed ({why}), so items are computed, not served from it"
        )
        return False, None


def _store(
    cache: StageCache | None, spec: CacheSpec, key: str, r: Any, unit: Any, notes: dict[str, str]
) -> None:
    if cache is None:
        return
    try:
        stored = cache.put(key, r, stage=spec.stage, code=spec.code, input=unit, warn=False)
    except OSError as exc:  # a full or read-only disk must not fail the item
        notes.setdefault(
            "write",
            f"writing the cache failed ({exc.strerror or exc}), so results are computed but "
            "not cached; free space, or move the cache elsewhere",
        )
        return
    if not stored and "result" not in notes:
        notes["result"] = (
            f"a result of type {type(r).__qualname__} cannot be pickled, so it is not "
            "cached; return picklable values or turn caching off for this stage"
        )


def same(cached: Any, fresh: Any) -> bool:
    """Whether a cached result is the one the function returns now: equal
    fingerprints, or equal pickles for what cannot be fingerprinted."""
    from conveyor.cache._fingerprint import fingerprint_value

    a, b = fingerprint_value(cached), fingerprint_value(fresh)
    if a is not None and b is not None:
        return a == b
    try:
        return pickle.dumps(cached, protocol=5) == pickle.dumps(fresh, protocol=5)
    except Exception:
        return False


def _unfingerprintable(value: Any, keyed: bool) -> str:
    from conveyor.cache._fingerprint import explain_value

    _, what = explain_value(value)
    name = type(value).__qualname__
    inside = f" (it holds {what})" if what and what != f"a {type(value).__module__}.{name}" else ""
    if keyed:
        return (
            f"its cache_key returned a {name}{inside} that cannot be fingerprinted, so such "
            "inputs are computed every time, never cached; make cache_key return plain "
            "values (numbers, strings, tuples)"
        )
    return (
        f"an input of type {name}{inside} cannot be fingerprinted, so such inputs are "
        "computed every time, never cached; pass plain values (numbers, strings, bytes, "
        "tuples, lists, dicts, dataclasses, NumPy arrays), register the type with "
        "conveyor.cache.register_fingerprint, or give the stage cache_key= (a function "
        "of the input returning what identifies it)"
    )


_MISMATCH = (
    "a cached result differs from the one computed now: the fingerprint misses "
    "something the function depends on (a file, the clock, a library's state, a value "
    "read by name at run time), or the function is not deterministic; the fresh result "
    "was used and stored. Declare the dependency with cache_version= or cache_key=, and "
    "run `conveyor cache verify` to find the other stale entries"
)


def _sentence(notes: dict[str, str]) -> str | None:
    return "; ".join(notes[k] for k in sorted(notes)) if notes else None
