"""A server follows the store's rollouts of its alias: the canary's share per request,
a candidate's failures answered by the champion, the shadow's mirror off the response
path, counts per arm written back; request ids and labels joined later."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

import conveyor as cv
from conftest import wait_until
from conveyor.lifecycle import LifecycleLog
from conveyor.serve import Endpoint, Server
from conveyor.serve._rollout import served_share


def _register(*models: dict) -> None:
    for i, model in enumerate(models, 1):
        cv.models.register("m", {"version": i, **model}, format="pickle")
    cv.models.alias("m", "champion", 1)


def _server(**options: object) -> Server:
    endpoint = Endpoint(
        "m@champion",
        handler="modelfns:Flaky",
        trust_pickle=True,
        watch=0.02,
        input_type=dict,
        max_batch=8,
        **options,
    )
    server = Server(endpoint, port=0).start()
    assert server.wait_ready(60), server.not_ready_reason()
    return server


def _send(client: httpx.Client, xs: range) -> list[httpx.Response]:
    return [client.post("/predict", json={"x": x}) for x in xs]


def test_a_canary_splits_traffic_and_the_champion_answers_what_the_candidate_fails() -> None:
    _register({}, {"fail_every": 5})
    server = _server()
    try:
        with LifecycleLog() as log, httpx.Client(base_url=server.url, trust_env=False) as c:
            rollout = log.start_rollout(
                "m", "champion", mode="canary", champion=1, candidate=2, share=0.5
            )
            assert wait_until(lambda: log.rollout(rollout.id).served_at is not None, 60)
            answers = _send(c, range(1, 201))
            assert {a.status_code for a in answers} == {200}  # none failed, though v2 erred
            by = Counter(a.json()["version"] for a in answers)
            assert by[1] > 60 and by[2] > 40, by
            # every answer by v2 is one v2 could give; the multiples of 5 it sent back
            assert all(a.json()["y"] % 10 != 0 for a in answers if a.json()["version"] == 2)
            assert {a.headers["x-model-version"] for a in answers} == {"1", "2"}
            assert wait_until(
                lambda: (
                    log.window(rollout.id, 0, "candidate").requests
                    + log.window(rollout.id, 0, "champion").requests
                    >= 200
                ),
                30,
            )
            mine = log.window(rollout.id, 0, "candidate")
            assert mine.errors > 0 and mine.errors == pytest.approx(mine.requests / 5, abs=15)
            assert log.window(rollout.id, 0, "champion").errors == 0
            log.set_share(rollout.id, 0.0, step=1)
            assert wait_until(lambda: server.traffic.route.step == 1, 30)  # type: ignore[union-attr]
            assert {a.json()["version"] for a in _send(c, range(1, 41))} == {1}
            log.finish_rollout(rollout.id, "rolled_back", "errors")
            assert wait_until(lambda: server.traffic.route is None, 30)  # type: ignore[union-attr]
            assert {a.json()["version"] for a in _send(c, range(1, 21))} == {1}
    finally:
        server.stop()


def test_a_promoted_canary_is_swapped_in_warm() -> None:
    _register({}, {})
    server = _server()
    try:
        with LifecycleLog() as log, httpx.Client(base_url=server.url, trust_env=False) as c:
            rollout = log.start_rollout(
                "m", "champion", mode="canary", champion=1, candidate=2, share=0.3
            )
            assert wait_until(lambda: log.rollout(rollout.id).served_at is not None, 60)
            warm = server.traffic.route.deployment  # type: ignore[union-attr]
            cv.models.alias("m", "champion", 2, reason="canary passed")
            assert wait_until(lambda: server.version == "m:2", 30)
            assert server.batcher.deployment is warm  # not loaded a second time
            log.finish_rollout(rollout.id, "promoted", "passed")
            assert {a.json()["version"] for a in _send(c, range(1, 21))} == {2}
    finally:
        server.stop()


def test_a_shadow_is_mirrored_compared_and_never_answers() -> None:
    _register({}, {"fail_every": 4})
    server = _server()
    try:
        with LifecycleLog() as log, httpx.Client(base_url=server.url, trust_env=False) as c:
            rollout = log.start_rollout(
                "m", "champion", mode="shadow", champion=1, candidate=2, share=1.0
            )
            assert wait_until(lambda: log.rollout(rollout.id).served_at is not None, 60)
            answers = _send(c, range(1, 101))
            assert {a.json()["version"] for a in answers} == {1}
            assert {a.status_code for a in answers} == {200}
            assert wait_until(lambda: log.window(rollout.id, 0, "shadow").requests >= 50, 30), (
                server.traffic.route,
                log.traffic(rollout.id),
            )
            shadow = log.window(rollout.id, 0, "shadow")
            assert shadow.errors > 0 and shadow.compared == shadow.requests - shadow.errors
            assert shadow.agreed == shadow.compared  # the same labels where it answered
            # the champion answered every request; the shadow saw what was mirrored
            shares = {w.arm: w.share for w in log.traffic(rollout.id)}
            assert shares == {"champion": 1.0, "shadow": 1.0}
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("mode", "arm", "expected"),
    [
        ("canary", "candidate", 0.25),
        ("canary", "champion", 0.75),
        ("shadow", "champion", 1.0),  # the shadow's answers are never returned
        ("shadow", "shadow", 0.25),  # the share of batches mirrored to it
        ("watch", "champion", 1.0),  # the promoted version serves everything
    ],
)
def test_the_share_each_arm_answered_is_what_its_row_keeps(
    mode: str, arm: str, expected: float
) -> None:
    assert served_share(mode, arm, 0.25) == expected


def test_a_candidate_that_cannot_load_ends_its_rollout() -> None:
    cv.models.register("m", {"version": 1}, format="pickle", alias="champion")
    cv.models.register("m", {"version": 2}, format="pickle")
    server = _server()
    try:
        server.endpoint.trust_pickle = False  # the candidate's pickle is refused now
        with LifecycleLog() as log:
            rollout = log.start_rollout(
                "m", "champion", mode="canary", champion=1, candidate=2, share=0.5
            )
            assert wait_until(lambda: log.rollout(rollout.id).state != "running", 60)
            ended = log.rollout(rollout.id)
            assert ended.state == "rolled_back" and "cannot serve" in ended.reason
    finally:
        server.stop()


def test_labels_are_joined_by_request_id() -> None:
    _register({})
    server = _server(feedback_window=50)
    try:
        with httpx.Client(base_url=server.url, trust_env=False) as c:
            answers = _send(c, range(1, 61))
            ids = [a.headers["x-request-id"] for a in answers]
            mine = c.post("/predict", json={"x": 3}, headers={"X-Request-Id": "client-7"})
            assert mine.headers["x-request-id"] == "client-7"
            joined = c.post(
                "/feedback",
                json=[{"request_id": i, "label": (n + 1) % 3} for n, i in enumerate(ids[-20:], 40)],
            )
            assert joined.status_code == 200 and joined.json()["joined"] == 20
            old = c.post("/feedback", json={"request_id": ids[0], "label": 1})
            assert old.status_code == 404 and "last 50" in old.json()["detail"]
            assert c.post("/feedback", json={"label": 1}).status_code == 422
            assert c.post("/feedback", content=b"{nope").status_code == 422
            assert (
                c.post("/feedback", json={"request_id": "client-7", "label": 0}).status_code == 200
            )
        with LifecycleLog() as log:
            assert wait_until(
                lambda: sum(n for n, _ in log.live_performance("m").values()) == 21, 30
            )
            assert log.live_performance("m") == {1: (21, 21)}
            assert len(log.labeled("m")) == 21
    finally:
        server.stop()


def test_the_served_versions_reference_raises_a_drift_alarm_on_moved_requests() -> None:
    np = pytest.importorskip("numpy")
    from conveyor.lifecycle import Reference

    _register({})
    rng = np.random.default_rng(0)
    with LifecycleLog() as log:
        ref = Reference.fit({"x": rng.integers(0, 1000, 5000)})
        log.save_reference("m", 1, ref.to_bytes())
    server = _server(drift_window=100, features=lambda r: {"x": r["x"]})
    try:
        with LifecycleLog() as log, httpx.Client(base_url=server.url, trust_env=False) as c:
            _send(c, range(1, 1000, 9))  # 111 requests like the reference's
            assert wait_until(lambda: log.events("m", kinds=["drift_check"]), 30)
            check = log.events("m", kinds=["drift_check"])[0]
            assert check.passed and check.version == 1 and check.evidence["rows"] >= 100
            _send(c, range(2000, 2111))  # moved far out of the reference's range
            assert wait_until(lambda: log.events("m", kinds=["drift_alarm"]), 30)
            (alarm,) = log.events("m", kinds=["drift_alarm"])
            assert alarm.passed is False and "x" in alarm.summary
            assert alarm.evidence["since"] < alarm.evidence["until"]
    finally:
        server.stop()
