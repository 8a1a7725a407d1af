"""The stage cache: damaged blobs are misses, and exactly the right entries go stale."""

from __future__ import annotations

import importlib.util
import shutil
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from conveyor.cache import BlobStore, CacheWarning, StageCache, fingerprint_function


@pytest.fixture
def cache(tmp_path: Path) -> StageCache:
    return StageCache(tmp_path / "cache")


def _blob_path(cache: StageCache, key: str) -> Path:
    return cache.blobs.path_of(key)


def test_default_root_is_under_dot_conveyor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVEYOR_CACHE")  # the default, when the variable is not set
    monkeypatch.chdir(tmp_path)
    assert StageCache().root == tmp_path / ".conveyor" / "cache"


def test_put_then_get_round_trips(cache: StageCache) -> None:
    arr = np.arange(10.0)
    key = cache.key("etl.parse", "code1", arr)
    assert key is not None and len(key) == 64
    assert cache.get(key) == (False, None)
    assert cache.put(key, {"mean": arr.mean(), "arr": arr * 2})
    hit, value = cache.get(key)
    assert hit and value["mean"] == 4.5
    np.testing.assert_array_equal(value["arr"], arr * 2)
    assert cache.statistics().hits == 1 and cache.statistics().misses == 1
    (entry,) = cache.entries()
    assert entry.stage == "etl.parse" and entry.key == key and entry.size_bytes > 80


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage_header"])
def test_damaged_blob_is_a_miss_then_recomputed(cache: StageCache, damage: str) -> None:
    key = cache.key("s", "c", 41)
    assert key is not None
    cache.put(key, list(range(1000)))
    path = _blob_path(cache, key)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-10] ^= 0x01  # one bit of the payload
    elif damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "empty":
        data = bytearray()
    else:
        data[:8] = b"NOTABLOB"
    path.write_bytes(bytes(data))

    assert cache.get(key) == (False, None)  # never the damaged value
    assert not path.exists()  # deleted, so the recomputed value replaces it
    assert cache.statistics().damaged == 1
    cache.put(key, list(range(1000)))
    assert cache.get(key) == (True, list(range(1000)))


def test_cache_folder_removed_while_in_use(cache: StageCache) -> None:
    key = cache.key("s", "c", 5)
    assert key is not None
    cache.put(key, 1)
    shutil.rmtree(cache.root)
    assert cache.get(key) == (False, None)
    cache.put(key, 2)
    assert cache.get(key) == (True, 2)


def test_blob_that_no_longer_unpickles_is_a_miss(cache: StageCache) -> None:
    key = cache.key("s", "c", 1)
    assert key is not None
    # A valid, checksummed blob whose pickle names a class that no longer exists.
    cache.blobs.put(key, b"\x80\x05\x95\x1a\x00cnowhere_module\nGone\n\x94\x93\x94.", label="s")
    assert cache.get(key) == (False, None)
    assert not _blob_path(cache, key).exists()


def test_blob_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    address = "ab" * 32
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for _ in range(20):
                blobs.put(address, bytes([n]) * 50_000, label="t")
                got = blobs.get(address)
                assert got is not None and len(got) == 50_000 and len(set(got)) == 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in (tmp_path / "ab").iterdir()] == [address]
    with pytest.raises(ValueError, match="not a lowercase hex digest"):
        blobs.path_of("../etc/passwd")


def test_unfingerprintable_input_is_not_cached_and_said_once(cache: StageCache) -> None:
    lock = threading.Lock()
    with pytest.warns(CacheWarning, match=r"stage 'once\.s': an input of type dict .*lock"):
        assert cache.key("once.s", "c", {"lock": lock}) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.key("once.s", "c", {"lock": lock}) is None  # no second warning
    assert cache.statistics().unkeyed == 2
    with pytest.warns(CacheWarning, match="once.t"):
        cache.key("once.t", "c", lock)  # another stage is told too


def test_unpicklable_result_is_not_cached(cache: StageCache) -> None:
    key = cache.key("unpicklable.s", "c", 1)
    assert key is not None
    with pytest.warns(CacheWarning, match="cannot be pickled"):
        assert cache.put(key, threading.Lock()) is False
    assert cache.get(key) == (False, None)
    assert cache.entries() == []


def test_entries_size_and_clear_by_stage(cache: StageCache) -> None:
    for stage, n in (("a", 3), ("b", 2)):
        for i in range(n):
            key = cache.key(stage, "c", i)
            assert key is not None
            cache.put(key, "x" * 100)
    assert [e.stage for e in cache.entries()] == ["a", "a", "a", "b", "b"]
    assert cache.size_bytes() == sum(e.size_bytes for e in cache.entries()) > 500
    assert cache.clear("a") == 3
    assert [e.stage for e in cache.entries()] == ["b", "b"]
    assert cache.clear() == 2 and cache.size_bytes() == 0


# --- invalidation: exactly the entries that should go stale --------------------------------

MODULE = """
OFFSET = {offset}

def parse(x):
    return x {op} OFFSET

def scale(x):
    return x * 10
"""


def _load(tmp_path: Path, name: str, *, offset: int = 1, op: str = "+") -> ModuleType:
    path = tmp_path / f"{name}.py"
    path.write_text(MODULE.format(offset=offset, op=op))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_cached(
    cache: StageCache, stage: str, fn: Callable[[Any], Any], inputs: Sequence[Any]
) -> tuple[list[Any], list[Any]]:
    """Run ``fn`` over ``inputs`` through the cache; return the results and the inputs
    that missed (were computed)."""
    code = fingerprint_function(fn)
    results, computed = [], []
    for x in inputs:
        key = cache.key(stage, code, x)
        assert key is not None
        hit, value = cache.get(key)
        if not hit:
            value = fn(x)
            computed.append(x)
            cache.put(key, value)
        results.append(value)
    return results, computed


def test_invalidation_matrix(cache: StageCache, tmp_path: Path) -> None:
    inputs = [1, 2, 3, 4]
    v1 = _load(tmp_path, "mod_v1")
    assert _run_cached(cache, "p.parse", v1.parse, inputs) == ([2, 3, 4, 5], inputs)
    assert _run_cached(cache, "p.scale", v1.scale, inputs) == ([10, 20, 30, 40], inputs)

    # Nothing changed: everything is served.
    assert _run_cached(cache, "p.parse", v1.parse, inputs) == ([2, 3, 4, 5], [])
    same = _load(tmp_path, "mod_same")  # the same code loaded again, in another module
    assert _run_cached(cache, "p.parse", same.parse, inputs)[1] == []

    # The function's code changes: all of parse recomputes, scale does not.
    v2 = _load(tmp_path, "mod_v2", op="-")
    assert _run_cached(cache, "p.parse", v2.parse, inputs) == ([0, 1, 2, 3], inputs)
    assert _run_cached(cache, "p.scale", v2.scale, inputs) == ([10, 20, 30, 40], [])

    # A constant parse reads changes: parse recomputes, scale (which does not read it) not.
    v3 = _load(tmp_path, "mod_v3", offset=100)
    assert _run_cached(cache, "p.parse", v3.parse, inputs) == ([101, 102, 103, 104], inputs)
    assert _run_cached(cache, "p.scale", v3.scale, inputs)[1] == []

    # One input changes: only it recomputes.
    changed = [1, 2, 30, 4]
    assert _run_cached(cache, "p.parse", v3.parse, changed) == ([101, 102, 130, 104], [30])

    # Going back to earlier code finds its entries again: nothing was overwritten.
    assert _run_cached(cache, "p.parse", v1.parse, inputs) == ([2, 3, 4, 5], [])

    # Same code under another stage name: its own entries.
    assert _run_cached(cache, "q.parse", v1.parse, inputs)[1] == inputs


def test_closed_over_value_invalidates(cache: StageCache) -> None:
    def make(k: int) -> Callable[[int], int]:
        def add(x: int) -> int:
            return x + k

        return add

    assert _run_cached(cache, "c.add", make(1), [1, 2])[1] == [1, 2]
    assert _run_cached(cache, "c.add", make(1), [1, 2])[1] == []
    assert _run_cached(cache, "c.add", make(5), [1, 2]) == ([6, 7], [1, 2])


def test_equal_inputs_of_other_types_do_not_share_entries(cache: StageCache) -> None:
    results, computed = _run_cached(cache, "t.repr", repr, [1, 1.0, True, "1", b"1", (1,), [1]])
    assert results == ["1", "1.0", "True", "'1'", "b'1'", "(1,)", "[1]"]
    assert len(computed) == 7


def test_a_blob_moved_under_another_key_is_refused(cache: StageCache) -> None:
    """A valid blob copied over another entry's file (a sync tool, a manual copy, a
    bug) passes every checksum; it must still never answer for the other key."""
    a, b = cache.key("s", "c", "a"), cache.key("s", "c", "b")
    assert a is not None and b is not None
    cache.put(a, "result of a")
    cache.put(b, "result of b")
    shutil.copyfile(_blob_path(cache, a), _blob_path(cache, b))
    assert cache.get(b) == (False, None)
    assert cache.statistics().damaged == 1
    assert not _blob_path(cache, b).exists()  # it cannot be hit: it is removed
    assert cache.get(a) == (True, "result of a")  # the original is untouched
    # The blob store alone refuses it too, whatever the payload.
    blobs = cache.blobs
    blobs.put("cd" * 32, b"payload", label="x")
    blobs.path_of("ef" * 32).parent.mkdir()
    shutil.copyfile(blobs.path_of("cd" * 32), blobs.path_of("ef" * 32))
    assert blobs.fetch("ef" * 32) == (None, True)
    assert blobs.get("cd" * 32) == b"payload"
