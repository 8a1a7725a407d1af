"""The canary and the shadow against a live server: a candidate that fails 5% of its
requests is rolled back automatically and no client sees a failure; a good one is
promoted and swapped in warm; a shadow that disagrees stops the release."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import httpx
import pytest

import conveyor as cv
from conftest import wait_until
from conveyor.lifecycle import CanaryPolicy, LifecycleLog, ShadowPolicy, canary, shadow
from conveyor.serve import Endpoint, Server

pytest.importorskip("scipy")


class Clients:
    """``n`` closed-loop clients posting x = 1, 2, 3, ... until stopped."""

    def __init__(self, url: str, n: int = 4) -> None:
        self.url, self.n = url, n
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()))
        self.next = 0

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=60) as c:

            async def one() -> None:
                while not self.stopping.is_set():
                    self.next += 1
                    answer = await c.post("/predict", json={"x": self.next})
                    self.statuses[answer.status_code] += 1
                    if answer.status_code == 200:
                        self.versions[answer.json()["version"]] += 1

            await asyncio.gather(*(one() for _ in range(self.n)))

    def __enter__(self) -> Clients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(60)


def _serve(*models: dict) -> Server:
    for i, model in enumerate(models, 1):
        cv.models.register("m", {"version": i, **model}, format="pickle")
    cv.models.alias("m", "champion", 1)
    endpoint = Endpoint(
        "m@champion",
        handler="modelfns:Flaky",
        trust_pickle=True,
        watch=0.02,
        input_type=dict,
        max_batch=8,
    )
    server = Server(endpoint, port=0).start()
    assert server.wait_ready(60), server.not_ready_reason()
    return server


POLICY = CanaryPolicy(steps=(0.2, 0.5), interval=0.2, min_requests=30, step_timeout=120)


@pytest.mark.slow
def test_a_candidate_failing_5_percent_is_rolled_back_and_no_client_sees_a_failure() -> None:
    server = _serve({}, {"fail_every": 20})  # v2 raises on every 20th request: 5%
    try:
        with Clients(server.url) as clients:
            result = canary("m", 2, policy=POLICY, serve_timeout=60)
        assert not result.passed and "error" in result.reason.lower()
        assert result.rollout.state == "rolled_back"
        assert cv.models.get("m@champion").version == 1  # the alias never moved
        assert set(clients.statuses) == {200}, clients.statuses  # failures answered by v1
        decision = result.events[-1]
        assert decision.kind == "rollback" and decision.evidence["to"] == 1
        step = result.events[-2]
        assert step.kind == "canary_step" and step.passed is False and step.evidence["step"] == 0
        assert step.evidence["candidate"]["errors"] >= 1
        with LifecycleLog() as log:
            assert log.active_rollout("m", "champion") is None
            assert [e.kind for e in log.lineage(decision.id)] == ["canary_step", "rollback"]
    finally:
        server.stop()


@pytest.mark.slow
def test_a_good_candidate_is_promoted_step_by_step_and_swapped_in_warm() -> None:
    server = _serve({}, {})
    try:
        with Clients(server.url) as clients:
            result = canary("m", 2, policy=POLICY, serve_timeout=60)
            assert result.passed, result.reason
            assert cv.models.get("m@champion").version == 2
            assert wait_until(lambda: server.version == "m:2", 30)
            served = sum(clients.statuses.values())
            assert wait_until(lambda: sum(clients.statuses.values()) > served + 20, 30)
        assert set(clients.statuses) == {200}
        assert clients.versions[2] > 0 and clients.versions[1] > 0
        steps = [e for e in result.events if e.kind == "canary_step"]
        assert [e.evidence["share"] for e in steps] == [0.2, 0.5]
        assert all(e.passed for e in steps) and result.events[-1].kind == "promote"
        with LifecycleLog() as log:
            shares = {(w.step, w.arm): w.share for w in log.traffic(result.rollout.id)}
        assert shares[0, "candidate"] == 0.2 and shares[1, "candidate"] == 0.5
    finally:
        server.stop()


@pytest.mark.slow
def test_a_shadow_that_errs_stops_and_never_touches_an_answer() -> None:
    server = _serve({}, {"fail_every": 3})
    try:
        with Clients(server.url) as clients:
            result = shadow(
                "m",
                2,
                policy=ShadowPolicy(fraction=1.0, min_requests=60),
                interval=0.2,
                serve_timeout=60,
            )
        assert not result.passed and result.rollout.state == "stopped"
        assert set(clients.statuses) == {200} and set(clients.versions) == {1}
        assert result.events[-1].kind == "shadow" and result.events[-1].passed is False
    finally:
        server.stop()


def test_a_rollout_no_server_takes_stops_with_the_advice() -> None:
    cv.models.register("m", {"version": 1}, format="pickle", alias="champion")
    cv.models.register("m", {"version": 2}, format="pickle")
    clock = iter(range(1000))
    with pytest.raises(cv.LifecycleError, match="no server took the canary of m:2 within 5 s"):
        canary(
            "m", 2, policy=POLICY, serve_timeout=5, clock=lambda: next(clock), sleep=lambda s: None
        )
    with LifecycleLog() as log:
        (ended,) = log.rollouts("m")
    assert ended.state == "stopped" and "conveyor serve m@champion" in ended.reason
    with pytest.raises(cv.LifecycleError, match="already version 1"):
        canary("m", 1)
