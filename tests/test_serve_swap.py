"""Hot swap: moving the alias swaps the served version while clients keep sending,
with no failed request; a version that cannot load is never swapped in."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import httpx
import pytest

import conveyor as cv
from conftest import wait_until
from conveyor.serve import Endpoint, Server
from modelfns import Tiny

torch = pytest.importorskip("torch")


def _register_two() -> None:
    net = Tiny()
    cv.models.register("tiny", net, builder=Tiny, signature={"shape": [4]}, alias="champion")
    with torch.no_grad():
        net.bias += 100.0  # version 2 answers 100 more: which one served is plain
    cv.models.register("tiny", net, builder=Tiny, signature={"shape": [4]})


class Clients:
    """``n`` closed-loop clients posting until stopped, on a thread with its own loop."""

    def __init__(self, url: str, n: int = 8) -> None:
        self.url, self.n = url, n
        self.statuses: Counter[int] = Counter()
        self.outputs: list[float] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=60) as c:

            async def one() -> None:
                while not self.stopping.is_set():
                    answer = await c.post("/predict", json={"inputs": [0, 0, 0, 0]})
                    self.statuses[answer.status_code] += 1
                    if answer.status_code == 200:
                        self.outputs.append(answer.json()["outputs"][0])

            await asyncio.gather(*(one() for _ in range(self.n)))

    def __enter__(self) -> Clients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(60)


@pytest.mark.slow
def test_moving_the_alias_under_load_fails_no_request() -> None:
    _register_two()
    server = Server(Endpoint("tiny@champion", watch=0.02, max_batch=8), port=0).start()
    try:
        assert server.wait_ready(60)
        with Clients(server.url) as clients:
            assert wait_until(lambda: sum(clients.statuses.values()) >= 20, timeout=30)
            for move, version in enumerate([2, 1, 2, 1, 2]):
                cv.models.alias("tiny", "champion", version, reason=f"move {move}")
                assert wait_until(lambda v=version: server.version == f"tiny:{v}", timeout=30)
                done = sum(clients.statuses.values())
                assert wait_until(
                    lambda d=done: sum(clients.statuses.values()) >= d + 10, timeout=30
                )
        assert set(clients.statuses) == {200}, clients.statuses
        low = [o for o in clients.outputs if o < 50]
        assert low and len(low) < len(clients.outputs)  # both versions answered
        assert server.metrics.sample("conveyor_serve_swaps_total") == 5.0
    finally:
        server.stop()


def test_a_version_that_cannot_load_is_not_swapped_in() -> None:
    _register_two()
    cv.models.register("tiny", {"not": "weights"}, format="pickle")  # untrusted: refused
    server = Server(Endpoint("tiny@champion", watch=0), port=0).start()
    try:
        assert server.wait_ready(60)
        cv.models.alias("tiny", "champion", 3, reason="a bad push")
        assert not asyncio.run(server.check_alias())
        with httpx.Client(base_url=server.url, trust_env=False) as c:
            ready = c.get("/ready").json()
            assert ready["version"] == "tiny:1" and "trust_pickle" in ready["swap_error"]
            assert c.post("/predict", json={"inputs": [0, 0, 0, 0]}).status_code == 200
    finally:
        server.stop()
