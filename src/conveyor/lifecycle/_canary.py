"""The canary's and the shadow's judges: pure functions from two arms' counts to a
decision, ``hold``, ``advance`` or ``rollback``, with one line of reason and the evidence.

A canary step sends a share of live traffic to the candidate; the controller calls
:func:`judge_canary` every ``interval`` seconds with the cumulative :class:`ArmStats` of
the step so far and acts on the :class:`Judgement`. Each check is sequential, so the
step ends as soon as the evidence suffices rather than after a fixed count of
intervals:

- **errors**: Wald's SPRT on the candidate's requests as Bernoulli draws (an error a
  hit), H0 ``p = p0`` against H1 ``p = p0 + max_error_increase``, where ``p0`` is the
  champion's error rate (see :func:`champion_rate`). It breaches at
  ``LLR >= log((1 - beta) / alpha)`` and passes at ``LLR <= log(beta / (1 - alpha))``.
- **latency**: the same SPRT on "slower than the champion's p95 times
  ``max_latency_ratio``, or plus ``latency_slack`` seconds (5 ms) when that is more"
  (so sub-millisecond jitter of a fast model is no breach), H0 rate ``slow_rate_ok`` (0.05) against H1 ``slow_rate_bad`` (0.15); it waits
  until the champion has ``min_requests`` (its p95 is not known before). The p95 and
  the count above the threshold are interpolated inside the histogram's bins, so a
  request may count in part (the test takes fractional counts).
- **predictions**: with labels on both arms and ``min_requests`` labels each, Pearson's
  chi-squared on the 2 x K table of counts and the Jensen-Shannon distance; a breach
  needs both ``p < 0.001`` and ``JS > max_prediction_shift`` (a significant and a large
  shift). Without labels the check is skipped.

A shadow (:func:`judge_shadow`) gets a mirrored share of requests whose answers are
compared with the champion's: it passes when the Wilson lower bound of the agreement
reaches ``min_agreement`` and the errors and latency SPRTs pass, and is stopped when the
Wilson upper bound falls below it or either SPRT breaches.

Both judges recompute everything from the cumulative counts at each call, so a
controller that restarts loses nothing. Looking repeatedly at a fixed-sample interval
would inflate its error rates; the SPRTs are made to be looked at after every request,
and looking only every interval makes them slightly more conservative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import LifecycleError
from conveyor.lifecycle._arms import ArmStats
from conveyor.lifecycle._canary_checks import (
    check_count,
    check_inputs,
    check_open,
    check_positive,
    check_range,
    is_number,
)
from conveyor.lifecycle._evidence import (
    Sprt,
    chi2_table,
    count_slower,
    js_distance,
    latency_quantile,
    sprt,
    wilson,
    z_of,
)

PREDICTION_P = 0.001  # the chi-squared p-value below which a prediction shift is significant


@dataclass(frozen=True)
class CanaryPolicy:
    """How a canary rollout ramps and when each step passes (see the module docstring).

    >>> CanaryPolicy(steps=(0.1, 0.5), interval=10.0).steps
    (0.1, 0.5)
    """

    steps: tuple[float, ...] = (0.05, 0.25, 0.5)
    interval: float = 30.0
    alpha: float = 0.05
    beta: float = 0.2
    max_error_increase: float = 0.01
    error_floor: float = 0.001
    max_latency_ratio: float = 1.5
    latency_slack: float = 0.005
    max_prediction_shift: float = 0.2
    min_requests: int = 50
    step_timeout: float = 600.0
    slow_rate_ok: float = 0.05
    slow_rate_bad: float = 0.15
    champion_z: float = 1.0

    def __post_init__(self) -> None:
        steps = self.steps
        if not isinstance(steps, (tuple, list)) or not steps:
            raise LifecycleError(
                f"CanaryPolicy.steps must be a non-empty tuple of traffic shares, not "
                f"{steps!r}; e.g. steps=(0.05, 0.25, 0.5)"
            )
        object.__setattr__(self, "steps", tuple(steps))
        previous = 0.0
        for share in self.steps:
            if not is_number(share) or not previous < share <= 1:
                raise LifecycleError(
                    f"CanaryPolicy.steps must increase within (0, 1], but {self.steps!r} "
                    f"has {share!r} after {previous!r}; give the candidate's share of "
                    f"traffic per step, e.g. steps=(0.05, 0.25, 0.5)"
                )
            previous = share
        check_positive(self, "interval", "step_timeout", "max_latency_ratio")
        check_open(self, ("alpha", "beta"), 0.0, 0.5)
        check_open(self, ("max_error_increase", "slow_rate_ok", "slow_rate_bad"), 0.0, 1.0)
        check_range(self, "error_floor", 0.0, 1.0)
        check_range(self, "max_prediction_shift", 0.0, 1.0)
        check_range(self, "champion_z", 0.0, 10.0)
        check_range(self, "latency_slack", 0.0, 60.0)
        check_count(self, "min_requests")
        if self.slow_rate_bad <= self.slow_rate_ok:
            raise LifecycleError(
                f"CanaryPolicy.slow_rate_bad must exceed slow_rate_ok ({self.slow_rate_ok}), not "
                f"{self.slow_rate_bad}: they are the latency SPRT's H1 and H0 rates"
            )


@dataclass(frozen=True)
class ShadowPolicy:
    """How a shadow is judged (see the module docstring). ``fraction`` is the share of
    live requests the server mirrors to the candidate; ``timeout`` the seconds after
    which a shadow without a decision is stopped as inconclusive."""

    fraction: float = 0.1
    min_requests: int = 200
    min_agreement: float = 0.9
    max_error_increase: float = 0.01
    max_latency_ratio: float = 2.0
    latency_slack: float = 0.005
    timeout: float = 600.0
    alpha: float = 0.05
    beta: float = 0.2
    error_floor: float = 0.001
    slow_rate_ok: float = 0.05
    slow_rate_bad: float = 0.15
    champion_z: float = 1.0

    def __post_init__(self) -> None:
        check_range(self, "fraction", 0.0, 1.0, low_open=True)
        check_range(self, "min_agreement", 0.0, 1.0, low_open=True)
        check_positive(self, "timeout", "max_latency_ratio")
        check_open(self, ("alpha", "beta"), 0.0, 0.5)
        check_open(self, ("max_error_increase", "slow_rate_ok", "slow_rate_bad"), 0.0, 1.0)
        check_range(self, "error_floor", 0.0, 1.0)
        check_range(self, "champion_z", 0.0, 10.0)
        check_range(self, "latency_slack", 0.0, 60.0)
        check_count(self, "min_requests")
        if self.slow_rate_bad <= self.slow_rate_ok:
            raise LifecycleError(
                f"ShadowPolicy.slow_rate_bad must exceed slow_rate_ok ({self.slow_rate_ok}), not "
                f"{self.slow_rate_bad}: they are the latency SPRT's H1 and H0 rates"
            )


@dataclass(frozen=True)
class Judgement:
    """What a judge decided: ``action`` is ``"hold"`` (not enough evidence yet),
    ``"advance"`` (the step, or the shadow, passed) or ``"rollback"`` (a breach, or no
    decision by the timeout); ``reason`` one line for people; ``evidence`` every
    check's counts, rates, LLR and bounds, p95s, JS and p-values (JSON-able)."""

    action: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def champion_rate(champion: ArmStats, *, floor: float, z: float) -> float:
    """The error rate the candidate is held to, ``p0`` of the errors SPRT.

    The champion's rate is estimated, not known. The estimate is widened to the upper
    bound of its Wilson interval at ``z`` standard errors (``champion_z``, 1 by
    default; 0 takes the plain estimate), so that a champion that erred less than its
    true rate by chance does not get a good candidate rolled back; and it is taken as
    at least ``floor`` (``error_floor``), so that a champion with no errors yet does
    not make one candidate error damning. With no champion requests it is ``floor``.
    In a canary the champion keeps most of the traffic and the widening is small.
    """
    if champion.requests <= 0:
        return floor
    upper = wilson(champion.errors, champion.requests, z)[1] if z else champion.error_rate
    return max(floor, upper)


def error_test(
    champion: ArmStats, candidate: ArmStats, policy: CanaryPolicy | ShadowPolicy
) -> Sprt:
    """The errors SPRT of ``candidate`` against ``champion`` under ``policy``."""
    p0 = champion_rate(champion, floor=policy.error_floor, z=policy.champion_z)
    return sprt(
        candidate.errors,
        candidate.requests,
        p0=p0,
        p1=p0 + policy.max_error_increase,
        alpha=policy.alpha,
        beta=policy.beta,
    )


def _latency_check(
    champion: ArmStats, candidate: ArmStats, policy: CanaryPolicy | ShadowPolicy
) -> dict[str, Any]:
    p95, mine = latency_quantile(champion, 0.95), latency_quantile(candidate, 0.95)
    out: dict[str, Any] = {
        "champion_p95": round(p95, 6),
        "candidate_p95": round(mine, 6),
        "ratio": round(mine / p95, 4) if p95 else None,
        "max_ratio": policy.max_latency_ratio,
        "slack": policy.latency_slack,
    }
    if champion.requests < policy.min_requests:
        out["decision"] = "pending"
        out["waiting"] = f"the champion's p95 needs {policy.min_requests} requests"
        return out
    # a ratio alone would call sub-millisecond jitter a breach on a fast model
    threshold = max(policy.max_latency_ratio * p95, p95 + policy.latency_slack)
    test = sprt(
        count_slower(candidate, threshold),
        candidate.requests,
        p0=policy.slow_rate_ok,
        p1=policy.slow_rate_bad,
        alpha=policy.alpha,
        beta=policy.beta,
    )
    out.update(test.to_dict(), threshold=round(threshold, 6))
    return out


def _prediction_check(
    champion: ArmStats, candidate: ArmStats, policy: CanaryPolicy
) -> dict[str, Any]:
    mine, theirs = candidate.predictions, champion.predictions
    n_mine, n_theirs = sum(mine.values()), sum(theirs.values())
    out: dict[str, Any] = {"champion": dict(theirs), "candidate": dict(mine)}
    if not n_mine and not n_theirs:
        out["decision"] = "skipped"
        return out
    for arm, labelled, name in ((candidate, n_mine, "candidate"), (champion, n_theirs, "champion")):
        # one arm's answers carry labels, the other's (enough of them) none: a shift
        if not labelled and arm.requests - arm.errors >= policy.min_requests:
            out.update(decision="breach", unlabelled=name)
            return out
    statistic, df, p = chi2_table(theirs, mine)
    js = js_distance(theirs, mine)
    out.update(chi2=round(statistic, 4), df=df, p=p, js=round(js, 6))
    out["max_js"], out["max_p"] = policy.max_prediction_shift, PREDICTION_P
    if min(n_mine, n_theirs) < policy.min_requests:
        out["decision"] = "pending"
    elif p < PREDICTION_P and js > policy.max_prediction_shift:
        out["decision"] = "breach"
    else:
        out["decision"] = "pass"
    return out


def judge_canary(
    policy: CanaryPolicy, champion: ArmStats, candidate: ArmStats, *, elapsed: float
) -> Judgement:
    """Judge one step of a canary from the cumulative counts of the step so far;
    ``elapsed`` is the seconds since the step began. Rollback on the first breach
    (errors, latency, predictions, in that order); advance when every check passed
    and each arm has ``min_requests``; rollback as inconclusive past ``step_timeout``;
    else hold. Raises :class:`LifecycleError` when given another policy, a bad
    ``elapsed`` or damaged counts (errors above requests, negative counts)."""
    check_inputs(policy, CanaryPolicy, elapsed, champion=champion, candidate=candidate)
    errors = error_test(champion, candidate, policy)
    checks: dict[str, dict[str, Any]] = {
        "errors": {
            **errors.to_dict(),
            "champion_errors": champion.errors,
            "champion_requests": champion.requests,
        },
        "latency": _latency_check(champion, candidate, policy),
        "predictions": _prediction_check(champion, candidate, policy),
    }
    evidence = {
        "elapsed": elapsed,
        "requests": {"champion": champion.requests, "candidate": candidate.requests},
        "min_requests": policy.min_requests,
        **checks,
    }
    lines = {
        "errors": _errors_line(errors, champion, "candidate"),
        "latency": _latency_line(checks["latency"], "candidate"),
        "predictions": _predictions_line(checks["predictions"]),
    }
    enough = min(champion.requests, candidate.requests) >= policy.min_requests
    passed = {name: check["decision"] in ("pass", "skipped") for name, check in checks.items()}
    return _decide(
        checks, lines, passed, enough, elapsed, policy.step_timeout, "step_timeout", evidence
    )


def judge_shadow(
    policy: ShadowPolicy, champion: ArmStats, shadow: ArmStats, *, elapsed: float
) -> Judgement:
    """Judge a shadow from the cumulative counts so far. The agreement check uses
    ``shadow.compared`` and ``shadow.agreed`` (answers compared with the champion's on
    the same requests): it passes when the Wilson lower bound of ``agreed / compared``
    (at the one-sided ``1 - alpha`` level) reaches ``min_agreement`` with at least
    ``min_requests`` compared, and breaches when the upper bound is below it. The
    errors and latency SPRTs are the canary's. Rollback (stop the release) on the first
    breach (agreement, errors, latency); advance when all passed; rollback as
    inconclusive past ``timeout``; else hold."""
    check_inputs(policy, ShadowPolicy, elapsed, champion=champion, shadow=shadow)
    z = z_of(policy.alpha)
    low, high = wilson(shadow.agreed, shadow.compared, z)
    agreement: dict[str, Any] = {
        "agreed": shadow.agreed,
        "compared": shadow.compared,
        "rate": round(shadow.agreed / shadow.compared, 6) if shadow.compared else None,
        "lower": round(low, 6),
        "upper": round(high, 6),
        "min_agreement": policy.min_agreement,
    }
    if shadow.compared and high < policy.min_agreement:
        agreement["decision"] = "breach"
    elif shadow.compared >= policy.min_requests and low >= policy.min_agreement:
        agreement["decision"] = "pass"
    else:
        agreement["decision"] = "pending"
    errors = error_test(champion, shadow, policy)
    checks: dict[str, dict[str, Any]] = {
        "agreement": agreement,
        "errors": {
            **errors.to_dict(),
            "champion_errors": champion.errors,
            "champion_requests": champion.requests,
        },
        "latency": _latency_check(champion, shadow, policy),
    }
    evidence = {
        "elapsed": elapsed,
        "requests": {"champion": champion.requests, "shadow": shadow.requests},
        "min_requests": policy.min_requests,
        **checks,
    }
    lines = {
        "agreement": _agreement_line(agreement),
        "errors": _errors_line(errors, champion, "shadow"),
        "latency": _latency_line(checks["latency"], "shadow"),
    }
    enough = shadow.requests >= policy.min_requests
    passed = {name: check["decision"] == "pass" for name, check in checks.items()}
    return _decide(checks, lines, passed, enough, elapsed, policy.timeout, "timeout", evidence)


def _decide(
    checks: dict[str, dict[str, Any]],
    lines: dict[str, str],
    passed: dict[str, bool],
    enough: bool,
    elapsed: float,
    timeout: float,
    timeout_name: str,
    evidence: dict[str, Any],
) -> Judgement:
    for name, check in checks.items():
        if check["decision"] == "breach":
            evidence["breach"] = name
            return Judgement("rollback", lines[name], evidence)
    summary = "; ".join(lines[name] for name in checks)
    if enough and all(passed.values()):
        return Judgement("advance", f"passed: {summary}", evidence)
    if elapsed > timeout:
        evidence["inconclusive"] = True
        return Judgement(
            "rollback",
            f"inconclusive after {elapsed:g} s ({timeout_name} {timeout:g} s): {summary}",
            evidence,
        )
    return Judgement("hold", f"hold: {summary}", evidence)


def _errors_line(test: Sprt, champion: ArmStats, arm: str) -> str:
    rate = test.hits / test.n if test.n else 0.0
    head = (
        f"errors: {test.hits:g} of {test.n} {arm} requests ({rate:.1%}); the champion "
        f"{champion.errors} of {champion.requests}, so the {arm} is held to {test.p0:.1%} "
        f"(+{test.p1 - test.p0:.1%} allowed); "
    )
    return head + _sprt_words(test)


def _latency_line(check: dict[str, Any], arm: str) -> str:
    if check["decision"] == "pending" and "waiting" in check:
        return f"latency: waiting, {check['waiting']}"
    rate = check["hits"] / check["n"] if check["n"] else 0.0
    head = (
        f"latency: {rate:.1%} of {check['n']} {arm} requests slower than "
        f"{check['threshold'] * 1000:.3g} ms (the larger of {check['max_ratio']:g} x and "
        f"+{check['slack'] * 1000:g} ms over the champion's p95 of "
        f"{check['champion_p95'] * 1000:.3g} ms; {arm} p95 {check['candidate_p95'] * 1000:.3g} ms), "
        f"where {check['p0']:.0%} are allowed; "
    )
    return head + _sprt_words(
        Sprt(
            check["hits"],
            check["n"],
            check["p0"],
            check["p1"],
            check["llr"],
            check["lower"],
            check["upper"],
        )
    )


def _predictions_line(check: dict[str, Any]) -> str:
    if check["decision"] == "skipped":
        return "predictions: no labels to compare"
    if "unlabelled" in check:
        other = "champion" if check["unlabelled"] == "candidate" else "candidate"
        return (
            f"predictions: the {check['unlabelled']}'s answers carry no label where the "
            f"{other}'s do (most common: {_top(check[other])})"
        )
    words = {
        "breach": "the candidate's answers differ from the champion's",
        "pass": "the answers' distributions match",
        "pending": "waiting for labels",
    }[check["decision"]]
    mine, theirs = _top(check["candidate"]), _top(check["champion"])
    return (
        f"predictions: {words} (Jensen-Shannon distance {check['js']:.3f}, limit "
        f"{check['max_js']:g}; chi2 p = {check['p']:.2g}); most common: candidate "
        f"{mine}, champion {theirs}"
    )


def _agreement_line(check: dict[str, Any]) -> str:
    if not check["compared"]:
        return "agreement: no answers compared yet"
    words = {
        "breach": "below",
        "pass": "reaches",
        "pending": "not yet decided against",
    }[check["decision"]]
    return (
        f"agreement: {check['agreed']} of {check['compared']} answers match the "
        f"champion's ({check['rate']:.1%}, interval {check['lower']:.1%} to "
        f"{check['upper']:.1%}), {words} the {check['min_agreement']:.0%} required"
    )


def _sprt_words(test: Sprt) -> str:
    decision = test.decision
    if decision == "breach":
        return f"the SPRT crossed its bound (LLR {test.llr:.2f} >= {test.upper:.2f})"
    if decision == "pass":
        return f"the SPRT accepted (LLR {test.llr:.2f} <= {test.lower:.2f})"
    return f"undecided (LLR {test.llr:.2f} between {test.lower:.2f} and {test.upper:.2f})"


def _top(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "none"
    label = max(counts, key=counts.__getitem__)
    return f"{label!r} {counts[label] / total:.0%}"
