"""The model lifecycle: the evaluation gate, drift monitoring, shadow and canary
rollouts, rollback and the release pipeline, every decision a row in the run store.

NumPy and SciPy (the lifecycle extra: ``pip install 'conveyor[lifecycle]'``) are
imported when a gate or a drift check runs.
"""

from __future__ import annotations

from conveyor.errors import GateFailed, LifecycleError
from conveyor.lifecycle._drift import DriftReport, DriftWindow, FeatureDrift, Reference, check_drift

__all__ = [
    "DriftReport",
    "DriftWindow",
    "FeatureDrift",
    "GateFailed",
    "LifecycleError",
    "Reference",
    "check_drift",
]
