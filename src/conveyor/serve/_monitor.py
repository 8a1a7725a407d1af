"""What a server watches while it serves: labels that arrive later, and drift.

Every answer carries a request id (``X-Request-Id``: the client's, or one made here).
The last ``feedback_window`` requests are kept (request, answer, version, time), so
that ``POST /feedback`` with ``{"request_id": ..., "label": ...}`` joins a label to its
request: the pair is written to the run store (``labeled_requests``: live accuracy per
version, and the data a retraining reads).

When the served version has a drift reference in the store
(:meth:`conveyor.lifecycle.LifecycleLog.save_reference`), each request's features go
into a window against it; once ``drift_window`` requests are in, the window is
checked (:meth:`conveyor.lifecycle.DriftWindow.check`), the result recorded as a
``drift_check`` event, or a ``drift_alarm`` naming the features that moved, with the
window's time span and rows, and a new window begins. Memory is bounded by
``feedback_window`` requests and the window's fixed-size counts.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("conveyor.serve")
PENDING_LIMIT = 50_000  # features waiting for the window (beyond: counted as skipped)


def default_features(item: Any) -> Mapping[str, Any] | None:
    """``{"inputs": [numbers]}`` (or a model with ``inputs``) as columns x0, x1, ...;
    None for requests of other shapes (not monitored)."""
    if hasattr(item, "model_dump"):
        item = item.model_dump()
    inputs = item.get("inputs") if isinstance(item, dict) else None
    if isinstance(inputs, list) and all(isinstance(v, (int, float)) for v in inputs):
        return {f"x{i}": v for i, v in enumerate(inputs)}
    return None


def jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (bytes, bytearray)):
        return None
    return value


class Monitor:
    """Request ids, feedback joins and the drift window of one server."""

    def __init__(
        self,
        name: str,
        *,
        store: Any,
        keep: int,
        drift_window: int,
        drift_level: float,
        features: Callable[[Any], Mapping[str, Any] | None] | None,
    ) -> None:
        self.name, self.store = name, store
        self.keep, self.drift_window, self.drift_level = keep, drift_window, drift_level
        self.features = features or default_features
        self.served: OrderedDict[str, tuple[float, int | None, Any, Any]] = OrderedDict()
        self.labeled: list[tuple[Any, ...]] = []
        self.pending: list[Mapping[str, Any]] = []
        self.skipped = 0
        self.window: Any = None  # a DriftWindow while the served version has a reference
        self.window_version: int | None = None
        self.window_since = time.time()
        self.checks = 0

    # --- on the event loop ----------------------------------------------------------------

    def served_request(
        self, request_id: str | None, item: Any, answer: Any, version: int | None
    ) -> str:
        """Note one answered request; return its id."""
        request_id = request_id or uuid.uuid4().hex
        if self.keep:
            self.served[request_id] = (time.time(), version, item, answer)
            self.served.move_to_end(request_id)
            while len(self.served) > self.keep:
                self.served.popitem(last=False)
        if self.window is not None:
            if len(self.pending) < PENDING_LIMIT:
                row = self.features(item)
                if row is not None:
                    self.pending.append(row)
            else:
                self.skipped += 1
        return request_id

    def feedback(self, request_id: str, label: Any) -> str | None:
        """Join a label to a served request; the reason when it cannot be."""
        from conveyor.lifecycle import label_of

        found = self.served.pop(request_id, None)
        if found is None:
            return (
                f"request {request_id!r} is not among the last {self.keep} served "
                "(feedback_window): send labels sooner, or keep more requests"
            )
        served_at, version, item, answer = found
        got, want = label_of(answer), label_of(label)
        correct = None if got is None or want is None else int(got == want)
        self.labeled.append(
            (
                self.name,
                version,
                request_id,
                served_at,
                time.time(),
                json.dumps(jsonable(item)),
                json.dumps(jsonable(answer), default=str),
                json.dumps(label),
                correct,
            )
        )
        return None

    # --- on a worker thread (the server's watch loop) -------------------------------------

    def flush(self, version: int | None) -> None:
        """Write labels, follow the served version's reference, update and check drift."""
        if self.labeled:
            labeled, self.labeled = self.labeled, []
            self.store.add_labeled(labeled)
        if version != self.window_version:
            self._load_reference(version)
        if self.window is None:
            self.pending = []
            return
        rows, self.pending = self.pending, []
        if rows:
            columns = {k: [r.get(k) for r in rows] for k in rows[0]}
            self.window.update(columns)
        if self.window.rows >= self.drift_window:
            self._check(version)

    def _load_reference(self, version: int | None) -> None:
        self.window, self.window_version = None, version
        data = None if version is None else self.store.reference(self.name, version)
        if data is None:
            return
        try:
            from conveyor.lifecycle import Reference

            self.window = Reference.from_bytes(data).window()
        except Exception as exc:
            log.error("%s:%s: its drift reference cannot be used: %s", self.name, version, exc)
            return
        self.window_since = time.time()

    def _check(self, version: int | None) -> None:
        report = self.window.check(level=self.drift_level)
        now = time.time()
        evidence = {
            **report.to_dict(),
            "since": self.window_since,
            "until": now,
            "rows": self.window.rows,
            "skipped": self.skipped,
        }
        self.store.record(
            self.name,
            "drift_alarm" if report.drifted else "drift_check",
            version=version,
            passed=not report.drifted,
            summary=report.summary(),
            evidence=evidence,
        )
        self.checks += 1
        self.window.reset()
        self.window_since, self.skipped = now, 0
