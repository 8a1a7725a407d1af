"""The cache hook: cached stages compute each distinct input once, on every executor."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import pytest

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


def test_cache_is_refused_for_async_functions() -> None:
    with pytest.raises(cv.PipelineError, match="not supported for async"):
        cv.stage(f.async_double, cache=True)


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
