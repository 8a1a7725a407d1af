"""The cache hook: cached stages compute each distinct input once, on every executor."""

from __future__ import annotations

import functools
import threading
import warnings
from pathlib import Path

import pytest

import cachefns as c
import conveyor as cv
import stagefns as f
from conveyor.cache import CacheWarning, StageCache


def cached_pipeline(executor: str, log: Path, cache: Path, **options) -> cv.Pipeline:  # type: ignore[no-untyped-def]
    square = functools.partial(f.logged_square, str(log))
    return cv.Pipeline(
        "cached",
        [
            cv.stage(
                square, name="square", executor=executor, workers=2, cache=str(cache), **options
            ),
            f.inc,
        ],
    )


def test_a_second_run_is_served_from_the_cache(executor: str, tmp_path: Path) -> None:
    log, cache = tmp_path / "calls.log", tmp_path / "cache"
    pipe = cached_pipeline(executor, log, cache)
    first = pipe.run(range(40), ordered=True)
    assert sorted(f.calls(str(log))) == list(range(40))
    assert first.statistics().stages["square"].cache_hits == 0

    second = pipe.run(range(40), ordered=True)
    assert second.results == first.results == [x * x + 1 for x in range(40)]
    assert len(f.calls(str(log))) == 40  # no new call
    assert second.statistics().stages["square"].cache_hits == 40

    # one changed input: exactly one new call
    changed = [*range(39), 1000]
    third = pipe.run(changed, ordered=True)
    assert third.results[-1] == 1000 * 1000 + 1
    assert f.calls(str(log))[40:] == [1000]


def test_changing_the_code_misses_the_cache(tmp_path: Path) -> None:
    log, cache = tmp_path / "calls.log", tmp_path / "cache"
    cached_pipeline("threads", log, cache).run(range(10))
    # same name, same inputs, different code: every item is computed again
    double = functools.partial(f.logged_square, str(log))

    def other(x: int) -> int:
        return double(x) + 0  # a different function body

    pipe = cv.Pipeline("cached", [cv.stage(other, name="square", cache=str(cache)), f.inc])
    pipe.run(range(10))
    assert len(f.calls(str(log))) == 20


def test_cache_hits_are_reported_to_instruments(tmp_path: Path) -> None:
    class Hits(cv.Instrument):
        def __init__(self) -> None:
            self.hits: list[tuple] = []  # type: ignore[type-arg]
            self.ran: list[tuple] = []  # type: ignore[type-arg]

        def cache_hits(self, stage, keys, t_ns):  # type: ignore[no-untyped-def]
            self.hits.extend(keys)

        def task_finished(self, stage, task, worker, keys, starts_ns, ends_ns, error):  # type: ignore[no-untyped-def]
            if stage == "square":
                self.ran.extend(keys)

    pipe = cached_pipeline("sync", tmp_path / "log", tmp_path / "cache")
    pipe.run(range(0, 20, 2))
    probe = Hits()
    pipe.run(range(20), instruments=[probe])
    assert sorted(probe.hits) == [(x,) for x in range(0, 20, 2)]
    assert sorted(probe.ran) == [(x,) for x in range(1, 20, 2)]


def test_unfingerprintable_inputs_are_computed_and_the_user_told_once(tmp_path: Path) -> None:
    def ident(x):  # type: ignore[no-untyped-def]
        return x

    pipe = cv.Pipeline("p", [cv.stage(ident, cache=str(tmp_path / "c"), executor="sync")])
    locks = [threading.Lock() for _ in range(5)]
    with pytest.warns(CacheWarning, match="cannot be fingerprinted") as record:
        out = pipe.run(locks).results
    assert out == locks
    assert len([w for w in record if issubclass(w.category, CacheWarning)]) == 1


@pytest.mark.parametrize("executor", ["sync", "threads", "processes"])
def test_async_stages_are_cached(tmp_path: Path, executor: str) -> None:
    """An ``async def`` stage looks every unit up first and runs only the misses, on
    its event loop; a failing unit is reported as its own and is not cached."""
    import cachefns

    log = str(tmp_path / "log")
    triple = functools.partial(cachefns.async_logged_triple, log)
    stage = cv.stage(
        triple, name="triple", cache=str(tmp_path / "c"), executor=executor, concurrency=4,
        on_error="skip",
    )  # fmt: skip
    pipe = cv.Pipeline("p", [stage], ordered=True)
    first = pipe.run([1, 2, -1, 3])
    assert first.results == [3, 6, 9] and sorted(cachefns.calls(log)) == [1, 2, 3]
    assert first.statistics().stages["triple"].dead_lettered == 1
    second = pipe.run([3, 4, 1, 2, -1])
    assert second.results == [9, 12, 3, 6]
    assert sorted(cachefns.calls(log)) == [1, 2, 3, 4]  # only the new input ran
    assert second.statistics().stages["triple"].cache_hits == 3


def test_cache_true_uses_the_conveyor_cache_folder(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CONVEYOR_CACHE")  # the default, when the variable is not set
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "log"
    pipe = cv.Pipeline(
        "p", [cv.stage(functools.partial(f.logged_square, str(log)), name="sq", cache=True)]
    )
    pipe.run(range(5))
    pipe.run(range(5))
    assert len(f.calls(str(log))) == 5
    assert (tmp_path / ".conveyor" / "cache").is_dir()


def test_the_conveyor_cache_variable_names_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_CACHE", str(tmp_path / "elsewhere"))
    log = tmp_path / "log"
    pipe = cv.Pipeline(
        "p", [cv.stage(functools.partial(f.logged_square, str(log)), name="sq", cache=True)]
    )
    pipe.run(range(3))
    assert len(StageCache().entries()) == 3  # StageCache() reads the variable too
    assert (tmp_path / "elsewhere").is_dir()


# --- what the fingerprint cannot see: declared, keyed, or not cached ------------------------


def test_a_global_that_cannot_be_fingerprinted_turns_the_cache_off_with_one_warning(
    tmp_path: Path,
) -> None:
    pipe = cv.Pipeline("g", [cv.stage(c.guarded_double, cache=str(tmp_path / "c"))])
    with pytest.warns(CacheWarning) as record:
        assert pipe.run([1, 2, 3], ordered=True).results == [2, 4, 6]
    (warning,) = record
    text = str(warning.message)
    assert "stage 'guarded_double' is not cached in this run" in text
    assert "the global 'LOCK', which guarded_double reads: it holds a _thread.lock" in text
    assert "cache_version='1'" in text
    assert StageCache(tmp_path / "c").entries() == []


def test_cache_version_caches_what_the_fingerprint_cannot_see_and_keys_by_it(
    tmp_path: Path,
) -> None:
    def run(version: str) -> int:
        stage = cv.stage(c.guarded_double, cache=str(tmp_path / "c"), cache_version=version)
        out = cv.Pipeline("g", [stage]).run([1, 2, 3], ordered=True)
        assert out.results == [2, 4, 6]
        return out.statistics().stages["guarded_double"].cache_hits

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the user declared the version
        assert run("1") == 0
        assert run("1") == 3
        assert run("2") == 0  # a new version misses
        assert run("1") == 3  # and the old entries are still there


def test_cache_key_keys_inputs_that_cannot_be_fingerprinted(executor: str, tmp_path: Path) -> None:
    records = [c.Record(i, i * 10) for i in range(6)]
    plain = cv.stage(c.record_double, executor=executor, cache=str(tmp_path / "a"))
    with pytest.warns(
        CacheWarning,
        match=r"an input of type Record \(it holds a reference cycle through a Record\) .*give the stage cache_key=",
    ) as record:
        assert cv.Pipeline("k", [plain]).run(records, ordered=True).results == [
            i * 20 for i in range(6)
        ]
    assert len(record) == 1

    keyed = plain.with_options(cache=str(tmp_path / "b"), cache_key=c.record_id)
    pipe = cv.Pipeline("k", [keyed])
    first = pipe.run(records, ordered=True)
    second = pipe.run(records, ordered=True)
    assert first.results == second.results == [i * 20 for i in range(6)]
    assert second.statistics().stages["record_double"].cache_hits == 6


def test_cache_options_are_checked_when_the_stage_is_made() -> None:
    with pytest.raises(cv.PipelineError, match="cache_version= only applies to a cached stage"):
        cv.stage(f.inc, cache_version="1")
    with pytest.raises(cv.PipelineError, match=r"cache_check=2; give the share of hits"):
        cv.stage(f.inc, cache=True, cache_check=2)
    with pytest.raises(cv.PipelineError, match="cache_version=True; give a string"):
        cv.stage(f.inc, cache=True, cache_version=True)  # type: ignore[arg-type]
    with pytest.raises(cv.PipelineError, match="cache_key=3 is not callable"):
        cv.stage(f.inc, cache=True, cache_key=3)  # type: ignore[arg-type]
    with pytest.raises(cv.PipelineError, match="cache_key cannot be sent to a 'processes' worker"):
        cv.stage(f.inc, cache=True, executor="processes", cache_key=lambda x: x)
    cv.stage(f.inc, cache=True, executor="threads", cache_key=lambda x: x)  # no pickling there


def test_cache_check_recomputes_hits_and_replaces_a_stale_one(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("old")
    root = tmp_path / "c"

    def run(check: float) -> tuple[list[str], int]:
        stage = cv.stage(c.read_file, executor="threads", cache=str(root), cache_check=check)
        out = cv.Pipeline("chk", [stage]).run([str(data)])
        return out.results, out.statistics().stages["read_file"].cache_hits

    assert run(0) == (["old"], 0)
    data.write_text("new")  # the input (a path) did not change: the fingerprint cannot see it
    assert run(0) == (["old"], 1)  # what a plain hit serves
    with pytest.warns(CacheWarning, match="a cached result differs from the one computed now"):
        assert run(1.0) == (["new"], 0)
    assert run(0) == (["new"], 1)  # the fresh result replaced the stale entry
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(1.0) == (["new"], 0)  # checked, equal: no warning (a call, not a hit)
