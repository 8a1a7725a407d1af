"""SIGINT and SIGTERM end ``conveyor run`` and ``conveyor resume`` cleanly.

Real signals to a real ``conveyor`` process, sent once the run is mid-way (the test
waits for lines in a log the stages write, never for a fixed time), then: the exit
code names the signal, the report is printed, the run store holds the run as
cancelled with a balanced ledger, and no worker process or shared-memory segment
is left. In-process tests check the guard itself: hooks are never cut in half,
handlers are restored, a second signal does not interrupt the cleanup.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import conveyor as cv
from conftest import interruptible_conveyor, running, wait_until
from conveyor.cli import cli
from conveyor.cli.signals import Interrupted, SignalGuard
from conveyor.store import RunStore, StoreRecorder

pytest.importorskip("numpy")

PIPE = textwrap.dedent(
    """
    import multiprocessing, os, pathlib, time
    import numpy as np
    import conveyor as cv

    HERE = pathlib.Path({here!r})

    def log(name, line):
        with open(HERE / name, "a") as f:
            f.write(line + "\\n")

    if multiprocessing.parent_process() is not None:  # a process worker importing us
        log(f"pid-{{os.getpid()}}", "")

    def source():
        for i in range(1_000_000):
            if i == {block_at}:
                log("events.log", "source blocks")
                time.sleep(3600)  # a source that stalls: the signal must still end the run
            if i % 50 == 0:
                time.sleep(0.01)  # a slow source: the run is mid-way for a good while
            yield i

    def tag(x):  # threads
        return x

    def grow(x):  # processes: 1 MiB results travel in shared memory
        return np.full(1 << 18, x, dtype=np.float32)

    def first(a):  # threads
        segments = [n for n in os.listdir("/dev/shm") if n.startswith(f"cv{{os.getpid()}}x")]
        log("events.log", f"item {{int(a[0])}} shm {{len(segments)}}")
        return int(a[0])

    pipeline = cv.Pipeline(
        "sig",
        [
            cv.Stage(tag, executor="threads", workers=2),
            cv.Stage(grow, executor="processes", workers=2),
            cv.Stage(first, executor="threads"),
        ],
        source=source,
    )
    """
)


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture
def pipe_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield tmp_path
    sys.modules.pop("sig_pipe", None)


@pytest.fixture(autouse=True)
def no_stray_command():  # type: ignore[no-untyped-def]
    """A test that fails half-way must not leave its conveyor process running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def write_pipe(where: Path, *, block_at: int = -1) -> Path:
    path = where / "sig_pipe.py"
    path.write_text(PIPE.format(here=str(where), block_at=block_at))
    return path


def start(where: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        interruptible_conveyor(*args, "--store", str(where / "runs.db"), "--no-progress"),
        cwd=where,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(proc)
    return proc


def events(where: Path) -> list[str]:
    path = where / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def items_done(where: Path) -> int:
    return sum(line.startswith("item ") for line in events(where))


def interrupt(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    return proc.communicate(timeout=60)


def worker_pids(where: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in where.glob("pid-*")]


def assert_clean_end(
    where: Path,
    proc: subprocess.Popen[str],
    out: str,
    err: str,
    signum: int,
    *,
    mid_way: bool = True,
) -> str:
    """The checks every cancelled (or, on SIGTERM, drained) command must pass; the id of
    the run it recorded."""
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "Traceback" not in out, err
    assert "sig: cancelled" in out  # the report, for the cancelled run
    assert re.search(r"^ *grow +│ processes×2", out, re.M), out  # its stage table
    drained = signum == signal.SIGTERM  # the run was going on: SIGTERM drains it
    if drained:  # SIGTERM drains a run going on: everything read finishes
        assert f"drained on {name}: every item read has finished" in err
    else:
        assert f"cancelled by {name}" in err
    run_id = re.search(r"run ([0-9a-f]{12}) recorded in", err).group(1)  # type: ignore[union-attr]
    assert f"finish it with: conveyor resume {run_id[:8]}" in err
    with RunStore(where / "runs.db", create=False) as store:
        record = store.get_run(run_id)
        ledger = store.ledger(run_id)
    assert record.state == "cancelled"
    assert record.error in (None, f"Interrupted: {name}")  # None: it came outside next()
    assert ledger.balanced, ledger
    if drained:  # none was left on its way
        assert ledger.pending == 0, ledger
    if mid_way and drained:
        assert ledger.items_read and ledger.done >= 1, ledger
    elif mid_way:  # some items finished, others were still on their way
        assert ledger.items_read and ledger.done >= 1 and ledger.pending >= 1, ledger
    pids = worker_pids(where)
    assert pids and not [p for p in pids if running(p)], "worker processes left behind"
    if Path("/dev/shm").is_dir():
        assert not list(Path("/dev/shm").glob(f"cv{proc.pid}x*")), "shared memory left behind"
    return run_id


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "second"), [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)]
)
def test_a_signal_cancels_run_then_resume_cleanly(pipe_dir: Path, first: int, second: int) -> None:
    pipe = write_pipe(pipe_dir)
    proc = start(pipe_dir, "run", f"{pipe}:pipeline")
    assert wait_until(lambda: items_done(pipe_dir) >= 20 or proc.poll() is not None, 50)
    out, err = interrupt(proc, first)
    run_id = assert_clean_end(pipe_dir, proc, out, err, first)
    # the 1 MiB results did travel through shared memory while the run went on
    assert any(re.fullmatch(r"item \d+ shm [1-9]\d*", e) for e in events(pipe_dir))

    for p in pipe_dir.glob("pid-*"):
        p.unlink()
    (pipe_dir / "events.log").unlink()
    proc = start(pipe_dir, "resume", run_id[:8])
    assert wait_until(lambda: items_done(pipe_dir) >= 20 or proc.poll() is not None, 50)
    out, err = interrupt(proc, second)
    resumed = assert_clean_end(pipe_dir, proc, out, err, second)
    assert resumed != run_id and f"resuming run {run_id} of 'sig' as run {resumed}" in err


@pytest.mark.slow
def test_a_signal_ends_a_run_whose_source_blocks(pipe_dir: Path) -> None:
    pipe = write_pipe(pipe_dir, block_at=30)
    proc = start(pipe_dir, "run", f"{pipe}:pipeline")
    # the source blocks in its reader thread; the workers wait for items
    assert wait_until(
        lambda: (
            ("source blocks" in events(pipe_dir) and len(worker_pids(pipe_dir)) == 2)
            or proc.poll() is not None
        ),
        50,
    )
    out, err = interrupt(proc, signal.SIGTERM)
    assert_clean_end(pipe_dir, proc, out, err, signal.SIGTERM, mid_way=False)


def test_a_signal_while_the_target_loads_exits_before_any_run(tmp_path: Path) -> None:
    (tmp_path / "slow_import.py").write_text(
        "import pathlib, time\n"
        f"pathlib.Path({str(tmp_path / 'loading')!r}).touch()\n"
        "time.sleep(3600)\n"
    )
    proc = start(tmp_path, "run", f"{tmp_path}/slow_import.py:pipeline")
    assert wait_until(lambda: (tmp_path / "loading").exists() or proc.poll() is not None, 50)
    out, err = interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 143, err + out
    assert "cancelled by SIGTERM before the run started" in err and "Traceback" not in err
    assert not (tmp_path / "runs.db").exists() or not RunStore(tmp_path / "runs.db").runs()


# --- in-process: the guard itself ------------------------------------------------------


class Bookkeeper(cv.Instrument):
    """An instrument whose hooks signals land in: the first half-way through its
    bookkeeping, another right after it, and one more during the run's cleanup."""

    def __init__(self, signum: int, other: int) -> None:
        self.signum, self.other = signum, other
        self.calls = 0
        self.finished_calls = 0
        self.finished_state: str | None = None

    def task_finished(self, *args: Any) -> None:
        self.calls += 1
        if self.calls == 20:
            signal.raise_signal(self.signum)  # handled at once, inside this hook
            signal.raise_signal(self.other)  # a second signal: noted, nothing more
        self.finished_calls += 1

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        signal.raise_signal(self.other)  # during the cleanup: must not cut it short
        self.finished_state = state


def double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize(("signum", "other"), [(signal.SIGINT, signal.SIGTERM)])
def test_a_signal_inside_a_hook_waits_until_the_hook_has_finished(
    tmp_path: Path, signum: int, other: int
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    keeper = Bookkeeper(signum, other)
    store = RunStore(tmp_path / "runs.db")
    pipe = cv.Pipeline("guarded", [cv.Stage(double, executor="threads", workers=2)])
    with SignalGuard() as guard:
        run = pipe.stream(
            iter(range(10**9)),
            instruments=guard.shield([keeper, StoreRecorder(store, pipeline=pipe)]),
            record=False,
        )
        with pytest.raises(Interrupted) as info, guard.watching(run), run:
            for _ in run:
                pass
    assert info.value.signum == signum and info.value.exit_code == 128 + signum
    assert keeper.calls >= 20 and keeper.finished_calls == keeper.calls  # no hook cut short
    assert keeper.finished_state == "cancelled" and run.state == "cancelled"
    assert guard.signum == signum and guard.received == [signum, other, other]
    ledger = store.ledger(run.id)  # the recorder's run_finished ran after the third signal
    assert store.get_run(run.id).state == "cancelled" and ledger.balanced, ledger
    store.close()
    assert {s: signal.getsignal(s) for s in before} == before  # handlers given back


class Terminator(cv.Instrument):
    """Sends SIGTERM from a hook once the run is going, and (``then``) another signal
    a few tasks later, while the run drains."""

    def __init__(self, then: int | None) -> None:
        self.then = then
        self.calls = 0
        self.at_sigterm: int | None = None

    def task_finished(self, *args: Any) -> None:
        self.calls += 1
        if self.calls == 20:
            self.at_sigterm = self.calls
            signal.raise_signal(signal.SIGTERM)
        elif self.then is not None and self.calls == 24:
            signal.raise_signal(self.then)


def slow_double(x: int) -> int:
    threading.Event().wait(0.001)
    return 2 * x


@pytest.mark.parametrize("then", [None, signal.SIGINT])
def test_sigterm_drains_a_run_and_a_second_signal_cancels_the_drain(
    tmp_path: Path, then: int | None
) -> None:
    store = RunStore(tmp_path / "runs.db")
    pipe = cv.Pipeline("draining", [cv.Stage(slow_double, executor="threads", workers=2)])
    terminator = Terminator(then)
    with SignalGuard() as guard:
        run = pipe.stream(
            iter(range(10**9)),
            instruments=guard.shield([terminator, StoreRecorder(store, pipeline=pipe)]),
            record=False,
        )
        results = 0
        cancelled = False
        try:
            with guard.watching(run), run:
                for _ in run:
                    results += 1
        except Interrupted as exc:
            cancelled = True
            assert exc.signum == signal.SIGTERM  # the exit code names the first signal
    assert guard.draining and guard.signum == signal.SIGTERM
    assert run.state == "cancelled"
    ledger = store.ledger(run.id)
    assert store.get_run(run.id).state == "cancelled" and ledger.balanced, ledger
    if then is None:  # drained: every item read finished, and reached us
        assert not cancelled and ledger.pending == 0 and ledger.done == results, ledger
    else:  # the second signal came mid-drain (there were items in flight): cancelled
        assert cancelled and guard.cancelled_drain and ledger.pending >= 1, ledger
    store.close()


class StartSignaller(cv.Instrument):
    def run_started(self, run: cv.RunInfo) -> None:
        signal.raise_signal(signal.SIGTERM)  # while the run is still starting


def test_a_signal_as_the_run_starts_cancels_it_once_started(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    pipe = cv.Pipeline("starting", [cv.Stage(double, executor="threads")])
    with SignalGuard() as guard:
        recorder = StoreRecorder(store, pipeline=pipe)
        run = pipe.stream(
            iter(range(10**9)),
            instruments=guard.shield([StartSignaller(), recorder]),
            record=False,
        )
        with pytest.raises(Interrupted), guard.watching(run), run:
            for _ in run:
                pass
    # cancelled, not failed: the signal waited for the start to complete
    assert run.state == "cancelled"
    assert store.get_run(run.id).state == "cancelled" and store.ledger(run.id).balanced
    store.close()


def test_conveyor_run_in_process_leaves_no_thread_and_restores_handlers(tmp_path: Path) -> None:
    (tmp_path / "inproc_pipe.py").write_text(
        textwrap.dedent(
            """
            import os, signal
            import conveyor as cv

            def signalling_double(x):
                if x == 10:
                    os.kill(os.getpid(), signal.SIGTERM)
                return 2 * x

            pipeline = cv.Pipeline(
                "inproc",
                [cv.Stage(signalling_double, executor="threads", workers=3)],
                source=lambda: iter(range(10**9)),
            )
            """
        )
    )
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    assert threading.current_thread() is threading.main_thread()
    try:
        result = CliRunner().invoke(
            cli, ["run", f"{tmp_path}/inproc_pipe.py:pipeline", "--store", str(tmp_path / "r.db")]
        )
    finally:
        sys.modules.pop("inproc_pipe", None)
    assert result.exit_code == 143, result.output
    assert "inproc: cancelled" in result.stdout and "drained on SIGTERM" in result.stderr
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with RunStore(tmp_path / "r.db") as store:
        (record,) = store.runs()
        assert record.state == "cancelled" and store.ledger(record.id).balanced
    # (the autouse fixture then checks that no worker thread or process is left)


def test_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with SignalGuard():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) != signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_guard_is_inert_off_the_main_thread() -> None:
    seen: list[Any] = []

    def body() -> None:
        with SignalGuard() as guard:
            seen.append(guard.shield([None]))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert len(seen) == 1 and len(seen[0]) == 1  # only the guard's own instrument


DRAIN_PIPE = textwrap.dedent(
    """
    import multiprocessing, os, pathlib, time
    import conveyor as cv

    HERE = pathlib.Path({here!r})

    if multiprocessing.parent_process() is not None:  # a process worker importing us
        (HERE / f"pid-{{os.getpid()}}").write_text("")

    def source():
        for i in range(10**9):
            if i == 12_000:
                (HERE / "deep").write_text("")  # 12,000 read: most of them in flight
            yield i

    def work(x):  # processes
        time.sleep(0.0002)
        return x

    pipeline = cv.Pipeline(
        "drain",
        [
            cv.Stage(work, name="first", executor="processes", workers=2, capacity=6000),
            cv.Stage(work, name="second", executor="processes", workers=2, capacity=6000),
        ],
        source=source,
    )
    """
)


@pytest.mark.slow
def test_sigterm_drains_thousands_of_items_in_flight_across_process_stages(
    pipe_dir: Path,
) -> None:
    pipe = pipe_dir / "drain_pipe.py"
    pipe.write_text(DRAIN_PIPE.format(here=str(pipe_dir)))
    proc = start(pipe_dir, "run", f"{pipe}:pipeline")
    assert wait_until(lambda: (pipe_dir / "deep").exists() or proc.poll() is not None, 100)
    _, err = interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert "drained on SIGTERM: every item read has finished" in err and "Traceback" not in err
    run_id = re.search(r"run ([0-9a-f]{12}) recorded in", err).group(1)  # type: ignore[union-attr]
    with RunStore(pipe_dir / "runs.db", create=False) as store:
        record = store.get_run(run_id)
        ledger = store.ledger(run_id)
    assert record.state == "cancelled" and ledger.balanced, ledger
    # Every item read was finished: none pending, and there were thousands in flight.
    assert ledger.pending == 0 and ledger.done == ledger.items_read >= 12_000, ledger
    pids = worker_pids(pipe_dir)
    assert pids and not [p for p in pids if running(p)], "worker processes left behind"
