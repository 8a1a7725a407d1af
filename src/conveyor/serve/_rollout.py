"""Rollouts on a server: the canary's share of traffic, the shadow's mirror, and the
counts per arm that the rollout's controller judges.

A rollout is a row in the run store (:class:`conveyor.lifecycle.LifecycleLog`), written
by whoever runs the release; the server reads it every ``watch`` seconds
(:meth:`Traffic.sync`), warms the candidate beside the champion, and then:

- **canary**: each request goes to the candidate with the rollout's ``share``
  (a coin per request); a request the candidate fails is answered by the champion,
  so a bad candidate costs those requests their time, never their answer;
- **shadow**: a ``share`` of the champion's batches, once answered, are sent again to
  the candidate, at most one batch at a time (a mirror never queues, so it never
  holds a response); the answers are compared and never returned;
- **watch** (after a promotion): the new champion's traffic is counted.

The counts (:class:`conveyor.lifecycle.ArmStats` per arm and step) go back to the
store at each sync. All state changes run on the server's event loop; the store is
read and written on worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("conveyor.serve")


@dataclass
class Route:
    """The rollout the server applies now."""

    rollout: int
    mode: str  # "canary", "shadow" or "watch"
    share: float
    step: int
    champion: int | None
    candidate: int
    deployment: Any  # the candidate's Deployment (None for "watch")
    stats: dict[str, Any] = field(default_factory=dict)  # arm -> ArmStats, this step
    first_at: float = field(default_factory=time.time)
    shadow_busy: bool = False


def served_share(mode: str, arm: str, share: float) -> float:
    """The share of live requests ``arm`` answered under a rollout at ``share``: in a
    canary the candidate's share and the rest; in a shadow and a watch the champion
    answers every request (in a watch the champion is the newly promoted version), and
    the shadow's row keeps the share of batches mirrored to it."""
    if mode == "canary":
        return share if arm == "candidate" else 1.0 - share
    return 1.0 if arm == "champion" else share


class Traffic:
    """The server's side of rollouts on ``name@alias`` (see the module docstring)."""

    def __init__(
        self,
        name: str,
        alias: str,
        store: Any,
        deploy: Callable[[str], Any],
        rng: random.Random | None = None,
    ) -> None:
        self.name, self.alias, self.store = name, alias, store
        self._deploy = deploy  # "name:3" -> Deployment (blocking: run on a thread)
        self.route: Route | None = None
        self.rng = rng or random.Random()
        # this server among the replicas of the alias: each writes its own counts
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._failed: set[int] = set()  # rollouts whose candidate could not be loaded

    # --- on the event loop: per request and per batch ---------------------------------

    def arm_for(self) -> str:
        """Which arm serves a new request."""
        route = self.route
        if (
            route is not None
            and route.mode == "canary"
            and route.deployment is not None
            and self.rng.random() < route.share
        ):
            return "candidate"
        return "champion"

    def candidate(self) -> Any:
        route = self.route
        return None if route is None else route.deployment

    def observe(self, arm: str, latency: float, result: Any) -> None:
        """Count one answered request of ``arm``."""
        route = self.route
        if route is None or route.mode == "shadow":  # a shadow counts mirrored batches
            return
        from conveyor.lifecycle._arms import ArmStats, label_of
        from conveyor.serve._stages import Failure

        stats = route.stats.setdefault(arm, ArmStats())
        error = isinstance(result, Failure)
        stats.observe(latency, error=error, label=None if error else label_of(result))

    def should_mirror(self) -> bool:
        route = self.route
        return (
            route is not None
            and route.mode == "shadow"
            and route.deployment is not None
            and not route.shadow_busy
            and self.rng.random() < route.share
        )

    def mirrored(
        self, seconds: float, champion_seconds: float, champion: list[Any], shadow: list[Any] | None
    ) -> None:
        """A mirrored batch came back: ``shadow`` is None when the candidate's service failed."""
        route = self.route
        if route is None or route.mode != "shadow":
            return
        from conveyor.lifecycle._arms import ArmStats, label_of
        from conveyor.serve._stages import Failure

        route.shadow_busy = False
        mine = route.stats.setdefault("shadow", ArmStats())
        theirs = route.stats.setdefault("champion", ArmStats())
        each, their_each = seconds / len(champion), champion_seconds / len(champion)
        for i, answer in enumerate(champion):
            got = None if shadow is None else shadow[i]
            error = got is None or isinstance(got, Failure)
            label = None if error else label_of(got)
            mine.observe(each, error=error, label=label)
            theirs.observe(their_each, label=label_of(answer))
            if not error and not isinstance(answer, Failure):
                mine.compare(label is not None and label == label_of(answer))

    # --- on worker threads: the store ------------------------------------------------

    def read(self) -> Any:
        """The rollout running on this alias now (or None); blocking. A rollout whose
        controller stopped renewing its lease is ended here first (the champion then
        serves everything): a canary never outlives its controller."""
        from conveyor.lifecycle._lease import expire

        ended = expire(self.store, self.name, self.alias)
        if ended is not None:
            log.warning("rollout %s ended: %s", ended.id, ended.reason)
        return self.store.active_rollout(self.name, self.alias)

    def write(self, route: Route) -> None:
        """The current step's counts, per arm, into the store; blocking."""
        for arm, stats in list(route.stats.items()):
            version = route.champion if arm == "champion" else route.candidate
            self.store.write_traffic(
                route.rollout,
                route.step,
                arm,
                version=version,
                share=served_share(route.mode, arm, route.share),
                stats=stats,
                first_at=route.first_at,
                replica=self.replica,
            )

    # --- on the event loop: following the store ------------------------------------------

    def take(self, version: int) -> Any:
        """The candidate's warm Deployment if it is ``version`` (the alias moved to it:
        the batcher swaps it in rather than loading it again); the rollout keeps
        counting but sends nothing more to it. None otherwise."""
        route = self.route
        if route is None or route.candidate != version or route.deployment is None:
            return None
        deployment, route.deployment = route.deployment, None
        return deployment

    async def sync(self, champion_version: int | None) -> None:
        """Write the counts, read the rollout, and follow it: deploy a new candidate,
        move to a new step, or end (the candidate retires)."""
        route = self.route
        if route is not None and route.stats:
            await asyncio.to_thread(self.write, route)
        row = await asyncio.to_thread(self.read)
        if route is not None and (row is None or row.id != route.rollout):
            self.route = None
            self._retire(route)
            route = None
        if row is None or row.id in self._failed:
            return
        if route is None:
            await self._begin(row, champion_version)
        elif (row.step, row.share) != (route.step, route.share):
            route.step, route.share, route.stats = row.step, row.share, {}
            route.first_at = time.time()

    async def _begin(self, row: Any, champion_version: int | None) -> None:
        deployment = None
        if row.mode != "watch":
            try:
                deployment, _ = await asyncio.to_thread(
                    self._deploy, f"{self.name}:{row.candidate}"
                )
            except Exception as exc:
                self._failed.add(row.id)
                reason = f"the candidate {self.name}:{row.candidate} cannot serve: {exc}"
                log.error("rollout %s: %s", row.id, reason)
                await asyncio.to_thread(self.store.finish_rollout, row.id, "rolled_back", reason)
                return
        self.route = Route(
            row.id, row.mode, row.share, row.step, champion_version, row.candidate, deployment
        )
        await asyncio.to_thread(self.store.mark_served, row.id)
        log.info(
            "rollout %s: %s of %s:%s at %.0f%%",
            row.id,
            row.mode,
            self.name,
            row.candidate,
            row.share * 100,
        )

    @staticmethod
    def _retire(route: Route) -> None:
        """The rollout is over: its candidate answers what it holds, then stops."""
        if route.deployment is not None:
            route.deployment.retired = True
            route.deployment.stop_when_idle()

    def close(self) -> None:
        """Stop the candidate's service (the server is stopping); blocking."""
        route, self.route = self.route, None
        if route is not None and route.deployment is not None:
            route.deployment.service.stop(drain=True)
