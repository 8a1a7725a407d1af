"""A rollout never outlives its controller: a controller that stops on an exception
or Ctrl-C ends its rollout; one that is killed stops renewing its lease, and the
server that follows the rollout ends it and sends the candidate nothing more."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

import conveyor as cv
from conftest import wait_until
from conveyor.lifecycle import CanaryPolicy, LifecycleLog, canary
from conveyor.lifecycle._lease import controlling, expire, renew
from test_rollout_serving import _register, _send, _server

pytest.importorskip("scipy")

HERE = Path(__file__).resolve().parent


def _start(log: LifecycleLog, mode: str = "canary"):  # type: ignore[no-untyped-def]
    return log.start_rollout("m", "champion", mode=mode, champion=1, candidate=2, share=0.5)


def test_a_lease_that_ran_out_rolls_the_rollout_back_once() -> None:
    _register({}, {})
    with LifecycleLog() as log:
        rollout = _start(log)
        renew(log, rollout.id, 30.0)
        assert expire(log, "m", "champion", now=time.time() + 10) is None  # still held
        ended = expire(log, "m", "champion", now=time.time() + 60)
        assert ended is not None and ended.state == "rolled_back"
        assert "stopped renewing it" in ended.reason and "v1 serves all traffic" in ended.reason
        assert expire(log, "m", "champion", now=time.time() + 120) is None  # once
        (event,) = log.events("m", kinds=["rollback"])
        assert event.rollout == rollout.id and event.evidence["to"] == 1
        assert log.active_rollout("m", "champion") is None
        unleased = _start(log)  # started by hand: no lease, never expires
        assert expire(log, "m", "champion", now=time.time() + 10**6) is None
        assert log.rollout(unleased.id).state == "running"


def test_a_watch_whose_controller_is_gone_stops_and_the_new_version_stays() -> None:
    _register({}, {})
    with LifecycleLog() as log:
        watch = _start(log, mode="watch")
        renew(log, watch.id, 1.0)
        ended = expire(log, "m", "champion", now=time.time() + 60)
        assert ended is not None and ended.state == "stopped"
        assert "v2 serves all traffic" in ended.reason
        assert [e.kind for e in log.events("m")] == ["watch"]


def test_a_controller_stopped_by_ctrl_c_ends_its_canary() -> None:
    _register({}, {})
    calls = 0

    def sleep(seconds: float) -> None:  # the server takes the rollout, then Ctrl-C
        nonlocal calls
        calls += 1
        with LifecycleLog() as log:
            running = log.active_rollout("m", "champion")
            assert running is not None
            log.mark_served(running.id)
        if calls == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        canary("m", 2, policy=CanaryPolicy(interval=1.0), sleep=sleep)
    with LifecycleLog() as log:
        (ended,) = log.rollouts("m")
        assert ended.state == "rolled_back"
        assert ended.reason.startswith("its controller stopped on KeyboardInterrupt")
        (event,) = log.events("m", kinds=["rollback"])
        assert event.rollout == ended.id
        assert _start(log).state == "running"  # the alias is free for the next release
    assert cv.models.get("m@champion").version == 1


def test_an_exception_inside_the_lease_ends_the_rollout_and_is_raised() -> None:
    _register({}, {})
    with LifecycleLog() as log:
        rollout = _start(log)
        with pytest.raises(OSError, match="disk gone"), controlling(log, rollout, 1.0, time.sleep):
            raise OSError("disk gone")
        assert log.rollout(rollout.id).reason.startswith(
            "its controller stopped on OSError: disk gone"
        )


CONTROLLER = textwrap.dedent(
    """
    import conveyor.lifecycle._lease as lease
    from conveyor.lifecycle import CanaryPolicy, canary

    lease.SLACK = 5.0  # a lease of 3 x 0.1 + 5 s: a busy machine may starve this process
    policy = CanaryPolicy(steps=(0.5,), interval=0.1, min_requests=10**6, step_timeout=600)
    canary("m", 2, policy=policy)  # holds until killed: it never has enough requests
    """
)


@pytest.mark.slow
def test_a_killed_controller_s_canary_is_ended_by_the_server() -> None:
    _register({}, {})
    server = _server()
    controller = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
    )
    try:
        with LifecycleLog() as log, httpx.Client(base_url=server.url, trust_env=False) as c:
            assert wait_until(lambda: bool(log.rollouts("m")), 60)
            rollout = log.rollouts("m")[0]
            assert wait_until(lambda: log.rollout(rollout.id).served_at is not None, 60)
            assert wait_until(
                lambda: {a.json()["version"] for a in _send(c, range(1, 41))} == {1, 2}, 30
            )
            os.kill(controller.pid, signal.SIGKILL)
            controller.wait(30)
            assert wait_until(lambda: log.rollout(rollout.id).state != "running", 60)
            ended = log.rollout(rollout.id)
            assert ended.state == "rolled_back" and "stopped renewing it" in ended.reason
            assert wait_until(lambda: server.traffic.route is None, 30)  # type: ignore[union-attr]
            answers = _send(c, range(1, 101))
            assert {a.status_code for a in answers} == {200}
            assert {a.json()["version"] for a in answers} == {1}
            assert [e.kind for e in log.events("m", kinds=["rollback"])] == ["rollback"]
        assert cv.models.get("m@champion").version == 1
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait(30)
        server.stop()
