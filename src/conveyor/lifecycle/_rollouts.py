"""The rollouts' controllers: shadow, canary, promotion, rollback, and the watch after
a promotion. Each writes a rollout row that a server of ``name@alias`` follows
(:mod:`conveyor.serve._rollout`), reads back what the server counted, judges it
(:func:`~conveyor.lifecycle.judge_canary`, :func:`~conveyor.lifecycle.judge_shadow`)
every ``interval`` seconds, and records every judgement, step, promotion and rollback
in the run store with its evidence and its cause.

::

    result = canary("digits", 2, policy=CanaryPolicy(steps=(0.05, 0.25, 0.5)))
    result.passed, result.reason         # promoted, or rolled back and why

A controller needs a server that serves ``name@alias`` from the same store; one that
does not see its rollout served within ``serve_timeout`` seconds stops it and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import LifecycleError
from conveyor.lifecycle._arms import ArmStats
from conveyor.lifecycle._lease import controlling
from conveyor.lifecycle._log import LifecycleLog
from conveyor.lifecycle._records import LifecycleEvent, Rollout

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class RolloutResult:
    """How a rollout ended: ``passed`` (promoted, or a shadow that agreed), the reason,
    and the events it recorded (the last one is the decision)."""

    rollout: Rollout
    passed: bool
    reason: str
    events: list[LifecycleEvent] = field(default_factory=list)

    @property
    def decision(self) -> LifecycleEvent:
        return self.events[-1]


def _champion(store: str | Path | None, name: str, alias: str) -> int:
    from conveyor.models import ModelRegistry

    with ModelRegistry(store) as registry:
        return registry.resolve(f"{name}@{alias}").version


def _await_server(
    log: LifecycleLog, rollout: Rollout, timeout: float, clock: Clock, sleep: Sleep
) -> None:
    """Wait until a server has the rollout's candidate warm; stop the rollout if none does."""
    deadline = clock() + timeout
    while True:
        row = log.rollout(rollout.id)
        if row.served_at is not None:
            return
        if row.state != "running":  # the server could not load the candidate
            raise LifecycleError(
                f"{rollout.mode} of {rollout.name}:{rollout.candidate}: {row.reason}"
            )
        if clock() >= deadline:
            reason = (
                f"no server took the {rollout.mode} of {rollout.name}:{rollout.candidate} within "
                f"{timeout:g} s: serve {rollout.name}@{rollout.alias} from this store "
                f"(conveyor serve {rollout.name}@{rollout.alias} --store {log.path})"
            )
            log.finish_rollout(rollout.id, "stopped", reason)
            raise LifecycleError(reason)
        sleep(min(0.05, max(0.0, deadline - clock())))


def _evidence(judgement: Any, **more: Any) -> dict[str, Any]:
    return {"action": judgement.action, "reason": judgement.reason, **judgement.evidence, **more}


def shadow(
    name: str,
    candidate: int,
    *,
    alias: str = "champion",
    policy: Any = None,
    interval: float = 5.0,
    store: str | Path | None = None,
    parent: int | None = None,
    run_id: str | None = None,
    serve_timeout: float = 120.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> RolloutResult:
    """Mirror ``policy.fraction`` of ``name@alias``'s answered batches to ``candidate``
    until :func:`judge_shadow` decides; responses never wait for the mirror."""
    from conveyor.lifecycle._canary import ShadowPolicy, judge_shadow

    policy = policy or ShadowPolicy()
    with LifecycleLog(store) as log:
        champion = _champion(store, name, alias)
        rollout = log.start_rollout(
            name,
            alias,
            mode="shadow",
            champion=champion,
            candidate=candidate,
            share=policy.fraction,
            policy=asdict(policy),
            parent=parent,
        )
        with controlling(log, rollout, interval, sleep) as wait:
            _await_server(log, rollout, serve_timeout, clock, wait)
            started = clock()
            while True:
                wait(interval)
                theirs = log.window(rollout.id, 0, "champion")
                mine = log.window(rollout.id, 0, "shadow")
                judgement = judge_shadow(policy, theirs, mine, elapsed=clock() - started)
                if judgement.action != "hold":
                    break
        passed = judgement.action == "advance"
        event = log.record(
            name,
            "shadow",
            version=candidate,
            passed=passed,
            rollout=rollout.id,
            parent=parent,
            run_id=run_id,
            summary=f"shadow of v{candidate} beside v{champion}: {judgement.reason}",
            evidence=_evidence(judgement, champion=theirs.to_dict(), shadow=mine.to_dict()),
        )
        state = "passed" if passed else "stopped"
        ended = log.finish_rollout(rollout.id, state, judgement.reason.removeprefix("passed: "))
        return RolloutResult(ended, passed, judgement.reason, [event])


def canary(
    name: str,
    candidate: int,
    *,
    alias: str = "champion",
    policy: Any = None,
    store: str | Path | None = None,
    parent: int | None = None,
    run_id: str | None = None,
    promote: bool = True,
    serve_timeout: float = 120.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> RolloutResult:
    """Move ``policy.steps`` of ``name@alias``'s traffic to ``candidate`` in turn,
    judging each step every ``policy.interval`` seconds; roll back at the first breach,
    promote (move the alias) when the last step passes."""
    from conveyor.lifecycle._canary import CanaryPolicy, judge_canary

    policy = policy or CanaryPolicy()
    steps = tuple(policy.steps)
    with LifecycleLog(store) as log:
        champion = _champion(store, name, alias)
        if champion == candidate:
            raise LifecycleError(
                f"{name}@{alias} is already version {candidate}: nothing to canary"
            )
        rollout = log.start_rollout(
            name,
            alias,
            mode="canary",
            champion=champion,
            candidate=candidate,
            share=steps[0],
            policy=asdict(policy),
            parent=parent,
        )
        with controlling(log, rollout, policy.interval, sleep) as wait:
            _await_server(log, rollout, serve_timeout, clock, wait)
            events: list[LifecycleEvent] = []
            totals = {"champion": ArmStats(), "candidate": ArmStats()}
            for step, share in enumerate(steps):
                if step:
                    log.set_share(rollout.id, share, step=step)
                started = clock()
                while True:
                    wait(policy.interval)
                    theirs = log.window(rollout.id, step, "champion")
                    mine = log.window(rollout.id, step, "candidate")
                    judgement = judge_canary(policy, theirs, mine, elapsed=clock() - started)
                    if judgement.action != "hold":
                        break
                totals = {
                    "champion": totals["champion"].merge(theirs),
                    "candidate": totals["candidate"].merge(mine),
                }
                advanced = judgement.action == "advance"
                events.append(
                    log.record(
                        name,
                        "canary_step",
                        version=candidate,
                        passed=advanced,
                        rollout=rollout.id,
                        run_id=run_id,
                        parent=events[-1].id if events else parent,
                        summary=f"step {step + 1} of {len(steps)}, {share:.0%} of traffic: "
                        f"{judgement.reason}",
                        evidence=_evidence(
                            judgement,
                            step=step,
                            share=share,
                            champion=theirs.to_dict(),
                            candidate=mine.to_dict(),
                        ),
                    )
                )
                if not advanced:
                    ended = log.finish_rollout(rollout.id, "rolled_back", judgement.reason)
                    events.append(
                        log.record(
                            name,
                            "rollback",
                            version=champion,
                            passed=False,
                            rollout=rollout.id,
                            run_id=run_id,
                            parent=events[-1].id,
                            summary=f"canary of v{candidate} rolled back at {share:.0%}: "
                            f"{judgement.reason}; v{champion} serves all traffic",
                            evidence={"from": candidate, "to": champion, "step": step},
                        )
                    )
                    return RolloutResult(ended, False, judgement.reason, events)
            reason = f"every step passed ({', '.join(f'{s:.0%}' for s in steps)})"
            if promote:
                events.append(
                    _move(
                        log,
                        store,
                        name,
                        alias,
                        candidate,
                        "promote",
                        f"canary passed: {reason}",
                        parent=events[-1].id,
                        rollout=rollout.id,
                        run_id=run_id,
                        evidence={
                            "from": champion,
                            "to": candidate,
                            **{arm: s.to_dict() for arm, s in totals.items()},
                        },
                    )
                )
            ended = log.finish_rollout(rollout.id, "promoted" if promote else "passed", reason)
            return RolloutResult(ended, True, reason, events)


def _move(
    log: LifecycleLog,
    store: str | Path | None,
    name: str,
    alias: str,
    version: int,
    kind: str,
    reason: str,
    *,
    parent: int | None,
    rollout: int | None = None,
    evidence: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> LifecycleEvent:
    """Move the alias (the registry keeps the move and its reason) and record why."""
    from conveyor.models import ModelRegistry

    with ModelRegistry(store) as registry:
        move = registry.alias(name, alias, version, reason=reason)
    before = "unset" if move.from_version is None else f"v{move.from_version}"
    summary = f"{name}@{alias}: {before} → v{version} ({reason})"
    return log.record(
        name,
        kind,
        version=version,
        passed=kind == "promote",
        summary=summary,
        evidence=evidence or {},
        parent=parent,
        rollout=rollout,
        run_id=run_id,
    )


def promote(
    name: str,
    version: int,
    *,
    alias: str = "champion",
    reason: str = "promoted",
    store: str | Path | None = None,
    parent: int | None = None,
    run_id: str | None = None,
) -> LifecycleEvent:
    """Point ``name@alias`` at ``version`` and record it (a server swaps it in)."""
    with LifecycleLog(store) as log:
        return _move(
            log, store, name, alias, version, "promote", reason, parent=parent, run_id=run_id
        )


def rollback(
    name: str,
    *,
    alias: str = "champion",
    to: int | None = None,
    reason: str = "rolled back by hand",
    store: str | Path | None = None,
    parent: int | None = None,
    run_id: str | None = None,
) -> LifecycleEvent:
    """Stop any rollout on ``name@alias`` and point the alias back: at ``to``, or at the
    version it pointed at before its last move."""
    from conveyor.models import ModelRegistry

    with LifecycleLog(store) as log:
        running = log.active_rollout(name, alias)
        if running is not None:
            log.finish_rollout(running.id, "rolled_back", reason)
        with ModelRegistry(store) as registry:
            now = registry.resolve(f"{name}@{alias}").version
            if to is None:
                moves = [m for m in registry.history(name, alias) if m.from_version is not None]
                if not moves and running is None:
                    raise LifecycleError(
                        f"{name}@{alias} has never moved: there is no previous version to roll "
                        f"back to; name one with --to"
                    )
                to = moves[-1].from_version if moves else now
        assert to is not None
        if to == now:
            return log.record(
                name,
                "rollback",
                version=now,
                passed=False,
                parent=parent,
                summary=f"{name}@{alias} stays at v{now} ({reason})",
                rollout=None if running is None else running.id,
                run_id=run_id,
            )
        return _move(
            log,
            store,
            name,
            alias,
            to,
            "rollback",
            reason,
            parent=parent,
            evidence={"from": now, "to": to},
            run_id=run_id,
        )
