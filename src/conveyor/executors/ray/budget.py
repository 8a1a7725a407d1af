"""The bytes one Ray stage keeps in the object store, and the cap that holds it back.

A stage whose results stay in Ray's object store (:mod:`.handles`) counts the bytes
of every result produced and not yet consumed: from the reply that made it until the
last handle to its object is dropped (the next stage has run on it). Past the cap the
stage sends its actors no new task (it waits: backpressure, never a failure) until
consumers free enough. Tasks in flight count at the bytes per unit measured so far,
so the held bytes stay under the cap while results keep their size; a stage with
nothing held and nothing in flight always sends one task, however large.

The cap is the consumers' queue bound in bytes (``capacity_bytes``) when they have
one, else a share of the cluster's object store (:data:`STORE_SHARE`).
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable
from typing import Any

from conveyor.executors.ray.handles import Outputs

STORE_SHARE = 0.25  # the default cap: this share of the cluster's object store
SMALL_STREAK = 8  # tasks in a row with small results: stop offering to keep them
PROBE_EVERY = 16  # then offer one task in this many


@dataclasses.dataclass(frozen=True)
class KeptStatistics:
    """A snapshot of a stage's kept bytes: now, the most at once, and the cap."""

    held: int
    peak: int
    cap: int | None
    objects: int  # task outputs alive in the store
    waits: int  # times a task waited for bytes to be freed


class KeptBytes:
    """Accounting of one stage's results in the object store (thread-safe)."""

    def __init__(self, cap: int | None, wake: Callable[[], None]) -> None:
        self.cap = cap
        self._wake = wake
        # re-entrant: a finaliser (_free) may run in a thread that holds it, if the last
        # handle to an object is dropped there
        self._lock = threading.RLock()
        self.held = 0
        self.peak = 0
        self.objects = 0
        self.waits = 0
        self._small = 0  # tasks in a row whose results were too small to keep
        self._skipped = 0
        self._in_flight = 0  # units sent whose results have not come back
        self._unit_bytes = 0.0  # moving average of a unit's result size (0: unmeasured)

    def admits(self, units: int) -> bool:
        """Whether a task of ``units`` units may be sent now."""
        if self.cap is None:
            return True
        with self._lock:
            if not self.held and not self._in_flight:
                return True
            if self._unit_bytes <= 0:  # nothing measured yet: one task at a time
                ok = False
            else:
                expected = (self._in_flight + units) * self._unit_bytes
                ok = self.held + expected <= self.cap
            if not ok:
                self.waits += 1
            return ok

    def probe(self) -> bool:
        """Whether the next task should offer to keep its results (``run_kept``): always,
        until :data:`SMALL_STREAK` tasks in a row answered with values (their results
        were small); then one task in :data:`PROBE_EVERY`, to notice when they grow.
        Small results then cost nothing more than on the plain path."""
        with self._lock:
            if self._small < SMALL_STREAK:
                return True
            self._skipped = (self._skipped + 1) % PROBE_EVERY
            return self._skipped == 0

    def answered(self, *, kept: bool) -> None:
        """A task offered to keep its results did (``kept``), or answered with values."""
        with self._lock:
            self._small = 0 if kept else self._small + 1
            if not kept and self._unit_bytes <= 0:
                self._unit_bytes = 1.0  # measured: small (keep() moves it when they grow)

    def sent(self, units: int) -> None:
        with self._lock:
            self._in_flight += units

    def returned(self, units: int) -> None:
        """A task of ``units`` units came back (or was lost): none of it is in flight."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - units)

    def keep(
        self, ref: Any, nbytes: int, units: int, stage: str, lineage: Any = None, place: str = ""
    ) -> Outputs:
        """``ref`` holds ``nbytes`` of results, made on node ``place`` (``lineage``: how to
        make them again): counted until its last handle is dropped."""
        outputs = Outputs(ref, nbytes, stage, lineage, place)
        with self._lock:
            self.held += nbytes
            self.objects += 1
            self.peak = max(self.peak, self.held)
            if units:  # up at once, down slowly: an estimate under the sizes overshoots
                per = nbytes / units
                self._unit_bytes = (
                    per if per >= self._unit_bytes else 0.7 * self._unit_bytes + 0.3 * per
                )
        weakref.finalize(outputs, self._free, nbytes)
        return outputs

    def _free(self, nbytes: int) -> None:
        with self._lock:
            self.held -= nbytes
            self.objects -= 1
        self._wake()

    def statistics(self) -> KeptStatistics:
        with self._lock:
            return KeptStatistics(self.held, self.peak, self.cap, self.objects, self.waits)


def default_cap(ray: Any) -> int | None:
    """:data:`STORE_SHARE` of the cluster's object store (None: Ray does not say)."""
    try:
        store = ray.cluster_resources().get("object_store_memory")
    except Exception:
        return None
    return int(store * STORE_SHARE) if store else None
