"""The executor contract, attacked: what users send, every registered executor.

Each case ends within seconds with correct results or a clear ConveyorError; after
each, no worker process or thread is left (conftest), no shared-memory segment of
this process is left, and a run that succeeded has a balanced ledger (every source
item in exactly one terminal state) and balanced events (every task started
finished). Cases about worker processes dying run on every executor whose workers
live outside the driver's process. The contract itself: conveyor/executors/base.py.
"""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import contractfns as fns
import conveyor as cv
from conftest import wait_until
from conveyor.executors import (
    Executor,
    Task,
    Traits,
    executor_class,
    executor_names,
    register,
    run_task,
)

pytestmark = pytest.mark.timeout(90)

ALL = executor_names()
OUT_OF_PROCESS = [n for n in ALL if not executor_class(n).traits.shares_memory]
WITH_WORKERS = [n for n in ALL if not executor_class(n).traits.runs_in_caller]
KiB, MiB = 1024, 1024 * 1024


class Checks(cv.Instrument):
    """Counts what a run's events say, to check that they balance."""

    def __init__(self) -> None:
        self.read = 0
        self.states: collections.Counter[str] = collections.Counter()
        self.started: collections.Counter[str] = collections.Counter()
        self.finished: collections.Counter[str] = collections.Counter()
        self.open: set[int] = set()
        self.strays: list[int] = []  # finished without having started

    def items_read(self, keys: Any, t_ns: int) -> None:
        self.read += len(keys)

    def task_started(self, stage: str, task: int, keys: Any, depth: int, t_ns: int) -> None:
        self.started[stage] += 1
        self.open.add(task)

    def task_finished(self, stage: str, task: int, *args: Any) -> None:
        self.finished[stage] += 1
        if task not in self.open:
            self.strays.append(task)
        self.open.discard(task)

    def roots_finished(self, roots: Any, state: str, t_ns: int) -> None:
        self.states[state] += len(roots)

    def assert_balanced(self) -> None:
        assert sum(self.states.values()) == self.read, (self.read, self.states)
        assert self.started == self.finished and not self.open and not self.strays


@pytest.fixture(autouse=True)
def no_leftover_segments():
    yield
    if os.path.isdir("/dev/shm"):
        mine = f"cv{os.getpid()}x"
        assert wait_until(lambda: not [e for e in os.listdir("/dev/shm") if e.startswith(mine)])


def log_of(tmp_path: Path) -> str:
    return str(tmp_path / "calls.log")


def jobs(tmp_path: Path, n: int) -> list[fns.Job]:
    return [fns.Job(i, log_of(tmp_path)) for i in range(n)]


# --- payloads of every size, both ways -------------------------------------------


@pytest.mark.parametrize(
    "size", [64 * KiB, 768 * KiB, 1 * MiB, 16 * MiB], ids=lambda s: f"{s // KiB}KiB"
)
@pytest.mark.parametrize("kind", ["bytes", "array"])
@pytest.mark.parametrize("executor", ALL)
def test_payloads_of_any_size_cross_both_ways(executor: str, kind: str, size: int) -> None:
    def item(i: int) -> Any:
        if kind == "bytes":
            return bytes([i]) * size
        return np.full(size, i, dtype=np.uint8)  # 768 KiB: under the shared-memory threshold

    checks = Checks()
    pipe = cv.Pipeline(
        "payloads",
        [
            cv.stage(fns.slow_echo, executor=executor, workers=2),
            cv.stage(fns.size_and_sum, executor=executor, workers=2),
        ],
    )
    run = pipe.run((item(i) for i in range(6)), ordered=True, instruments=[checks])
    assert run.results == [fns.size_and_sum(item(i)) for i in range(6)]
    checks.assert_balanced()


# --- what cannot be pickled --------------------------------------------------------


@pytest.mark.parametrize("executor", ALL)
def test_unpicklable_inputs_fail_only_their_items(executor: str) -> None:
    lock = threading.Lock()  # cannot be pickled
    rows = [{"n": i, "guard": lock if i in (3, 7) else None} for i in range(10)]
    checks = Checks()
    stage = cv.stage(fns.first_field, executor=executor, workers=2, on_error="skip")
    run = cv.Pipeline("rows", [stage]).run(rows, instruments=[checks])
    stats = run.statistics().stages["first_field"]
    if executor_class(executor).traits.shares_memory:
        assert sorted(run.results) == list(range(10))
    else:
        assert sorted(run.results) == [0, 1, 2, 4, 5, 6, 8, 9]
        assert stats.dead_lettered == 2 and checks.states["dead_lettered"] == 2
    checks.assert_balanced()


@pytest.mark.parametrize("executor", OUT_OF_PROCESS)
def test_an_unpicklable_input_fails_the_run_naming_it(executor: str) -> None:
    rows = [{"n": i, "file": open(__file__) if i == 4 else None} for i in range(6)]  # noqa: SIM115
    try:
        with pytest.raises(cv.StageError, match=r"item 4.*cannot be pickled") as info:
            cv.Pipeline("rows", [cv.stage(fns.first_field, executor=executor)]).run(rows)
        assert info.value.stage == "first_field" and info.value.key == (4,)
    finally:
        for row in rows:
            if row["file"] is not None:
                row["file"].close()


@pytest.mark.parametrize(
    "fn", [fns.lambda_for_odd, fns.rejected_for_odd], ids=["pickle", "unpickle"]
)
@pytest.mark.parametrize("executor", ALL)
def test_results_that_cannot_travel_fail_only_their_items(
    executor: str, fn: Any, tmp_path: Path
) -> None:
    # lambda: cannot be pickled in the worker; Rejected: pickles there but cannot be
    # unpickled here. Either way only that unit fails, and no call runs twice.
    checks = Checks()
    stage = cv.stage(fn, executor=executor, workers=2, on_error="skip")
    run = cv.Pipeline("results", [stage]).run(jobs(tmp_path, 20), instruments=[checks])
    done = [r for r in run.results if isinstance(r, int)]
    if executor_class(executor).traits.shares_memory:
        assert len(run.results) == 20
    else:
        assert sorted(done) == list(range(0, 20, 2))
        assert checks.states["dead_lettered"] == 10
    assert collections.Counter(fns.calls(log_of(tmp_path))) == collections.Counter(range(20))
    assert run.statistics().stages[stage.name].calls == 20
    checks.assert_balanced()


# --- BaseException from the function -------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "raised"),
    [
        (fns.exit_on_3, SystemExit),
        (fns.interrupt_on_3, KeyboardInterrupt),
        (fns.cancel_on_3, asyncio.CancelledError),
    ],
    ids=["SystemExit", "KeyboardInterrupt", "CancelledError"],
)
@pytest.mark.parametrize("executor", ALL)
def test_base_exceptions_end_the_run_and_are_never_retried(
    executor: str, fn: Any, raised: type[BaseException], tmp_path: Path
) -> None:
    stage = cv.stage(fn, executor=executor, workers=2, retry=3, on_error="skip")
    run = cv.Pipeline("base", [stage]).stream(jobs(tmp_path, 10))
    in_caller = executor_class(executor).traits.runs_in_caller
    if in_caller and raised in (SystemExit, KeyboardInterrupt):
        # In the caller's own thread, as in a plain loop: the user's to handle.
        with pytest.raises(raised):
            run.wait()
        assert run.state == ("cancelled" if raised is KeyboardInterrupt else "failed")
    else:
        with pytest.raises(cv.StageError, match=r"item 3.*" + raised.__name__) as info:
            run.wait()
        assert isinstance(info.value.__cause__, raised) and info.value.run_id == run.id
        assert run.state == "failed"
    assert fns.calls(log_of(tmp_path)).count(3) == 1  # neither retried nor skipped


# --- exactly-once calls --------------------------------------------------------------


@pytest.mark.parametrize("executor", ALL)
def test_an_async_failure_never_repeats_the_calls_that_succeeded(
    executor: str, tmp_path: Path
) -> None:
    checks = Checks()
    stage = cv.stage(
        fns.async_fail_on_17, executor=executor, concurrency=8, retry=2, on_error="skip"
    )
    run = cv.Pipeline("async", [stage]).run(jobs(tmp_path, 40), instruments=[checks])
    assert sorted(run.results) == [i for i in range(40) if i != 17]
    counts = collections.Counter(fns.calls(log_of(tmp_path)))
    assert counts == collections.Counter({**dict.fromkeys(range(40), 1), 17: 3})
    stats = run.statistics().stages["async_fail_on_17"]
    assert (stats.calls, stats.retries, stats.dead_lettered) == (42, 2, 1)
    checks.assert_balanced()


# --- workers that die --------------------------------------------------------------


@pytest.mark.parametrize(
    "fn", [fns.die_once_on_5, fns.die_after_5], ids=["mid-task", "between-tasks"]
)
@pytest.mark.parametrize("executor", OUT_OF_PROCESS)
def test_a_worker_that_dies_is_replaced_and_nothing_is_lost(
    executor: str, fn: Any, tmp_path: Path
) -> None:
    checks = Checks()
    stage = cv.stage(fn, executor=executor, workers=2, retry=2)
    run = cv.Pipeline("die", [stage]).run(jobs(tmp_path, 30), instruments=[checks])
    assert sorted(run.results) == list(range(30))
    checks.assert_balanced()
    if fn is fns.die_once_on_5:
        assert run.statistics().stages[stage.name].lost_workers == 1


@pytest.mark.parametrize("executor", OUT_OF_PROCESS)
@pytest.mark.parametrize(
    "policy", [{"on_error": "skip"}, {"retry": 2}, {}], ids=["skip", "retry", "fail"]
)
def test_workers_that_die_before_they_start_fail_the_run_clearly(
    executor: str, policy: dict[str, Any], tmp_path: Path
) -> None:
    # Stands for an import error in the user's script: the worker exits while loading
    # the stage's module, every time.
    mod = tmp_path / "exits_in_workers.py"
    mod.write_text(
        "import multiprocessing, os\n"
        "if multiprocessing.parent_process() or os.environ.get('CONVEYOR_WORKER'):\n"
        "    os._exit(7)\n"
        "def ident(x):\n"
        "    return x\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import exits_in_workers  # type: ignore[import-not-found]

        stage = cv.stage(exits_in_workers.ident, executor=executor, workers=2, **policy)
        with pytest.raises(cv.WorkerLostError, match="exit before they can start") as info:
            cv.Pipeline("start", [stage]).run(range(10))
        # Ray does not tell the exit status of a worker process it lost.
        assert info.value.exitcode == (None if executor == "ray" else 7)
        assert info.value.stage == "ident"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("exits_in_workers", None)


# --- resizing under load ---------------------------------------------------------------


@pytest.mark.parametrize("executor", WITH_WORKERS)
def test_resize_down_up_down_up_under_load_converges(executor: str, tmp_path: Path) -> None:
    checks = Checks()
    stage = cv.stage(fns.slow_logged, executor=executor, workers=4)
    results = []
    with cv.Pipeline("resize", [stage]).stream(jobs(tmp_path, 300), instruments=[checks]) as run:
        for i, r in enumerate(run):
            results.append(r)
            if i == 10:
                for n in (1, 2, 1, 4, 2):  # busy workers cannot stop at once
                    run.resize("slow_logged", n)
            if i == 250:
                live = run.statistics().stages["slow_logged"].live_workers
                assert live == 2, f"{live} live workers for a target of 2"
    assert sorted(results) == list(range(300))
    stats = run.statistics().stages["slow_logged"]
    assert stats.workers == 2 and stats.calls == 300
    checks.assert_balanced()


# --- observers ----------------------------------------------------------------------


class Flaky(cv.Instrument):
    def __init__(self) -> None:
        self.calls = 0

    def task_finished(self, *args: Any) -> None:
        self.calls += 1
        if self.calls == 5:
            raise ZeroDivisionError("bug in a dashboard exporter")


class Required(Flaky):
    critical = True


@pytest.mark.parametrize("executor", ALL)
def test_an_instrument_that_raises_is_detached_and_the_run_goes_on(executor: str) -> None:
    checks, flaky = Checks(), Flaky()
    stage = cv.stage(fns.ident, executor=executor, workers=2)
    with pytest.warns(
        cv.InstrumentWarning, match="Flaky raised ZeroDivisionError in task_finished"
    ):
        run = cv.Pipeline("observed", [stage]).run(range(2000), instruments=[flaky, checks])
    assert sorted(run.results) == list(range(2000))
    assert flaky.calls == 5  # detached: never called again
    checks.assert_balanced()


@pytest.mark.parametrize("executor", ALL)
def test_a_critical_instrument_that_raises_stops_the_run(executor: str) -> None:
    stage = cv.stage(fns.ident, executor=executor, workers=2)
    run = cv.Pipeline("observed", [stage]).stream(range(2000), instruments=[Required()])
    with pytest.raises(cv.InstrumentError, match="Required") as info:
        run.wait()
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert run.state == "failed"


# --- starting, stopping, stalling --------------------------------------------------------


def test_a_failure_while_starting_surfaces_as_itself_and_leaves_no_worker() -> None:
    # The cached stage's function closes over a lock: its cache key cannot be
    # computed, which warns while the run starts (an error under -W error). The
    # process stage before it must not have started a worker by then.
    lock = threading.Lock()

    def guarded(x: int) -> int:
        with lock:
            return x

    pipe = cv.Pipeline(
        "start",
        [cv.stage(fns.ident, executor="processes"), cv.stage(guarded, cache=True)],
    )
    with pytest.raises(cv.CacheWarning, match="is not cached in this run"):
        pipe.run(range(3))


def test_every_executor_stops_even_when_one_fails_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.executors.threads import ThreadExecutor

    def broken_shutdown(self: ThreadExecutor, *, cancel: bool) -> None:
        ThreadExecutor.shutdown.__wrapped__(self, cancel=cancel)  # type: ignore[attr-defined]
        raise RuntimeError("shutdown failed")

    original = ThreadExecutor.shutdown
    broken_shutdown.__wrapped__ = original  # type: ignore[attr-defined]
    monkeypatch.setattr(ThreadExecutor, "shutdown", broken_shutdown)
    pipe = cv.Pipeline(
        "stop",
        [
            cv.stage(fns.ident, executor="threads"),
            cv.stage(fns.size_and_sum, executor="processes"),  # shared memory for its arrays
        ],
    )
    arrays = (np.full(2 * MiB, i, dtype=np.uint8) for i in range(4))
    with pytest.raises(RuntimeError, match="shutdown failed"):
        pipe.run(arrays)
    # conftest and no_leftover_segments check that the process stage stopped too.


class Vanishing(Executor):
    """A broken executor: its one worker answers two tasks, then dies without a word."""

    traits = Traits(target_task_ns=1_000_000)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="conveyor-vanishing")
        self._alive = 0

    def start(self) -> None:
        self._alive = 1
        self._thread.start()

    def _serve(self) -> None:
        for _ in range(2):
            task = self._inbox.get()
            if task is None:
                return
            self.post(
                run_task(self.stage.fn, self.stage.kind, task.units, worker=0, task_id=task.id)
            )
        self._alive = 0  # and the tasks it held are never answered

    def submit(self, task: Task) -> None:
        self._inbox.put(task)

    def alive(self) -> int:
        return self._alive

    def shutdown(self, *, cancel: bool) -> None:
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join()


@pytest.fixture
def vanishing():  # type: ignore[no-untyped-def]
    from conveyor.executors import base

    register("vanishing", Vanishing)
    yield "vanishing"
    base._registry.pop("vanishing")


def test_work_that_can_never_come_back_raises_stall_error(vanishing: str) -> None:
    stage = cv.stage(fns.slow_echo, executor=vanishing)
    run = cv.Pipeline("stall", [stage]).stream(range(20))
    with pytest.raises(
        cv.StallError, match=r"stage 'slow_echo' has \d task\(s\) in flight"
    ) as info:
        run.wait()
    assert info.value.stage == "slow_echo" and info.value.keys
    assert run.state == "failed"


@pytest.mark.parametrize("executor", ALL)
def test_shutdown_is_safe_before_start_and_twice(executor: str) -> None:
    stage = cv.stage(fns.ident, executor=executor)
    posted: list[Any] = []
    ex = executor_class(executor)(stage, posted.append)
    ex.shutdown(cancel=True)
    ex.shutdown(cancel=False)
    started = executor_class(executor)(stage, posted.append)
    started.start()
    started.submit(Task(1, stage.name, [41], [(0,)]))
    assert wait_until(lambda: len(posted) == 1, timeout=30)
    assert posted[0].results == [41] and not posted[0].failures
    started.shutdown(cancel=False)
    started.shutdown(cancel=True)
    assert started.pids() == []
