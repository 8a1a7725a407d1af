"""Failure handling in the engine: retries, dead letters, timeouts, worker loss."""

from __future__ import annotations

import functools
import itertools
import time
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from test_conformance import Ledger


def test_retries_get_every_item_through_random_failures(executor: str) -> None:
    policy = cv.Retry(attempts=15, backoff=0, jitter=0, on=(ConnectionError,))
    ledger = Ledger()
    pipe = cv.Pipeline(
        "flaky", [cv.stage(f.flaky, executor=executor, workers=2, retry=policy), f.inc]
    )
    run = pipe.run(range(300), instruments=[ledger])
    assert sorted(run.results) == [x + 1 for x in range(300)]
    stats = run.statistics().stages["flaky"]
    assert stats.retries > 20  # about one call in five failed
    assert stats.errors == stats.retries and stats.dead_lettered == 0
    assert set(ledger.states.values()) == {"done"} and len(ledger.states) == 300


def test_retry_only_the_exceptions_named() -> None:
    policy = cv.Retry(attempts=5, backoff=0, on=(ConnectionError,))
    pipe = cv.Pipeline("p", [cv.stage(f.fail_on_13, retry=policy)])
    with pytest.raises(cv.StageError, match="item 13") as info:
        pipe.run(range(20))
    assert "attempt 1 of 5" in str(info.value)  # ValueError is not retried


def test_exhausted_retries_fail_the_run_naming_the_attempts(executor: str) -> None:
    pipe = cv.Pipeline(
        "p", [cv.stage(f.fail_on_13, executor=executor, retry=cv.Retry(attempts=3, backoff=0.01))]
    )
    started = time.monotonic()
    with pytest.raises(cv.StageError, match=r"item 13 \(attempt 3 of 3\)"):
        pipe.run(range(40))
    assert time.monotonic() - started < 30  # promptly: no hang, on a loaded machine too


def test_backoff_waits_between_attempts() -> None:
    policy = cv.Retry(attempts=3, backoff=0.1, factor=2, jitter=0)
    calls: list[float] = []

    def always_fails(x: int) -> int:
        calls.append(time.monotonic())
        raise OSError("down")

    with pytest.raises(cv.StageError):
        cv.Pipeline("p", [cv.stage(always_fails, retry=policy)]).run([1])
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(calls) == 3
    assert 0.09 <= gaps[0] < 0.5 and 0.19 <= gaps[1] < 0.8


def test_skip_moves_bad_items_to_the_dead_letters(executor: str) -> None:
    class DeadLetters(cv.Instrument):
        def __init__(self) -> None:
            self.rows: list[tuple[str, tuple, object, str]] = []  # type: ignore[type-arg]

        def dead_lettered(self, stage, key, value, error, traceback, t_ns):  # type: ignore[no-untyped-def]
            self.rows.append((stage, key, value, type(error).__name__))

    dead, ledger = DeadLetters(), Ledger()
    pipe = cv.Pipeline(
        "skip",
        [
            cv.stage(f.bad_on_multiples_of_10, executor=executor, workers=2, on_error="skip"),
            cv.stage(f.inc, executor=executor),
        ],
    )
    run = pipe.run(range(100), instruments=[dead, ledger])
    assert sorted(run.results) == [x + 1 for x in range(100) if x % 10]
    assert sorted(dead.rows) == [
        ("bad_on_multiples_of_10", (x,), x, "ValueError") for x in range(0, 100, 10)
    ]
    assert run.statistics().stages["bad_on_multiples_of_10"].dead_lettered == 10
    assert {r for r, s in ledger.states.items() if s == "dead_lettered"} == set(range(0, 100, 10))
    assert sum(1 for s in ledger.states.values() if s == "done") == 90


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_a_call_past_its_timeout_is_stopped_and_the_run_goes_on(executor: str) -> None:
    ledger = Ledger()
    pipe = cv.Pipeline(
        "timeout",
        [cv.stage(f.hang_on_5, executor=executor, workers=2, timeout=0.3, on_error="skip")],
    )
    started = time.monotonic()
    try:
        run = pipe.run(range(20), instruments=[ledger])
    finally:
        f.RELEASE.set()  # the abandoned thread may end its call now
    assert time.monotonic() - started < 30  # did not wait for the minute-long call
    f.RELEASE.clear()
    assert sorted(run.results) == [x for x in range(20) if x != 5]
    assert ledger.states[5] == "dead_lettered"
    stats = run.statistics().stages["hang_on_5"]
    assert stats.timeouts == 1 and stats.dead_lettered == 1


def test_an_async_call_past_its_timeout_is_cancelled() -> None:
    pipe = cv.Pipeline(
        "t", [cv.stage(f.async_hang_on_5, timeout=0.2, concurrency=4, on_error="skip")]
    )
    started = time.monotonic()
    run = pipe.run(range(12))
    assert time.monotonic() - started < 30  # did not wait for the minute-long call
    assert sorted(run.results) == [x for x in range(12) if x != 5]


def test_a_timeout_with_no_retry_left_fails_with_timeout_error(executor: str) -> None:
    if executor == "sync":
        with pytest.raises(
            cv.PipelineError, match="timeout needs an executor with workers of its own"
        ):
            cv.stage(f.hang_on_5, executor=executor, timeout=0.2)
        return
    pipe = cv.Pipeline("t", [cv.stage(f.hang_on_5, executor=executor, timeout=0.2)])
    try:
        with pytest.raises(cv.StageError, match="ran longer than stage 'hang_on_5'") as info:
            pipe.run(range(10))
    finally:
        f.RELEASE.set()
    f.RELEASE.clear()
    assert isinstance(info.value.__cause__, TimeoutError) and info.value.key == (5,)


def test_a_killed_worker_is_replaced_and_its_item_retried(tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    fn = functools.partial(f.kill_once, str(marker))
    pipe = cv.Pipeline(
        "lost", [cv.stage(fn, name="kill_once", executor="processes", workers=2, retry=2)]
    )
    with pipe.stream(range(30)) as run:
        out = sorted(run)
        stats = run.statistics().stages["kill_once"]
    assert marker.exists()
    assert out == list(range(30))
    assert stats.lost_workers == 1 and stats.retries == 1


@pytest.mark.slow
def test_workers_killed_at_random_lose_no_item(tmp_path: Path) -> None:
    from conveyor.store import RunStore, StoreRecorder

    ledger, store = Ledger(), RunStore(tmp_path / "runs.db")
    pipe = cv.Pipeline(
        "chaos",
        [
            cv.stage(f.suicidal, executor="processes", workers=2, retry=cv.Retry(20, backoff=0)),
            cv.stage(f.inc, executor="threads"),
        ],
    )
    run = pipe.run(range(200), instruments=[ledger, StoreRecorder(store, pipeline=pipe)])
    assert sorted(run.results) == [x + 1 for x in range(200)]
    # each death reruns its task's unreported units: tasks are cut smaller after one,
    # so the deaths stay near 3% of the 200 calls (uncut, large tasks died again and
    # again: 40 to 230 deaths)
    assert 1 <= run.statistics().stages["suicidal"].lost_workers <= 40
    assert sorted(ledger.states) == list(range(200))
    assert set(ledger.states.values()) == {"done"}
    recorded = store.ledger(run.id)  # the run store's ledger balances too
    assert recorded.balanced and recorded.done == 200 and recorded.pending == 0


def test_tasks_are_cut_smaller_after_a_worker_dies_and_grow_back() -> None:
    from conveyor.core.flow import MAX_UNITS, StageState
    from conveyor.executors import executor_class

    stage = cv.stage(f.inc, executor="processes")
    s = StageState(stage, 128, executor_class("processes").traits)
    s.unit_ns = 1.0  # quick units: the executor's target allows the most
    assert s.unit_cap() == MAX_UNITS
    s.worker_lost(300)  # a task of 300 units died
    assert s.unit_cap() == 150
    s.worker_lost(150)
    s.worker_lost(2)
    assert s.unit_cap() == 1  # a poison item ends up alone in its task
    s.task_whole()
    s.task_whole()
    assert s.unit_cap() == 4
    for _ in range(20):
        s.task_whole()
    assert s.unit_cap() == MAX_UNITS


def test_bad_policies_are_rejected() -> None:
    with pytest.raises(cv.PipelineError, match="attempts=0"):
        cv.Retry(attempts=0)
    with pytest.raises(cv.PipelineError, match="give exception classes"):
        cv.Retry(on=("ValueError",))  # type: ignore[arg-type]
    with pytest.raises(cv.PipelineError, match="retry=-1"):
        cv.stage(f.inc, retry=-1)
    with pytest.raises(cv.PipelineError, match="on_error='ignore'"):
        cv.stage(f.inc, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(cv.PipelineError, match="timeout=0"):
        cv.stage(f.inc, timeout=0)


@pytest.mark.parametrize(
    "retry", [2, cv.Retry(retries=2, backoff=0), cv.Retry(attempts=3, backoff=0)]
)
def test_retry_counts_mean_the_same_everywhere(retry: object) -> None:
    """retry=N, Retry(retries=N) and Retry(attempts=N + 1): N retries, N + 1 calls."""
    calls: list[int] = []

    def flaky(x: int) -> int:
        calls.append(x)
        raise ConnectionError("down")

    pipe = cv.Pipeline("p", [cv.stage(flaky, executor="sync", retry=retry, on_error="skip")])
    pipe.run([7])
    assert calls == [7, 7, 7]
    assert cv.Retry() == cv.Retry(retries=3) == cv.Retry(attempts=4)
    assert cv.stage(flaky, retry=3).retry == cv.Retry()  # the default is three retries too
    assert cv.stage(flaky, retry=3).retry.retries == 3
    with pytest.raises(cv.PipelineError, match="attempts=3 and retries=3 disagree"):
        cv.Retry(attempts=3, retries=3)
    with pytest.raises(cv.PipelineError, match="retries=-1"):
        cv.Retry(retries=-1)
