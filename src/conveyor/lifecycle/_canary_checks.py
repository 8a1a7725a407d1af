"""Checks of what the canary's and the shadow's judges are given: each policy field
(named in the error with a good value) and the two arms' counts, which come back from
the run store and may be damaged."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from conveyor.errors import LifecycleError
from conveyor.lifecycle._arms import LATENCY_EDGES, ArmStats


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def fail(policy: object, name: str, rule: str) -> LifecycleError:
    value = getattr(policy, name)
    default = next(f.default for f in fields(policy) if f.name == name)  # type: ignore[arg-type]
    return LifecycleError(
        f"{type(policy).__name__}.{name} must be {rule}, not {value!r}; e.g. {name}={default!r}"
    )


def check_positive(policy: object, *names: str) -> None:
    for name in names:
        value = getattr(policy, name)
        if not is_number(value) or value <= 0 or value == float("inf"):
            raise fail(policy, name, "a positive finite number")


def check_open(policy: object, names: tuple[str, ...], low: float, high: float) -> None:
    for name in names:
        value = getattr(policy, name)
        if not is_number(value) or not low < value < high:
            raise fail(policy, name, f"strictly between {low:g} and {high:g}")


def check_range(
    policy: object, name: str, low: float, high: float, *, low_open: bool = False
) -> None:
    value = getattr(policy, name)
    inside = is_number(value) and (low < value if low_open else low <= value) and value <= high
    if not inside:
        bracket = "(" if low_open else "["
        raise fail(policy, name, f"in {bracket}{low:g}, {high:g}]")


def check_count(policy: object, name: str) -> None:
    value = getattr(policy, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise fail(policy, name, "a whole number of at least 1")


def check_inputs(policy: object, policy_type: type, elapsed: Any, **arms: Any) -> None:
    """The judge's arguments: the right policy, a finite elapsed time of at least 0, and
    arms whose counts are whole, not negative and consistent."""
    if not isinstance(policy, policy_type):
        raise LifecycleError(
            f"the policy must be a {policy_type.__name__}, not {type(policy).__name__}; "
            f"make one with {policy_type.__name__}(...)"
        )
    if not is_number(elapsed) or elapsed < 0 or math.isinf(elapsed):
        raise LifecycleError(
            f"elapsed must be the seconds since the step began (a finite number, at "
            f"least 0), not {elapsed!r}"
        )
    for name, arm in arms.items():
        _check_arm(name, arm)


def _check_arm(name: str, arm: Any) -> None:
    if not isinstance(arm, ArmStats):
        raise LifecycleError(
            f"{name} must be an ArmStats, not {type(arm).__name__}; read stored counts "
            f"with ArmStats.from_dict"
        )
    counts = [arm.requests, arm.errors, arm.compared, arm.agreed, *arm.latency]
    counts += list(arm.predictions.values())
    problem = ""
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        problem = "counts must be whole numbers of at least 0"
    elif len(arm.latency) != len(LATENCY_EDGES) + 1:
        problem = f"latency has {len(arm.latency)} bins, not {len(LATENCY_EDGES) + 1}"
    elif arm.errors > arm.requests:
        problem = f"errors ({arm.errors}) exceed requests ({arm.requests})"
    elif arm.agreed > arm.compared:
        problem = f"agreed ({arm.agreed}) exceeds compared ({arm.compared})"
    if problem:
        raise LifecycleError(
            f"the {name}'s ArmStats are damaged: {problem}; judge counts recorded by "
            f"ArmStats.observe and ArmStats.compare"
        )
