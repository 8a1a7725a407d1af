"""The batcher: requests wait in one bounded queue; a loop on the server's event loop
forms batches as :func:`conveyor.serve._policy.decide` says and hands each to the
current :class:`Deployment` (a running conveyor service).

::

    request ─► queue (bounded: 503 + Retry-After) ─► decide ─► deployment.submit(batch)
                                                          ▲              │
                                 service time, arrivals ──┘   results ◄──┘

A swap (:meth:`Batcher.swap`) points new batches at a new deployment at once; the old
one finishes the batches it holds (they were sent, they are answered) and is then
stopped with ``drain=True``. So no request is dropped or failed by a swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.serve._metrics import ServeMetrics
from conveyor.serve._policy import ArrivalRate, ServiceTimeModel, decide, percentile
from conveyor.serve._rollout import Traffic
from conveyor.serve._stages import Failure

WINDOW = 10_000  # requests whose predicted and measured latency the report keeps


class Overloaded(Exception):
    """The request queue is full; ``retry_after`` is the predicted seconds to drain it."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the request queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Deployment:
    """One model version running as a conveyor service."""

    version: str | None  # "name:3", or None for an object served as it is
    service: Any
    in_flight: int = 0
    retired: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def stop_when_idle(self) -> None:
        """Called when it is swapped out and whenever one of its batches ends: the
        last batch out stops the service (draining) on a thread of its own."""
        if self.retired and self.in_flight == 0 and not self.done.is_set():
            self.done.set()
            threading.Thread(
                target=self.service.stop, kwargs={"drain": True}, name="conveyor-serve-drain"
            ).start()


@dataclass
class _Request:
    item: Any
    arrival: float
    future: asyncio.Future[Any]
    predicted: float = 0.0
    arm: str | None = None  # during a canary: "champion", "candidate", or "retry"


class Batcher:
    """Runs on one event loop (``start()`` from within it); ``infer`` from its handlers."""

    def __init__(
        self,
        deployment: Deployment,
        *,
        max_batch: int,
        max_queue: int,
        target: float | None,
        workers: int,
        metrics: ServeMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.deployment = deployment
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.target = target
        self.workers = workers
        self.metrics = metrics
        self.clock = clock
        self.model = ServiceTimeModel()
        self.arrivals = ArrivalRate()
        self._queue: deque[_Request] = deque()
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.predicted: deque[float] = deque(maxlen=WINDOW)
        self.measured: deque[float] = deque(maxlen=WINDOW)
        self.sizes: deque[int] = deque(maxlen=WINDOW)
        self.last_reason = ""
        self.waits = 0  # decisions to wait for more requests
        self.traffic: Traffic | None = None  # a rollout's routing, set by the server

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- the handlers' side -------------------------------------------------------------

    async def infer(self, item: Any) -> Any:
        """The answer to one request (a :class:`Failure` when the model raised on it)."""
        return (await self.answer(item))[0]

    async def answer(self, item: Any) -> tuple[Any, str | None]:
        """The answer to one request and the arm of a canary that gave it ("champion",
        "candidate"; None outside a canary)."""
        if len(self._queue) >= self.max_queue:
            raise Overloaded(self._retry_after())
        now = self.clock()
        assert self._loop is not None
        request = _Request(item, now, self._loop.create_future())
        self._queue.append(request)
        self.arrivals.observe(now)
        self.metrics.queue_depth.set(len(self._queue))
        if self._in_flight < self.workers:  # else the next batch's end wakes the loop
            self._wake.set()
        result = await request.future
        measured = self.clock() - request.arrival
        self.measured.append(measured)
        self.predicted.append(request.predicted)
        self.metrics.latency.observe(measured)
        return result, ("champion" if request.arm == "retry" else request.arm)

    def _retry_after(self) -> int:
        batches = math.ceil(len(self._queue) / self.max_batch)
        return max(1, math.ceil(batches * self.model.predict(self.max_batch) / self.workers))

    def refit(self, fits: list[tuple[int, float]]) -> None:
        """Start the service-time fit afresh from warm-up batches (size, seconds); the
        first is left out, since a worker's first call pays its warm-up."""
        self.model = ServiceTimeModel()
        for size, seconds in fits[1:]:
            self.model.observe(size, seconds)

    def swap(self, deployment: Deployment) -> Deployment:
        """Send new batches to ``deployment``; the old one drains, then stops."""
        old, self.deployment = self.deployment, deployment
        old.retired = True
        old.stop_when_idle()
        return old

    # --- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        deadline = math.inf  # a wait once decided is never extended
        while True:
            if not self._queue or self._in_flight >= self.workers:
                deadline = math.inf if not self._queue else deadline
                await self._wake.wait()
                self._wake.clear()
                continue
            now = self.clock()
            if now >= deadline:
                self._dispatch(min(len(self._queue), self.max_batch), now)
                deadline = math.inf
                continue
            decision = decide(
                queued=len(self._queue),
                oldest_age=now - self._queue[0].arrival,
                rate=self.arrivals.rate(now),
                a=self.model.a,
                b=self.model.b,
                max_batch=self.max_batch,
                target=self.target,
            )
            self.last_reason = decision.reason
            if decision.send:
                self._dispatch(decision.send, now)
                deadline = math.inf
                continue
            self.waits += 1
            deadline = min(deadline, now + decision.wait)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), deadline - now)

    def _dispatch(self, size: int, now: float) -> None:
        batch = [self._queue.popleft() for _ in range(size)]
        predicted_service = self.model.predict(size)
        for request in batch:
            request.predicted = now - request.arrival + predicted_service
        self.metrics.queue_depth.set(len(self._queue))
        self.metrics.batch_size.observe(size)
        self.sizes.append(size)
        traffic = self.traffic
        candidate = traffic.candidate() if traffic is not None else None
        if traffic is None or candidate is None or traffic.route.mode != "canary":  # type: ignore[union-attr]
            self._send(batch, self.deployment)
            return
        for request in batch:
            if request.arm is None:
                request.arm = traffic.arm_for()
        for deployment, part in (
            (candidate, [r for r in batch if r.arm == "candidate"]),
            (self.deployment, [r for r in batch if r.arm != "candidate"]),
        ):
            if part:
                self._send(part, deployment)

    def _send(self, batch: list[_Request], deployment: Deployment) -> None:
        deployment.in_flight += 1
        self._in_flight += 1
        self.metrics.in_flight.set(self._in_flight)
        started = self.clock()
        future = deployment.service.submit([r.item for r in batch])
        loop = self._loop
        assert loop is not None

        def finished(f: Any) -> None:
            loop.call_soon_threadsafe(self._finished, batch, f, deployment, started)

        future.add_done_callback(finished)

    def _finished(
        self, batch: list[_Request], future: Any, deployment: Deployment, started: float
    ) -> None:
        now = self.clock()
        seconds = now - started
        self._in_flight -= 1
        deployment.in_flight -= 1
        self.metrics.in_flight.set(self._in_flight)
        error = future.exception()
        if error is None:
            results = future.result()
            if deployment is self.deployment:
                self.model.observe(len(batch), seconds)
            self.metrics.batch_seconds.observe(seconds)
        else:  # the service itself failed (never the model: its errors are Failures)
            results = [Failure("-", f"the model's service failed: {error}")] * len(batch)
        traffic, retry = self.traffic, []
        for request, result in zip(batch, results, strict=False):
            if request.future.done():
                continue
            if traffic is not None and request.arm != "retry":
                traffic.observe(request.arm or "champion", now - request.arrival, result)
            if request.arm == "candidate" and isinstance(result, Failure):
                request.arm = "retry"  # the champion answers it; the canary counted it
                retry.append(request)
                continue
            request.future.set_result(result)
        self._queue.extendleft(reversed(retry))
        # a mirror takes only spare time: never while requests wait for a batch
        if traffic is not None and error is None and not self._queue and traffic.should_mirror():
            self._mirror([r.item for r in batch], results, seconds)
        deployment.stop_when_idle()
        self._wake.set()

    def _mirror(self, items: list[Any], answers: list[Any], seconds: float) -> None:
        """Send an answered batch to the shadow candidate; compare when it comes back."""
        traffic = self.traffic
        assert traffic is not None and traffic.route is not None
        shadow = traffic.route.deployment
        traffic.route.shadow_busy = True
        shadow.in_flight += 1
        started = self.clock()
        loop = self._loop
        assert loop is not None

        def back(f: Any) -> None:
            loop.call_soon_threadsafe(mirrored, f)

        def mirrored(f: Any) -> None:
            shadow.in_flight -= 1
            got = f.result() if f.exception() is None else None
            traffic.mirrored(self.clock() - started, seconds, answers, got)
            shadow.stop_when_idle()

        shadow.service.submit(items).add_done_callback(back)

    # --- the report ---------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The batcher's figures: measured and predicted latency percentiles, batches,
        the fitted service time, the arrival rate."""
        measured, predicted = list(self.measured), list(self.predicted)
        sizes = list(self.sizes)
        return {
            "requests": len(measured),
            "batches": len(sizes),
            "mean_batch": sum(sizes) / len(sizes) if sizes else math.nan,
            "p50_ms": percentile(measured, 0.5) * 1e3,
            "p95_ms": percentile(measured, 0.95) * 1e3,
            "predicted_p95_ms": percentile(predicted, 0.95) * 1e3,
            "service_a_ms": self.model.a * 1e3,
            "service_b_ms": self.model.b * 1e3,
            "rate_per_s": self.arrivals.rate(self.clock()),
            "waits": self.waits,
            "last_decision": self.last_reason,
        }


def format_report(figures: dict[str, Any], target: float | None) -> str:
    """The batcher's report as a few lines of text."""
    f = figures
    lines = [
        f"{f['requests']} requests in {f['batches']} batches (mean size {f['mean_batch']:.1f})",
        f"latency p50 {f['p50_ms']:.2f} ms, p95 {f['p95_ms']:.2f} ms measured; "
        f"p95 {f['predicted_p95_ms']:.2f} ms predicted"
        + (f" (target {target * 1e3:.0f} ms)" if target else ""),
        f"service time per batch of n: {f['service_a_ms']:.3f} ms × n + {f['service_b_ms']:.3f} ms",
    ]
    return "\n".join(lines)
