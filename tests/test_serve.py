"""Serving over HTTP: the answers to good and bad requests, readiness, the queue's
bound, batching under concurrency, metrics and the command line.

Each test serves on 127.0.0.1 with a free port, from a thread of the test process,
and ends with the server stopped (no conveyor thread left: the autouse fixture)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import BaseModel

import conveyor as cv
from conveyor.serve import Endpoint, ServeError, Server
from modelfns import Doubler, FailsToLoad, Gated, Reverse


class Request(BaseModel):
    x: int
    label: str = ""


@pytest.fixture
def serving(request: pytest.FixtureRequest) -> Iterator[Any]:
    """serving(endpoint) → a started server, stopped when the test ends."""
    servers: list[Server] = []

    def start(endpoint: Endpoint) -> Server:
        server = Server(endpoint, port=0).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, trust_env=False, timeout=30)


def test_a_request_is_answered_and_the_schema_shows_its_type(serving) -> None:  # type: ignore[no-untyped-def]
    server = serving(Endpoint(handler=Doubler, input_type=Request, example={"x": 1}))
    assert server.host == "127.0.0.1" and server.wait_ready(30)
    with client(server) as c:
        assert c.post("/predict", json={"x": 21}).json() == {"y": 42, "version": 0}
        body = c.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert schema["properties"]["x"]["type"] == "integer" and schema["required"] == ["x"]
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/ready").json()["ready"] is True


@pytest.mark.parametrize(
    ("body", "field", "type_"),
    [
        (b'{"x": ', "body", "json_invalid"),
        (b'{"x": "seven"}', "body.x", "int_parsing"),
        (b'{"label": "no x"}', "body.x", "missing"),
        (b"[1, 2]", "body", "model_type"),
        (b"", "body", "json_invalid"),
    ],
)
def test_a_bad_body_is_a_422_naming_the_field(serving, body: bytes, field: str, type_: str) -> None:  # type: ignore[no-untyped-def]
    server = serving(Endpoint(handler=Doubler, input_type=Request))
    with client(server) as c:
        answer = c.post("/predict", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422
        (error,) = answer.json()["detail"]
        assert (error["field"], error["type"]) == (field, type_) and error["message"]
        assert c.post("/predict", json={"x": 1}).status_code == 200  # and it goes on


def test_an_oversize_body_is_a_413_with_or_without_a_length(serving) -> None:  # type: ignore[no-untyped-def]
    server = serving(Endpoint(handler=Doubler, input_type=dict, max_body=1000))
    big = b'{"x": "' + b"a" * 5000 + b'"}'
    with client(server) as c:
        answer = c.post("/predict", content=big, headers={"content-type": "application/json"})
        assert answer.status_code == 413 and "limit is 1000" in answer.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            for i in range(0, len(big), 100):
                yield big[i : i + 100]

        answer = c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert answer.status_code == 413
        assert c.post("/predict", json={"x": 2}).json()["y"] == 4


def test_a_media_type_the_endpoint_does_not_take_is_a_415(serving) -> None:  # type: ignore[no-untyped-def]
    server = serving(Endpoint(handler=Doubler, input_type=dict))
    with client(server) as c:
        answer = c.post("/predict", content=b"x=1", headers={"content-type": "text/plain"})
        assert answer.status_code == 415 and "application/json" in answer.json()["detail"]


def test_a_binary_endpoint_takes_raw_bytes(serving) -> None:  # type: ignore[no-untyped-def]
    server = serving(Endpoint(handler=Reverse, input_type=bytes))
    with client(server) as c:
        payload = bytes(range(256)) * 4
        answer = c.post(
            "/predict", content=payload, headers={"content-type": "application/octet-stream"}
        )
        assert answer.status_code == 200 and answer.content == payload[::-1]
        assert answer.headers["content-type"] == "application/octet-stream"
        schema = c.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
        assert "application/octet-stream" in schema["content"]


def test_an_exception_in_the_model_is_a_500_with_an_error_id_and_only_for_that_request(
    serving, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    server = serving(Endpoint(handler=Doubler, input_type=dict))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as c:
            bodies = [{"x": i} for i in range(20)] + [{"x": "boom"}]
            return await asyncio.gather(*(c.post("/predict", json=b) for b in bodies))

    answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [200] * 20 + [500]
    detail = answers[-1].json()["detail"]
    assert "cannot take 'boom'" in detail["error"] and len(detail["error_id"]) == 12
    assert detail["error_id"] in caplog.text  # the id leads to the traceback in the log
    assert [a.json()["y"] for a in answers[:20]] == [2 * i for i in range(20)]


def test_a_model_that_fails_to_load_is_never_ready_and_says_why(serving) -> None:  # type: ignore[no-untyped-def]
    server = serving(Endpoint(handler=FailsToLoad, input_type=dict))
    assert not server.wait_ready(30)
    with client(server) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and "weights do not fit" in ready.json()["error"]
        answer = c.post("/predict", json={"x": 1})
        assert answer.status_code == 503 and "failed to load" in answer.json()["detail"]


def test_a_full_queue_answers_503_with_retry_after_and_holds_no_more(serving) -> None:  # type: ignore[no-untyped-def]
    Gated.GATE.clear()
    server = serving(Endpoint(handler=Gated, input_type=dict, max_batch=1, max_queue=3))
    assert server.wait_ready(30)

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as c:
            first = asyncio.create_task(c.post("/predict", json={"x": 0}))  # held in the model
            while server.batcher._in_flight < 1:
                await asyncio.sleep(0.001)
            queued = [asyncio.create_task(c.post("/predict", json={"x": i})) for i in (1, 2, 3)]
            while len(server.batcher._queue) < 3:
                await asyncio.sleep(0.001)
            refused = await c.post("/predict", json={"x": 4})
            assert len(server.batcher._queue) == 3  # the refused one never queued
            Gated.GATE.set()
            return [refused, await first, *(await asyncio.gather(*queued))]

    refused, *answered = asyncio.run(flood())
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert [a.json()["y"] for a in answered] == [0, 2, 4, 6]


def test_requests_that_wait_while_the_model_is_busy_go_as_one_batch(serving) -> None:  # type: ignore[no-untyped-def]
    Gated.GATE.clear()
    server = serving(Endpoint(handler=Gated, input_type=dict, max_batch=8))
    assert server.wait_ready(30)
    Gated.batches.clear()

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as c:
            first = asyncio.create_task(c.post("/predict", json={"x": 0}))
            while server.batcher._in_flight < 1:
                await asyncio.sleep(0.001)
            rest = [asyncio.create_task(c.post("/predict", json={"x": i})) for i in range(1, 6)]
            while len(server.batcher._queue) < 5:
                await asyncio.sleep(0.001)
            Gated.GATE.set()
            return [await first, *(await asyncio.gather(*rest))]

    answers = asyncio.run(run())
    assert [a.json()["y"] for a in answers] == [0, 2, 4, 6, 8, 10]
    assert Gated.batches == [1, 5]  # the lone first at once; the five that waited, together


def test_sequential_requests_are_never_held_for_a_batch(serving) -> None:  # type: ignore[no-untyped-def]
    server = serving(Endpoint(handler=Doubler, input_type=dict, max_batch=32, example={"x": 1}))
    assert server.wait_ready(30)
    with client(server) as c:
        for i in range(30):
            assert c.post("/predict", json={"x": i}).json()["y"] == 2 * i
    # A sequential client cannot come faster than one request per service time
    # (λ·b ≤ 1 ≤ n): the batcher never chose to wait.
    assert list(server.batcher.sizes)[-30:] == [1] * 30 and server.batcher.waits == 0


def test_metrics_count_requests_batches_and_queue(serving) -> None:  # type: ignore[no-untyped-def]
    server = serving(Endpoint(handler=Doubler, input_type=dict))
    with client(server) as c:
        assert server.wait_ready(30)
        for i in range(5):
            c.post("/predict", json={"x": i})
        c.post("/predict", content=b"{", headers={"content-type": "application/json"})
        text = c.get("/metrics").text
    assert 'conveyor_serve_requests_total{code="200"} 5.0' in text
    assert 'conveyor_serve_requests_total{code="422"} 1.0' in text
    assert (
        "conveyor_serve_request_seconds_bucket" in text
        and "conveyor_serve_batch_size_count" in text
    )
    assert "conveyor_serve_queue_depth 0.0" in text
    report = server.report()
    assert "5 requests" in report and "predicted" in report


def test_a_registered_model_is_served_by_its_format_with_its_signature(serving) -> None:  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(1).normal(size=(30, 4))
    est = LinearRegression().fit(x, x @ np.array([1.0, 2.0, 3.0, 4.0]))
    cv.models.register("lin", est, signature={"shape": [4]}, alias="champion")
    server = serving(Endpoint("lin@champion"))
    assert server.wait_ready(30) and server.version == "lin:1"
    with client(server) as c:
        out = c.post("/predict", json={"inputs": [1, 1, 1, 1]}).json()["outputs"]
        assert out == pytest.approx(10.0, rel=1e-3)
        wrong = c.post("/predict", json={"inputs": [1, 1, 1]})
        assert wrong.status_code == 422 and wrong.json()["detail"][0]["field"] == "body.inputs"


def test_a_model_served_on_processes_is_loaded_once_per_worker(serving) -> None:  # type: ignore[no-untyped-def]
    server = serving(
        Endpoint(handler="modelfns:Doubler", input_type=dict, executor="processes", workers=2)
    )
    assert server.wait_ready(60)
    with client(server) as c:
        assert [c.post("/predict", json={"x": i}).json()["y"] for i in range(10)] == [
            2 * i for i in range(10)
        ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch": 0}, "max_batch=0"),
        ({"max_queue": -1}, "max_queue=-1"),
        ({"target_p95": 0}, "target_p95=0"),
        ({"executor": "sync"}, "executor='sync'"),
        ({"handler": "nowhere:Nothing"}, "cannot be imported"),
        ({"handler": "modelfns:Gated.GATE"}, "must be a class"),
        ({"handler": None}, "nothing to serve"),
    ],
)
def test_a_bad_endpoint_is_refused_naming_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ServeError, match=message):
        Endpoint(**{"handler": Doubler, **options})


def test_a_missing_model_fails_before_serving() -> None:
    with pytest.raises(cv.models.ModelNotFoundError, match="no model is registered"):
        Server(Endpoint("ghost@champion"))


def test_the_serving_pipeline_runs_a_batch_job_too() -> None:
    run = (
        Endpoint(handler=Doubler, input_type=dict)
        .pipeline()
        .run([[{"x": 1}, {"x": 2}], [{"x": 3}]])
    )
    assert sorted(r["y"] for batch in run.results for r in batch) == [2, 4, 6]


@pytest.mark.slow
def test_conveyor_serve_serves_until_sigterm_and_prints_the_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(2).normal(size=(30, 4))
    cv.models.register(
        "lin", LinearRegression().fit(x, x.sum(1)), signature={"shape": [4]}, alias="champion"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "lin@champion", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_PROXY": "*"},
    )
    try:
        line = proc.stderr.readline()  # type: ignore[union-attr]
        assert "serving lin@champion (lin:1) on http://127.0.0.1:" in line
        url = line.rsplit(" ", 1)[1].strip()
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
            from conftest import wait_until

            assert wait_until(lambda: c.get("/ready").status_code == 200, timeout=60)
            assert c.post("/predict", json={"inputs": [1, 2, 3, 4]}).json()[
                "outputs"
            ] == pytest.approx(10, rel=1e-3)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()  # type: ignore[union-attr]
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    assert "1 requests in 1 batches" in rest and "predicted" in rest
