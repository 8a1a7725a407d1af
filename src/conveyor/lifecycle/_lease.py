"""A running rollout's lease: what keeps a canary from outliving its controller.

The controller of a shadow, canary or watch renews its rollout's lease at every
interval (:func:`renew`). A server of ``name@alias`` checks it before following the
rollout (:func:`expire`): a lease not renewed for its ``seconds`` means the
controller is gone (killed, its machine lost), so the server ends the rollout as
rolled back, records why, and sends the candidate no more traffic; the alias never
moved, so the champion serves everything again. A controller that stops on an
exception or Ctrl-C ends its rollout itself (:func:`ended_by`).

A rollout started without a lease (by hand, through ``LifecycleLog.start_rollout``)
never expires: ``conveyor rollback NAME`` stops it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from conveyor.lifecycle._log import LifecycleLog
from conveyor.lifecycle._records import RUNNING, Rollout

SLACK = 10.0  # seconds a lease outlives three intervals: busy machines, skewed clocks


def lease_for(interval: float) -> float:
    """The lease of a controller that renews every ``interval`` seconds."""
    return 3 * interval + SLACK


def renew(log: LifecycleLog, rollout: int, seconds: float) -> None:
    """The controller of ``rollout`` is alive: its lease runs ``seconds`` from now."""

    def upsert(c: sqlite3.Connection) -> None:
        c.execute(
            "INSERT INTO rollout_leases (rollout, renewed_at, seconds) VALUES (?, ?, ?) "
            "ON CONFLICT (rollout) DO UPDATE SET renewed_at = excluded.renewed_at, "
            "seconds = excluded.seconds",
            (rollout, time.time(), seconds),
        )

    log._write(upsert)


@contextlib.contextmanager
def controlling(
    log: LifecycleLog, rollout: Rollout, interval: float, sleep: Callable[[float], None]
) -> Iterator[Callable[[float], None]]:
    """Hold ``rollout``'s lease while the block runs: yields ``sleep`` that renews it
    (at most every ``interval / 2`` seconds); an exception (Ctrl-C included) leaving the
    block ends the rollout first, so that servers stop following it."""
    seconds = lease_for(interval)
    renew(log, rollout.id, seconds)
    renewed = time.monotonic()

    def wait(s: float) -> None:
        nonlocal renewed
        if time.monotonic() - renewed >= interval / 2:
            renew(log, rollout.id, seconds)
            renewed = time.monotonic()
        sleep(s)

    try:
        yield wait
    except BaseException as exc:
        ended_by(log, rollout, exc)
        raise


def expire(log: LifecycleLog, name: str, alias: str, *, now: float | None = None) -> Rollout | None:
    """End the rollout running on ``name@alias`` if its lease ran out, record why, and
    return it; None when there is nothing to end."""
    now = time.time() if now is None else now

    def stale(c: sqlite3.Connection) -> Any:
        return c.execute(
            "SELECT r.id, l.renewed_at, l.seconds FROM rollouts r "
            "JOIN rollout_leases l ON l.rollout = r.id WHERE r.name = ? AND r.alias = ? "
            "AND r.state = ? AND l.renewed_at + l.seconds < ?",
            (name, alias, RUNNING, now),
        ).fetchone()

    row = log._read(stale)
    if row is None:
        return None
    id_, renewed_at, seconds = row
    rollout = log.rollout(id_)
    why = (
        f"its controller stopped renewing it {now - renewed_at:.0f} s ago (lease "
        f"{seconds:g} s): it was killed or lost"
    )
    return _end(log, rollout, why, {"lease": seconds, "renewed_at": renewed_at})


def ended_by(log: LifecycleLog, rollout: Rollout, exc: BaseException) -> Rollout:
    """The controller of ``rollout`` is stopping on ``exc``: end the rollout (if it
    still runs) so that no server keeps following it, and record why."""
    why = f"its controller stopped on {type(exc).__name__}: {exc}".rstrip(": ")
    return _end(log, rollout, why, {})


def _end(log: LifecycleLog, rollout: Rollout, why: str, evidence: dict[str, Any]) -> Rollout:
    """End a rollout whose controller is gone. A shadow or canary is rolled back (the
    alias never moved: the champion serves everything); a watch after a promotion is
    stopped (the new version keeps serving)."""
    watch = rollout.mode == "watch"
    serving = rollout.candidate if watch else rollout.champion
    reason = f"{why}; v{serving} serves all traffic"
    ended = log.finish_rollout(rollout.id, "stopped" if watch else "rolled_back", reason)
    if ended.reason == reason:  # this call ended it (not another replica, not the controller)
        log.record(
            rollout.name,
            "watch" if watch else "rollback",
            version=serving,
            passed=None if watch else False,
            rollout=rollout.id,
            parent=rollout.parent,
            summary=f"{rollout.mode} of v{rollout.candidate} ended: {reason}",
            evidence={"from": rollout.candidate, "to": serving, **evidence},
        )
    return ended
