from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

import pytest

from conveyor.executors import executor_names

EXECUTORS = executor_names()  # every registered executor: sync, threads, processes, ray


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Run the test once per executor, with identical assertions."""
    return str(request.param)


@pytest.fixture(scope="module")
def ray_instance():  # type: ignore[no-untyped-def]
    """One local Ray instance for a module's tests on the ray executor."""
    from raycluster import have_ray, local_ray

    if not have_ray():
        pytest.skip("the ray executor's tests need Ray: pip install -e '.[ray]'")
    with local_ray() as ray:
        yield ray


@pytest.fixture(autouse=True)
def ray_when_asked(request: pytest.FixtureRequest) -> None:
    """A test run on ``executor="ray"`` gets its module's Ray instance."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("executor") == "ray":
        request.getfixturevalue("ray_instance")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(pid: int) -> bool:
    """``pid`` is alive and not a zombie (a zombie has stopped: only its exit status is
    left, for a parent that may be gone; outside Linux, any live pid counts)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        return alive(pid)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


# A test runner started in the background (or under nohup) passes SIGINT on ignored,
# and conveyor rightly keeps ignoring it then; commands that tests interrupt with
# SIGINT start with it at its default instead.
_WITH_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'conveyor.cli', *sys.argv[1:]])"
)


def pytest_configure(config: pytest.Config) -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and an
    # ignored signal stays ignored through exec. Tests of Ctrl-C need it delivered, in
    # this process and in the processes it starts: give it Python's default handler,
    # which exec resets to the default action in children.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def interruptible_conveyor(*args: str) -> list[str]:
    """The command line that runs ``conveyor ARGS`` with SIGINT at its default."""
    return [sys.executable, "-c", _WITH_SIGINT, *args]


def conveyor_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("conveyor-")]


@pytest.fixture(autouse=True)
def private_store_and_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
):
    """No test reads or writes the repository's .conveyor/: the default run store and
    cache of every test (and of the processes it starts) are its own."""
    home = tmp_path_factory.mktemp("conveyor-home")
    monkeypatch.setenv("CONVEYOR_STORE", str(home / "runs.db"))
    monkeypatch.setenv("CONVEYOR_CACHE", str(home / "cache"))
    monkeypatch.setenv("CONVEYOR_PROFILE_CACHE", str(home / "profiles"))  # conveyor.train's
    return home


@pytest.fixture(autouse=True)
def no_leftover_workers():
    """Every test must leave no worker process or thread behind."""
    yield
    assert wait_until(lambda: not multiprocessing.active_children()), (
        f"worker processes left behind: {multiprocessing.active_children()}"
    )
    assert wait_until(lambda: not conveyor_threads()), (
        f"worker threads left behind: {conveyor_threads()}"
    )
