"""Failure policies: how a stage retries a call that failed.

A policy is a value, validated when made, and pure: the scheduler asks it whether
to retry and how long to wait, and does the rest.
"""

from __future__ import annotations

import dataclasses
import random
import typing

from conveyor.errors import PipelineError, RemoteError


@dataclasses.dataclass(frozen=True)
class Retry:
    """Retry a failed call: ``retries`` more calls after the first one fails.

    Counts are the same everywhere: ``retry=3`` on a stage, ``Retry()``,
    ``Retry(retries=3)`` and ``Retry(attempts=4)`` all mean three retries, four calls
    in all. Give ``retries`` or ``attempts`` (the first call included), not both;
    either is then readable on the policy.

    The wait before call *k + 1* is ``backoff * factor ** (k - 1)`` seconds, capped at
    ``max_backoff`` and scaled by a random factor in ``[1 - jitter, 1 + jitter]`` so
    that many items failing together do not retry together. Only exceptions that
    are instances of ``on`` are retried; others fail (or are skipped) at once. This
    holds on every executor: an exception from a process worker comes back as
    (a subclass of) its own class, or, if its class cannot be imported in the
    driver, as a :class:`~conveyor.RemoteError` matched by the qualified names of
    the original's class and bases. A lost process worker counts as
    :class:`~conveyor.WorkerLostError` and a call past the stage's timeout as
    :class:`TimeoutError`, both retried under the default ``on``.

        @stage(retry=Retry(attempts=5, backoff=0.5, on=(ConnectionError, TimeoutError)))
        def fetch(url): ...

    """

    # calls in all, the first included; not given: retries + 1 (default 4)
    attempts: int = typing.cast(int, None)
    backoff: float = 0.1
    factor: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.2
    on: tuple[type[BaseException], ...] = (Exception,)
    retries: int | None = None  # calls after the first; None: attempts - 1 (default 3)

    def __post_init__(self) -> None:
        def fail(rule: str) -> None:
            raise PipelineError(f"Retry: {rule}")

        if self.retries is not None:
            if isinstance(self.retries, bool) or not isinstance(self.retries, int):
                fail(f"retries={self.retries!r}; give a whole number (0: no retry)")
            if self.retries < 0:
                fail(f"retries={self.retries!r}; give a whole number of at least 0 (0: no retry)")
            if self.attempts not in (None, self.retries + 1):
                fail(
                    f"attempts={self.attempts} and retries={self.retries} disagree; give one "
                    f"(attempts counts the first call: attempts={self.retries + 1} is "
                    f"retries={self.retries})"
                )
            object.__setattr__(self, "attempts", self.retries + 1)
        elif self.attempts is None:
            object.__setattr__(self, "attempts", 4)  # the default: three retries
        if not isinstance(self.attempts, int) or self.attempts < 1:
            fail(f"attempts={self.attempts!r}; give a whole number of at least 1 (1: no retry)")
        if self.backoff < 0 or self.max_backoff < 0 or self.factor < 1:
            fail(
                f"backoff={self.backoff}, factor={self.factor}, max_backoff={self.max_backoff}; "
                "waits must be non-negative and factor at least 1"
            )
        if not 0 <= self.jitter <= 1:
            fail(f"jitter={self.jitter}; give a fraction between 0 and 1")
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
            fail(f"on={self.on!r}; give exception classes, e.g. on=(ConnectionError,)")
        object.__setattr__(self, "on", on)
        object.__setattr__(self, "retries", self.attempts - 1)

    def retried(self, error: BaseException, attempt: int) -> bool:
        """Whether call number ``attempt`` (from 1), which raised ``error``, is retried."""
        return attempt < self.attempts and self.matches(error)

    def matches(self, error: BaseException) -> bool:
        """Whether ``error`` is one of ``on`` (a RemoteError: whether the original was)."""
        if isinstance(error, RemoteError):
            return any(error.is_a(cls) for cls in self.on)
        return isinstance(error, self.on)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed call number ``attempt`` before the next one."""
        base = min(self.max_backoff, self.backoff * self.factor ** (attempt - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rng.random() - 1)))


NO_RETRY = Retry(attempts=1)


def as_retry(value: Retry | int | None) -> Retry:
    """Normalise a stage's ``retry`` option: None or 0 → no retry, n → n retries."""
    if value is None:
        return NO_RETRY
    if isinstance(value, Retry):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PipelineError(
            f"retry={value!r}; give a number of retries (e.g. retry=3) or a Retry(...) policy"
        )
    return Retry(retries=value)
