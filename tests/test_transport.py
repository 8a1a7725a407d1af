"""Failures across the process boundary: exceptions keep their type, blame is exact.

A process stage must fail like a thread stage. An exception that cannot be pickled
as it is comes back as itself (a subclass of its class, with its message and the
attributes that pickle) or, if its class cannot be imported here, as a
``RemoteError`` that retry filters match by the class's qualified name. A value
that cannot cross the pipes, either way, fails its own unit and no other. Every
case runs on every executor with the same assertions, except where a value that
cannot be pickled is no problem at all (executors that share memory).
"""

from __future__ import annotations

import collections
import copy
import os
import pickle
import threading
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import contractfns as fns
import conveyor as cv
from conftest import wait_until
from conveyor.executors import Task, executor_class, executor_names
from conveyor.executors.processes.remote import pack, rebuild

pytestmark = pytest.mark.timeout(120)

ALL = executor_names()
GHOST = f"contractfns.{fns.GhostError.__qualname__}"


def out_of_process(executor: str) -> bool:
    return not executor_class(executor).traits.shares_memory


class Failures(cv.Instrument):
    """What the failure policy saw: each failed call, and each dead letter."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, int, bool]] = []
        self.dead: dict[Any, BaseException] = {}
        self.read = 0
        self.states: collections.Counter[str] = collections.Counter()

    def items_read(self, keys: Any, t_ns: int) -> None:
        self.read += len(keys)

    def unit_failed(self, stage: str, key: Any, error: Any, tb: Any, attempt: int,
                    retrying: bool, t_ns: int) -> None:  # fmt: skip
        self.calls.append((key, attempt, retrying))

    def dead_lettered(
        self, stage: str, key: Any, value: Any, error: Any, tb: Any, t_ns: int
    ) -> None:
        self.dead[key] = error

    def roots_finished(self, roots: Any, state: str, t_ns: int) -> None:
        self.states[state] += len(roots)

    def attempts(self, key: Any) -> list[tuple[int, bool]]:
        return [(a, r) for k, a, r in self.calls if k == key]

    def assert_balanced(self) -> None:
        assert sum(self.states.values()) == self.read, (self.read, self.states)


def jobs(tmp_path: Path, n: int, payloads: dict[int, Any] | None = None) -> list[fns.Job]:
    log = str(tmp_path / "calls.log")
    return [fns.Job(i, log, (payloads or {}).get(i)) for i in range(n)]


def calls(tmp_path: Path) -> collections.Counter[int]:
    return collections.Counter(fns.calls(str(tmp_path / "calls.log")))


# --- exceptions keep their type ----------------------------------------------------

KINDS = {
    "multi-arg-constructor": (fns.raise_args, fns.ArgsError),
    "unpicklable-attribute": (fns.raise_locked, fns.LockedError),
    "class-not-importable": (fns.raise_ghost, fns.GhostError),
}


def check_error(err: BaseException, kind: str, executor: str, n: int) -> None:
    """``err`` is what the stage raised on item n, as faithfully as it can travel."""
    remote = out_of_process(executor)
    if kind == "multi-arg-constructor":
        assert isinstance(err, fns.ArgsError) and type(err).__name__ == "ArgsError"
        assert str(err) == f"error {n}: no such thing"
        assert (err.code, err.detail) == (n, "no such thing")
    elif kind == "unpicklable-attribute":
        assert isinstance(err, fns.LockedError) and type(err).__name__ == "LockedError"
        assert str(err) == f"item {n} is locked" and err.n == n
        assert hasattr(err, "lock") != remote  # the lock cannot travel; the rest does
    elif remote:
        assert isinstance(err, cv.RemoteError) and not isinstance(err, fns.GhostError)
        assert err.type_name == GHOST and err.message == f"item {n} is haunted"
        assert err.type_names[:3] == (GHOST, "builtins.ValueError", "builtins.Exception")
        assert GHOST in str(err) and f"item {n} is haunted" in str(err)
    else:
        assert isinstance(err, fns.GhostError) and str(err) == f"item {n} is haunted"
    if remote:
        assert isinstance(err.__cause__, cv.RemoteTraceback)
        tb = err.__cause__.tb  # the worker's traceback, naming the original class
        assert "in raise_" in tb and f"{KINDS[kind][1].__qualname__}: " in tb


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("executor", ALL)
def test_retry_filters_match_custom_exceptions_on_every_executor(
    executor: str, kind: str, tmp_path: Path
) -> None:
    fn, cls = KINDS[kind]
    seen = Failures()
    retry = cv.Retry(attempts=3, backoff=0, jitter=0, on=(cls,))
    stage = cv.stage(fn, executor=executor, workers=2, retry=retry, on_error="skip")
    run = cv.Pipeline("errors", [stage]).run(jobs(tmp_path, 4), instruments=[seen])
    assert run.results == []
    assert calls(tmp_path) == collections.Counter(dict.fromkeys(range(4), 3))
    for n in range(4):
        assert seen.attempts((n,)) == [(1, True), (2, True), (3, False)]
        check_error(seen.dead[(n,)], kind, executor, n)
    stats = run.statistics().stages[stage.name]
    assert (stats.calls, stats.retries, stats.dead_lettered) == (12, 8, 4)
    seen.assert_balanced()


@pytest.mark.parametrize("on", ["a-base-class", "another-class"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("executor", ALL)
def test_retry_filters_match_bases_and_nothing_else_on_every_executor(
    executor: str, kind: str, on: str, tmp_path: Path
) -> None:
    fn, cls = KINDS[kind]
    base = cls.__mro__[1]  # Exception, or ValueError for the ghost
    seen = Failures()
    retry = cv.Retry(attempts=2, backoff=0, on=(base,) if on == "a-base-class" else (KeyError,))
    stage = cv.stage(fn, executor=executor, retry=retry, on_error="skip")
    cv.Pipeline("errors", [stage]).run(jobs(tmp_path, 2), instruments=[seen])
    expected = [(1, True), (2, False)] if on == "a-base-class" else [(1, False)]
    assert seen.attempts((0,)) == seen.attempts((1,)) == expected
    check_error(seen.dead[(1,)], kind, executor, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("executor", ALL)
def test_a_custom_exception_fails_the_run_as_itself(
    executor: str, kind: str, tmp_path: Path
) -> None:
    fn, cls = KINDS[kind]
    stage = cv.stage(fn, executor=executor, retry=cv.Retry(attempts=2, backoff=0, on=(cls,)))
    with pytest.raises(cv.StageError, match=r"item 0 \(attempt 2 of 2\)") as info:
        cv.Pipeline("errors", [stage]).run(jobs(tmp_path, 1))
    check_error(info.value.__cause__, kind, executor, 0)  # type: ignore[arg-type]
    assert cls.__name__ in str(info.value)


@pytest.mark.parametrize("executor", ALL)
def test_an_exception_that_cannot_be_printed_fails_only_its_item(
    executor: str, tmp_path: Path
) -> None:
    seen = Failures()
    stage = cv.stage(fns.unprintable_on_7, executor=executor, workers=2, on_error="skip")
    run = cv.Pipeline("errors", [stage]).run(jobs(tmp_path, 20), instruments=[seen])
    assert sorted(run.results) == [n for n in range(20) if n != 7]
    assert list(seen.dead) == [(7,)] and isinstance(seen.dead[(7,)], fns.Unprintable)
    assert calls(tmp_path) == collections.Counter(range(20))  # no call ran twice
    assert run.statistics().stages[stage.name].lost_workers == 0
    seen.assert_balanced()


@pytest.mark.parametrize("executor", ALL)
def test_an_exception_that_cannot_be_printed_fails_the_run_naming_its_item(
    executor: str, tmp_path: Path
) -> None:
    stage = cv.stage(fns.unprintable_on_7, executor=executor)
    with pytest.raises(cv.StageError, match=r"item 7: Unprintable: <str\(\) of it raised") as info:
        cv.Pipeline("errors", [stage]).run(jobs(tmp_path, 20))
    assert isinstance(info.value.__cause__, fns.Unprintable) and info.value.key == (7,)


# --- the pieces, in this process: proxies ---------------------------------------------


def test_a_proxy_is_an_instance_of_its_class_and_pickles_as_itself() -> None:
    packed = pack(fns.ArgsError(3, "gone"))
    assert packed.blob is None  # ArgsError("error 3: gone") is what unpickling would call
    err = rebuild(packed, "the worker's traceback")
    assert isinstance(err, fns.ArgsError) and type(err) is not fns.ArgsError
    assert (str(err), repr(err)) == ("error 3: gone", "ArgsError('error 3: gone')")
    assert (err.code, err.detail, err.args) == (3, "gone", ("error 3: gone",))
    assert traceback.format_exception_only(type(err), err) == [
        "contractfns.ArgsError: error 3: gone\n"
    ]
    assert isinstance(err.__cause__, cv.RemoteTraceback)
    for again in (pickle.loads(pickle.dumps(err)), copy.copy(err)):
        assert type(again) is type(err) and str(again) == str(err)
        assert vars(again) == vars(err) == {"code": 3, "detail": "gone"}


def test_proxies_keep_builtin_bases_and_a_sealed_class_comes_back_as_remote_error() -> None:
    disk = rebuild(pack(fns.DiskError("/data", why="full")), "")
    assert isinstance(disk, fns.DiskError) and isinstance(disk, OSError)
    assert str(disk) == "[Errno 28] /data: full" and disk.path == "/data"
    # A class that refuses subclasses comes back as a RemoteError with its names.
    sealed = rebuild(pack(fns.Sealed(7, "shut")), "")
    assert isinstance(sealed, cv.RemoteError) and sealed.message == "7 shut"
    assert sealed.type_name == "contractfns.Sealed" and sealed.is_a(Exception)
    assert pickle.loads(pickle.dumps(sealed)).type_names == sealed.type_names


def test_an_exception_that_pickles_comes_back_as_itself() -> None:
    err = rebuild(pack(ValueError("plain")), "tb")
    assert type(err) is ValueError and err.args == ("plain",)
    assert isinstance(err.__cause__, cv.RemoteTraceback) and err.__cause__.tb == "tb"


def test_retry_matches_a_remote_error_by_the_names_of_its_class_and_bases() -> None:
    ghost = rebuild(pack(fns.GhostError("boo")), "")
    assert isinstance(ghost, cv.RemoteError)
    for on, retried in [
        ((fns.GhostError,), True),
        ((ValueError,), True),
        ((Exception,), True),
        ((cv.RemoteError,), True),
        ((KeyError, TypeError), False),
        ((cv.ConveyorError,), False),  # the original was not one
        ((fns._make_ghost_error(),), True),  # another class of the same name: by name
    ]:
        assert cv.Retry(on=on).retried(ghost, 1) is retried, on


# --- blame is exact ----------------------------------------------------------------

BAD = 137


@pytest.mark.parametrize("payload", ["lock", "keyword-only"], ids=["pickle", "unpickle"])
@pytest.mark.parametrize("executor", ALL)
def test_one_result_that_cannot_travel_among_300_dead_letters_that_item_alone(
    executor: str, payload: str, tmp_path: Path
) -> None:
    # "lock": the result cannot be pickled in the worker; "keyword-only": it pickles
    # there but cannot be unpickled here.
    seen = Failures()
    stage = cv.stage(fns.record_of, executor=executor, workers=2, on_error="skip")
    items = jobs(tmp_path, 300, {BAD: payload})
    run = cv.Pipeline("results", [stage]).run(items, instruments=[seen])
    assert calls(tmp_path) == collections.Counter(range(300))  # no call ran twice
    delivered = sorted(r["n"] for r in run.results)
    if out_of_process(executor):
        assert delivered == [n for n in range(300) if n != BAD]
        assert list(seen.dead) == [(BAD,)]
        assert "cannot be" in str(seen.dead[(BAD,)])
        assert run.statistics().stages[stage.name].dead_lettered == 1
    else:
        assert delivered == list(range(300)) and not seen.dead
    seen.assert_balanced()


@pytest.mark.parametrize("payload", ["lock", "keyword-only"], ids=["pickle", "unpickle"])
@pytest.mark.parametrize("executor", ALL)
def test_one_input_that_cannot_travel_among_300_dead_letters_that_item_alone(
    executor: str, payload: str, tmp_path: Path
) -> None:
    # "lock": the item cannot be pickled here; "keyword-only": it pickles here but
    # cannot be unpickled in the worker.
    seen = Failures()
    stage = cv.stage(fns.payload_n, executor=executor, workers=2, on_error="skip")
    bad: Any = threading.Lock() if payload == "lock" else fns.KeywordOnly(BAD, reason="x")
    run = cv.Pipeline("inputs", [stage]).run(jobs(tmp_path, 300, {BAD: bad}), instruments=[seen])
    if out_of_process(executor):
        assert sorted(run.results) == [n for n in range(300) if n != BAD]
        assert list(seen.dead) == [(BAD,)]
        where = "pickled to send it to a" if payload == "lock" else "unpickled in the"
        assert f"cannot be {where} process worker" in str(seen.dead[(BAD,)])
        assert calls(tmp_path) == collections.Counter(n for n in range(300) if n != BAD)
        assert run.statistics().stages[stage.name].lost_workers == 0
    else:
        assert sorted(run.results) == list(range(300)) and not seen.dead
    seen.assert_balanced()


def run_one_task(fn: Any, units: list[Any]) -> Any:
    """Send ``units`` to one process worker as a single task; its outcome."""
    stage = cv.stage(fn, executor="processes")
    posted: list[Any] = []
    ex = executor_class("processes")(stage, posted.append)
    ex.start()
    try:
        ex.submit(Task(1, stage.name, units, [(i,) for i in range(len(units))]))
        assert wait_until(lambda: posted, timeout=60)
    finally:
        ex.shutdown(cancel=False)
    return posted[0]


@pytest.mark.parametrize("payload", ["lock", "keyword-only"], ids=["pickle", "unpickle"])
def test_in_one_task_of_300_units_only_the_result_that_cannot_travel_fails(
    payload: str, tmp_path: Path
) -> None:
    out = run_one_task(fns.record_of, jobs(tmp_path, 300, {BAD: payload}))
    assert [f.unit for f in out.failures] == [BAD] and not out.failures[0].fatal
    assert isinstance(out.failures[0].error, TypeError)
    assert len(out.results) == 300 and len(out.stamps) == 301
    assert [r["n"] for i, r in enumerate(out.results) if i != BAD] == [
        n for n in range(300) if n != BAD
    ]


def test_in_one_task_of_300_units_only_the_input_that_cannot_travel_fails(
    tmp_path: Path,
) -> None:
    units = jobs(tmp_path, 300, {BAD: fns.KeywordOnly(BAD, reason="made in the driver")})
    out = run_one_task(fns.payload_n, units)
    assert [f.unit for f in out.failures] == [BAD] and not out.failures[0].fatal
    assert "cannot be unpickled in the process worker" in str(out.failures[0].error)
    assert out.results[:BAD] == list(range(BAD))  # the units after it run again, free


def test_a_tasks_results_travel_in_one_pickle() -> None:
    # One pickle for all the results of a task (the fast path), so results that share
    # an object still share it when they arrive, as they do with threads.
    out = run_one_task(fns.shared_pair, [0, 1, 2])
    assert not out.failures
    assert out.results[0][1] is out.results[1][1] is out.results[2][1]


@pytest.fixture
def no_leftover_segments():  # type: ignore[no-untyped-def]
    yield
    if os.path.isdir("/dev/shm"):
        mine = f"cv{os.getpid()}x"
        assert wait_until(lambda: not [e for e in os.listdir("/dev/shm") if e.startswith(mine)])


@pytest.mark.usefixtures("no_leftover_segments")
@pytest.mark.parametrize("way", ["input", "result"])
def test_shared_memory_arrays_beside_a_value_that_cannot_travel(way: str, tmp_path: Path) -> None:
    # Salvaging rebuilds the arrays over their segments like the fast path, and the
    # segments of the unit that failed are not left behind.
    seen = Failures()
    array = np.full(2 * 1024 * 1024, 9, dtype=np.uint8)
    if way == "input":
        fn, payloads = fns.payload_n, {0: array, 1: fns.KeywordOnly(1, reason="x"), 2: array}
    else:
        fn, payloads = fns.array_or_stray, {}
    stage = cv.stage(fn, executor="processes", on_error="skip")
    run = cv.Pipeline("arrays", [stage]).run(jobs(tmp_path, 3, payloads), instruments=[seen])
    assert list(seen.dead) == [(1,)]
    if way == "input":
        assert sorted(run.results) == [0, 2]
    else:
        assert sorted(int(r[0]) for r in run.results) == [0, 2]
        assert all(r.nbytes == 2 * 1024 * 1024 for r in run.results)
    seen.assert_balanced()
