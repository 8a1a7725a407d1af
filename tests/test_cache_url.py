"""A cache at an fsspec URL: the same guarantees as in a folder, reached by every worker."""

from __future__ import annotations

import functools
import socket
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from conveyor.cache import CacheError, CacheWarning, StageCache, default_cache_root, verify_cache

fsspec = pytest.importorskip("fsspec", reason="URL caches need fsspec: pip install -e '.[files]'")


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A fresh ``memory://`` root, removed afterwards (the memory file system is global)."""
    url = f"memory://conveyor-test-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    path = url.removeprefix("memory://")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _key(cache: StageCache, x: object) -> str:
    key = cache.key("p/s", "code", x)
    assert key is not None
    return key


def test_a_memory_url_cache_stores_lists_and_clears(memory_url: str) -> None:
    cache = StageCache(memory_url)
    assert cache.root == memory_url
    keys = [_key(cache, i) for i in range(5)]
    for i, k in enumerate(keys):
        assert cache.put(k, {"value": i * i}, stage="p/s")
    assert [cache.get(k) for k in keys] == [(True, {"value": i * i}) for i in range(5)]
    entries = cache.entries()
    assert sorted(e.key for e in entries) == sorted(keys)
    assert all(e.stage == "p/s" and str(e.path).startswith(memory_url) for e in entries)
    assert cache.size_bytes() == sum(e.size_bytes for e in entries) > 0
    # another StageCache on the same URL (a second worker) sees the same entries
    assert StageCache(memory_url).get(keys[2]) == (True, {"value": 4})
    assert cache.clear("p/s") == 5
    assert cache.entries() == [] and cache.get(keys[0]) == (False, None)


def test_a_damaged_or_foreign_blob_at_a_url_is_never_returned(memory_url: str) -> None:
    cache = StageCache(memory_url)
    fs = fsspec.filesystem("memory")
    a, b = _key(cache, "a"), _key(cache, "b")
    cache.put(a, "value of a")
    where = str(cache.blobs.path_of(a)).removeprefix("memory://")
    whole = fs.cat_file(where)
    fs.pipe_file(where, whole[:-3])  # torn: a partial object
    assert cache.get(a) == (False, None)
    assert not fs.exists(where)  # the damaged blob is deleted
    assert cache.statistics().damaged == 1
    # a valid blob of another key copied over b's name: never answers for b
    cache.put(a, "value of a")
    fs.pipe_file(str(cache.blobs.path_of(b)).removeprefix("memory://"), whole)
    assert cache.get(b) == (False, None)
    assert cache.get(a) == (True, "value of a")


def test_a_url_write_is_one_whole_put(memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an object store a blob is written with one put of the whole object (atomic
    there), never in parts where a reader could see some of it."""
    cache = StageCache(memory_url)
    fs = cache.storage.fs  # type: ignore[attr-defined]
    puts: list[int] = []
    real = fs.pipe_file
    monkeypatch.setattr(
        fs, "pipe_file", lambda path, data, **kw: (puts.append(len(data)), real(path, data, **kw))
    )
    key = _key(cache, 1)
    cache.put(key, b"x" * 100_000)
    assert len(puts) == 1 and puts[0] > 100_000
    assert cache.get(key) == (True, b"x" * 100_000)


def test_a_pipeline_on_threads_reuses_a_memory_url_cache(memory_url: str, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    square = functools.partial(f.logged_square, str(log))
    pipe = cv.Pipeline("urlcache", [cv.stage(square, name="square", workers=2, cache=memory_url)])
    assert pipe.run(range(20), ordered=True).results == [x * x for x in range(20)]
    second = pipe.run(range(20), ordered=True)
    assert second.results == [x * x for x in range(20)]
    assert second.statistics().stages["square"].cache_hits == 20
    assert len(f.calls(str(log))) == 20
    # the run left its manifest at the URL: the audit recomputes entries from there
    report = verify_cache(StageCache(memory_url), sample=5, seed=1)
    assert report.total == 20 and report.count("same") == 5


def test_workers_in_other_processes_share_a_file_url_cache(executor: str, tmp_path: Path) -> None:
    folder = tmp_path / "shared cache"
    url = "file://" + str(folder)  # fsspec reads the path as written
    log = tmp_path / "calls.log"
    square = functools.partial(f.logged_square, str(log))
    pipe = cv.Pipeline(
        "urlcache", [cv.stage(square, name="square", executor=executor, workers=2, cache=url)]
    )
    first = pipe.run(range(30), ordered=True)
    assert first.results == [x * x for x in range(30)]
    assert sorted(f.calls(str(log))) == list(range(30))
    second = pipe.run(range(30), ordered=True)
    assert second.results == first.results
    assert second.statistics().stages["square"].cache_hits == 30
    assert len(f.calls(str(log))) == 30  # every worker found what another one wrote
    # the layout is the folder cache's: the same entries through the plain path
    assert len(StageCache(folder).entries()) == 30
    assert not [p for p in folder.rglob(".tmp-*")]  # no temporary file left behind


def test_a_memory_url_cannot_serve_process_workers(memory_url: str) -> None:
    pipe = cv.Pipeline("mem", [cv.stage(f.square, executor="processes", cache=memory_url)])
    with pytest.raises(CacheError, match=r"memory:// cache .* lives in one process.*file://"):
        pipe.run(range(3))


def test_an_unknown_protocol_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        CacheError, match=r"cannot use the cache URL 'nosuchproto://x'.*Protocol not known"
    ):
        StageCache("nosuchproto://x")
    pipe = cv.Pipeline("bad", [cv.stage(f.square, name="sq", cache="nosuchproto://x")])
    with pytest.raises(CacheError, match=r"stage 'sq': cannot use the cache URL") as err:
        pipe.run(range(3))
    assert err.value.stage == "sq" and err.value.path == "nosuchproto://x"


def test_a_protocol_whose_package_is_missing_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from fsspec.registry import known_implementations

    spec = {"class": "conveyor_no_such_package.FileSystem", "err": "needs a package"}
    monkeypatch.setitem(known_implementations, "cvmissing", spec)
    with pytest.raises(
        CacheError, match=r"cvmissing:// URLs .* pip install conveyor_no_such_package"
    ):
        StageCache("cvmissing://bucket/cache")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_url_fails_the_run_at_start_or_runs_uncached(tmp_path: Path) -> None:
    url = f"ftp://127.0.0.1:{_closed_port()}/cache"
    pipe = cv.Pipeline("far", [cv.stage(f.square, name="sq", cache=url)])
    with pytest.raises(
        CacheError, match=r"stage 'sq': cannot reach the cache at .*ftp://127.0.0.1"
    ):
        pipe.run(range(3))
    lenient = cv.Pipeline("far", [cv.stage(f.square, name="sq", cache=url, cache_required=False)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = lenient.run(range(3), ordered=True)
    assert out.results == [0, 1, 4]
    assert any(
        issubclass(w.category, CacheWarning) and "runs uncached" in str(w.message) for w in caught
    )


def test_a_failing_store_is_an_oserror_the_engine_handles(
    memory_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A backend's own error (a cloud SDK's) mid-run: items are computed, never failed."""
    cache = StageCache(memory_url)

    class Throttled(Exception):
        pass

    def refuse(*a: object, **kw: object) -> None:
        raise Throttled("SlowDown: please reduce your request rate")

    monkeypatch.setattr(cache.storage.fs, "pipe_file", refuse)  # type: ignore[attr-defined]
    with pytest.raises(OSError, match="Throttled: SlowDown"):
        cache.put(_key(cache, 1), 1)


def test_conveyor_cache_may_name_a_url(memory_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_CACHE", memory_url)
    assert default_cache_root() == memory_url
    assert StageCache().root == memory_url


def test_a_file_url_write_is_synced_and_renamed_as_in_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    cache = StageCache(f"file://{tmp_path / 'c'}")
    cache.put(_key(cache, 1), "one")
    assert len(synced) == 1
    fast = StageCache(f"file://{tmp_path / 'd'}", fsync=False)
    fast.put(_key(fast, 1), "one")
    assert len(synced) == 1  # fsync=False skips it, as for a folder
    assert fast.get(_key(fast, 1)) == (True, "one")
    assert not list(tmp_path.rglob(".tmp-*"))


def test_a_worker_that_cannot_open_the_url_computes_and_says_so() -> None:
    """The driver reached the URL; a node without the route or the package does not:
    its items are computed, never failed, and the outcome carries one sentence."""
    from conveyor.cache._engine import run_cached
    from conveyor.executors.base import CacheSpec

    spec = CacheSpec("nosuchproto://bucket/cache", "p/square", "code")
    out = run_cached(f.square, "map", [1, 2, 3], 0, 7, None, spec, False)
    assert out.results == [1, 4, 9] and not out.failures and out.hits == []
    assert out.uncached is not None
    assert out.uncached.startswith("the cache cannot be opened on this worker (cannot use")
