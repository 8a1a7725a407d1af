"""Retraining on drift: a drift alarm in the store starts a release over its window.

::

    retrain_on_drift(release)              # forever: each new alarm, one release
    retrain_on_drift(release, once=True)   # the first alarm's release, then return

A server records a ``drift_alarm`` event when its window of requests moved away from
the served version's reference (:mod:`conveyor.serve._monitor`). Each alarm seen here
runs ``release`` with ``cause`` = the alarm (so the new version's lineage leads back to
it) and ``window`` = the alarm's time span: ``release.build`` reads the labeled
requests of that window (:meth:`LifecycleLog.labeled`) to retrain on. The new version
goes through the same test, gate, shadow and canary as any other. A drift raises
an alarm per window and per replica: the alarms recorded while a release runs start
no other, and an alarm about a version the alias no longer serves is skipped.
"""

from __future__ import annotations

import threading
import time

from conveyor.lifecycle._log import LifecycleLog
from conveyor.lifecycle._records import LifecycleEvent
from conveyor.lifecycle._release import Candidate, Release


def retrain_on_drift(
    release: Release,
    *,
    poll: float = 1.0,
    once: bool = False,
    stop: threading.Event | None = None,
    timeout: float | None = None,
    after: int | None = None,
) -> list[Candidate]:
    """Run ``release`` for each drift alarm of its model recorded from now on (or after
    event ``after``) about the version its alias serves; the alarms raised while a
    release runs start none. Return the candidates when ``stop`` is set, ``timeout``
    seconds pass, or (``once``) after the first release."""
    stop = stop or threading.Event()
    done: list[Candidate] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    with LifecycleLog(release.store) as log:
        seen = after
        if seen is None:
            seen = max((e.id for e in log.events(release.name, limit=1)), default=0)
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            alarm = _next_alarm(log, release, seen)
            if alarm is None:
                stop.wait(poll)
                continue
            since = float(alarm.evidence.get("since", 0.0))
            until = float(alarm.evidence.get("until", time.time()))
            done.append(release.run(cause=alarm.id, window=(since, until)))
            # the alarms raised while it ran are about the version it replaced, or the
            # same drift it retrained on: the next release waits for a new one
            seen = max((e.id for e in log.events(release.name, limit=1)), default=alarm.id)
            if once:
                return done
    return done


def _next_alarm(log: LifecycleLog, release: Release, after: int) -> LifecycleEvent | None:
    """The first drift alarm after event ``after`` about the version the alias serves
    now (an alarm about a version already replaced is stale), or None."""
    from conveyor.models import ModelRegistry

    alarms = log.events(release.name, kinds=["drift_alarm"], after=after)
    if not alarms:
        return None
    with ModelRegistry(release.store) as registry:
        serving = registry.aliases(release.name).get(release.alias)
    return next((a for a in alarms if a.version is None or a.version == serving), None)
