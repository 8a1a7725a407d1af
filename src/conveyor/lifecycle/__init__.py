"""The model lifecycle: the evaluation gate, drift monitoring, shadow and canary
rollouts, rollback and the release pipeline, every decision a row in the run store.

::

    import conveyor as cv

    result = cv.lifecycle.canary("digits", 2)      # a server of digits@champion follows it
    cv.lifecycle.rollback("digits")                # the alias back to where it was
    with cv.lifecycle.LifecycleLog() as log:
        log.events("digits")                       # every decision with its evidence

NumPy and SciPy (the lifecycle extra: ``pip install 'conveyor[lifecycle]'``) are
imported when a gate or a drift check runs.
"""

from __future__ import annotations

from conveyor.errors import GateFailed, LifecycleError
from conveyor.lifecycle._arms import ArmStats, label_of
from conveyor.lifecycle._canary import (
    CanaryPolicy,
    Judgement,
    ShadowPolicy,
    judge_canary,
    judge_shadow,
)
from conveyor.lifecycle._drift import DriftReport, DriftWindow, FeatureDrift, Reference, check_drift
from conveyor.lifecycle._gate import GateVerdict, SliceVerdict, gate
from conveyor.lifecycle._log import LifecycleLog
from conveyor.lifecycle._records import LifecycleEvent, Rollout, TrafficWindow
from conveyor.lifecycle._release import Candidate, Release
from conveyor.lifecycle._retrain import retrain_on_drift
from conveyor.lifecycle._rollouts import RolloutResult, canary, promote, rollback, shadow

__all__ = [
    "ArmStats",
    "CanaryPolicy",
    "Candidate",
    "DriftReport",
    "DriftWindow",
    "FeatureDrift",
    "GateFailed",
    "GateVerdict",
    "Judgement",
    "LifecycleError",
    "LifecycleEvent",
    "LifecycleLog",
    "Reference",
    "Release",
    "Rollout",
    "RolloutResult",
    "ShadowPolicy",
    "SliceVerdict",
    "TrafficWindow",
    "canary",
    "check_drift",
    "gate",
    "judge_canary",
    "judge_shadow",
    "label_of",
    "promote",
    "retrain_on_drift",
    "rollback",
    "shadow",
]
