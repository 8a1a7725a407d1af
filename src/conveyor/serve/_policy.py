"""The batcher's decisions, as pure functions of what it measured: no clock, no I/O.

When a worker is free and ``n`` requests wait, the batcher either sends them now or
waits ``Δ`` for more. With the model's service time ``S(k) = a·k + b`` (fitted from
the batches it ran, :class:`ServiceTimeModel`) and the arrival rate ``λ``
(:class:`ArrivalRate`), waiting ``Δ`` gathers ``λΔ`` more requests into this batch.
Summed over the same requests, sending now costs them, against waiting::

    waiting − sending now  =  Δ · (n·(1 + a·λ) − λ·b)  +  λ·Δ²

so waiting lowers the mean latency only when ``λ·b > n·(1 + a·λ)``: requests arrive
faster than one per fixed cost ``b`` of a batch, per request already waiting. Then the
best wait is ``Δ* = (λ·b − n·(1 + a·λ)) / (2λ)``, cut so that the batch does not pass
``max_batch`` and the oldest request still meets the latency target. Consequences
(each one a test with a known answer):

- idle (``λ → 0``): never wait; a lone request goes at once;
- heavy load: requests pile up while the worker is busy, and full batches go at once;
- a latency target bounds every wait: ``age + Δ + S(n + λΔ) ≤ target``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

MIN_WAIT = 50e-6  # a wait shorter than this costs more in wake-ups than it can gain


@dataclass(frozen=True)
class Decision:
    """Send ``send`` requests now (0: none), else wait until ``wait`` seconds from now."""

    send: int
    wait: float
    reason: str


def decide(
    *,
    queued: int,
    oldest_age: float,
    rate: float,
    a: float,
    b: float,
    max_batch: int,
    target: float | None = None,
) -> Decision:
    """What to do with ``queued`` requests (the oldest ``oldest_age`` s old) when a worker
    is free, at ``rate`` requests/s, for a model taking ``a·n + b`` s per batch of n."""
    if queued <= 0:
        return Decision(0, math.inf, "nothing waits")
    if queued >= max_batch:
        return Decision(max_batch, 0.0, "a full batch waits")
    if target is not None and oldest_age + a * queued + b >= target:
        return Decision(queued, 0.0, "the oldest request is at its latency target")
    gain = rate * b - queued * (1.0 + a * rate)
    if rate <= 0 or gain <= 0:
        return Decision(queued, 0.0, "waiting would not lower latency at this load")
    wait = gain / (2.0 * rate)
    wait = min(wait, (max_batch - queued) / rate)  # no more than a full batch's worth
    if target is not None:  # age + Δ + a·(n + λΔ) + b ≤ target
        wait = min(wait, (target - oldest_age - a * queued - b) / (1.0 + a * rate))
    if wait < MIN_WAIT:
        return Decision(queued, 0.0, "the useful wait is too short")
    return Decision(0, wait, f"waiting {wait * 1e3:.2f} ms for ~{rate * wait:.1f} more")


def predicted_latency(*, age: float, size: int, a: float, b: float) -> float:
    """What a request ``age`` s old is predicted to wait in all, sent now in a batch of ``size``."""
    return age + a * size + b


class ServiceTimeModel:
    """``S(n) = a·n + b`` by least squares over the last ``window`` batches, taking for
    each batch size the fastest time seen: on a shared machine a batch is slowed by
    whatever else runs, never sped up, so the fastest is the model's own cost.

    Until two different batch sizes have been seen the slope is unknown: ``a`` is
    then the time per request and ``b`` is 0, which never makes the batcher wait (it
    waits only for a fixed cost ``b`` to share)."""

    def __init__(self, *, window: int = 256) -> None:
        self._batches: deque[tuple[int, float]] = deque(maxlen=window)
        self.a = 0.0
        self.b = 0.0

    def observe(self, size: int, seconds: float) -> None:
        self._batches.append((size, seconds))
        self._fit()

    def _fit(self) -> None:
        fastest: dict[int, float] = {}
        for size, seconds in self._batches:
            fastest[size] = min(seconds, fastest.get(size, math.inf))
        xs, ys = list(fastest), list(fastest.values())
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            self.a, self.b = my / mx, 0.0
            return
        a = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        a = max(a, 0.0)  # noise can tilt it below zero; time never falls with size
        b = my - a * mx
        if 1 in fastest:  # never predict a lone request slower than one was served:
            b = min(b, fastest[1] - a)  # so a sequential client (λ ≤ 1/S(1)) never waits
        self.a, self.b = a, max(b, 0.0)

    def predict(self, size: int) -> float:
        return self.a * size + self.b

    @property
    def batches(self) -> int:
        return len(self._batches)


class ArrivalRate:
    """Requests per second now: over the last ``recent`` arrivals (so that a burst, such
    as closed-loop clients answered together, shows at once), measured up to ``now`` (so
    that the rate falls while none come), and none older than ``horizon`` seconds."""

    def __init__(self, *, horizon: float = 1.0, recent: int = 16) -> None:
        self.horizon = horizon
        self._times: deque[float] = deque(maxlen=recent)

    def observe(self, now: float) -> None:
        self._times.append(now)

    def rate(self, now: float) -> float:
        while self._times and now - self._times[0] > self.horizon:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(now - self._times[0], 1e-6)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0–1) of ``values`` by nearest rank (nan when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
