"""The canary's and the shadow's judges on synthetic traffic: seeded draws, a fake
``elapsed``, no server and no clock."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conveyor.lifecycle import (
    ArmStats,
    CanaryPolicy,
    Judgement,
    LifecycleError,
    ShadowPolicy,
    judge_canary,
    judge_shadow,
)
from conveyor.lifecycle._arms import LATENCY_EDGES
from conveyor.lifecycle._evidence import chi2_sf, chi2_table, js_distance, wilson

MEDIAN = 0.02  # seconds: the champion's median latency


def add(
    arm: ArmStats,
    rng: np.random.Generator,
    n: int,
    *,
    error_rate: float = 0.0,
    slower: float = 1.0,
    classes: tuple[float, ...] | None = None,
) -> None:
    """``n`` requests in bulk: errors drawn at ``error_rate``, latencies log-normal
    around ``MEDIAN * slower``, labels drawn from ``classes`` (probabilities)."""
    errors = int(rng.binomial(n, error_rate)) if error_rate else 0
    arm.requests += n
    arm.errors += errors
    latencies = MEDIAN * slower * rng.lognormal(0.0, 0.5, size=n)
    bins = np.searchsorted(np.array(LATENCY_EDGES), latencies, side="right")
    for i, count in enumerate(np.bincount(bins, minlength=len(arm.latency))):
        arm.latency[i] += int(count)
    if classes is not None:
        labels = rng.choice(len(classes), size=n - errors, p=classes)
        for label, count in enumerate(np.bincount(labels, minlength=len(classes))):
            if count:
                arm.predictions[str(label)] = arm.predictions.get(str(label), 0) + int(count)


def run_step(
    policy: CanaryPolicy,
    seed: int,
    *,
    per_interval: int = 20,
    share: float = 0.05,
    max_intervals: int = 200,
    champion_errors: float = 0.0,
    candidate_errors: float = 0.0,
    slower: float = 1.0,
    champion_classes: tuple[float, ...] | None = None,
    candidate_classes: tuple[float, ...] | None = None,
) -> tuple[Judgement, int, list[tuple[ArmStats, ArmStats]]]:
    """One canary step: ``per_interval`` candidate requests per interval (the
    champion gets the rest of the traffic at ``share``), judged after each; returns the
    first judgement that is not hold, its interval, and the cumulative counts seen."""
    rng = np.random.default_rng(seed)
    champion, candidate = ArmStats(), ArmStats()
    history = []
    champion_per = round(per_interval * (1 - share) / share)
    for k in range(1, max_intervals + 1):
        add(champion, rng, champion_per, error_rate=champion_errors, classes=champion_classes)
        add(
            candidate,
            rng,
            per_interval,
            error_rate=candidate_errors,
            slower=slower,
            classes=candidate_classes,
        )
        history.append(
            (ArmStats.from_dict(champion.to_dict()), ArmStats.from_dict(candidate.to_dict()))
        )
        judgement = judge_canary(policy, champion, candidate, elapsed=k * policy.interval)
        if judgement.action != "hold":
            return judgement, k, history
    raise AssertionError(f"no decision in {max_intervals} intervals: {judgement.reason}")


def expected_p0(champion: ArmStats, policy: CanaryPolicy) -> float:
    """The champion's rate as documented: Wilson's upper bound at champion_z, floored."""
    n, z = champion.requests, policy.champion_z
    if n == 0:
        return policy.error_floor
    p = champion.errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(policy.error_floor, centre + half)


def errors_llr(champion: ArmStats, candidate: ArmStats, policy: CanaryPolicy) -> float:
    p0 = expected_p0(champion, policy)
    p1 = p0 + policy.max_error_increase
    e, n = candidate.errors, candidate.requests
    return e * math.log(p1 / p0) + (n - e) * math.log((1 - p1) / (1 - p0))


def test_a_candidate_erring_on_5_percent_is_rolled_back_at_the_first_evaluation_past_the_bound() -> (
    None
):
    policy = CanaryPolicy()
    upper = math.log((1 - policy.beta) / policy.alpha)
    rolled_back_at = []
    for seed in range(100):
        judgement, k, history = run_step(policy, seed, candidate_errors=0.05)
        assert judgement.action == "rollback", judgement.reason
        assert judgement.evidence["breach"] == "errors"
        assert judgement.reason.startswith("errors: ")
        first = next(
            i for i, (ch, ca) in enumerate(history, 1) if errors_llr(ch, ca, policy) >= upper
        )
        assert k == first, (seed, k, first)
        assert judgement.evidence["errors"]["llr"] >= judgement.evidence["errors"]["upper"]
        rolled_back_at.append(k * 20)
    # Wald's expected sample size against a champion at the floor: A / E[LLR per request].
    p0, p1, rate = policy.error_floor, policy.error_floor + policy.max_error_increase, 0.05
    drift = rate * math.log(p1 / p0) + (1 - rate) * math.log((1 - p1) / (1 - p0))
    wald = upper / drift
    assert 20 < wald < 30
    # Observed: at least two errors are needed (one moves the LLR by 2.4 < 2.77), about 40
    # requests at 5%, and a decision waits for the end of an interval of 20 requests.
    assert wald <= float(np.mean(rolled_back_at)) <= wald + 2 * 20 + 20
    assert sorted(rolled_back_at)[94] <= 150


def test_a_good_candidate_advances_and_rarely_rolls_back() -> None:
    # At 2% errors a good candidate needs about 800 requests to pass (Wald's ASN under
    # H0), more than 20 an interval brings in the default step_timeout: give it time.
    policy = CanaryPolicy(step_timeout=1e6)
    outcomes = []
    for seed in range(100):
        judgement, _, _ = run_step(
            policy,
            1000 + seed,
            per_interval=100,
            champion_errors=0.02,
            candidate_errors=0.02,
            champion_classes=(0.5, 0.3, 0.2),
            candidate_classes=(0.5, 0.3, 0.2),
        )
        outcomes.append(judgement)
    rollbacks = [j for j in outcomes if j.action == "rollback"]
    # alpha 0.05 over 100 trials, plus two binomial standard deviations
    assert len(rollbacks) <= 5 + 2 * math.sqrt(100 * 0.05 * 0.95), [j.reason for j in rollbacks]
    advanced = next(j for j in outcomes if j.action == "advance")
    assert advanced.reason.startswith("passed: errors: ")
    for name in ("errors", "latency", "predictions"):
        assert advanced.evidence[name]["decision"] == "pass"


def test_a_bad_candidate_rarely_passes() -> None:
    policy = CanaryPolicy(step_timeout=1e6)
    passes = 0
    for seed in range(100):
        judgement, _, _ = run_step(
            policy, 2000 + seed, per_interval=100, champion_errors=0.02, candidate_errors=0.04
        )
        passes += judgement.action == "advance"
        if judgement.action == "rollback":
            assert judgement.evidence["breach"] == "errors"
    assert passes <= 20 + 2 * math.sqrt(100 * 0.2 * 0.8)


def test_a_champion_with_few_requests_raises_the_bar_by_its_upper_bound() -> None:
    quiet = ArmStats(requests=100, errors=1)
    policy = CanaryPolicy()
    candidate = ArmStats(requests=100, errors=2)
    judgement = judge_canary(policy, quiet, candidate, elapsed=1.0)
    p0 = judgement.evidence["errors"]["p0"]
    assert p0 == pytest.approx(wilson(1, 100, 1.0)[1], abs=1e-6)
    assert p0 > 0.01  # widened above the plain estimate, 1%
    plain = judge_canary(CanaryPolicy(champion_z=0.0), quiet, candidate, elapsed=1.0)
    assert plain.evidence["errors"]["p0"] == pytest.approx(0.01)
    assert plain.evidence["errors"]["llr"] > judgement.evidence["errors"]["llr"]
    # no champion traffic yet: the floor
    alone = judge_canary(policy, ArmStats(), candidate, elapsed=1.0)
    assert alone.evidence["errors"]["p0"] == pytest.approx(policy.error_floor)


@pytest.mark.parametrize("seed", range(5))
def test_a_candidate_3x_slower_is_rolled_back_for_latency(seed: int) -> None:
    judgement, k, _ = run_step(CanaryPolicy(), seed, slower=3.0)
    assert judgement.action == "rollback"
    assert judgement.evidence["breach"] == "latency"
    assert judgement.reason.startswith("latency: ")
    assert "the larger of 1.5 x and +5 ms over the champion's p95" in judgement.reason
    assert latency_threshold(judgement) == pytest.approx(1.5 * latency_p95(judgement), abs=1e-5)
    latency = judgement.evidence["latency"]
    assert latency["llr"] >= latency["upper"]
    assert latency["ratio"] > 2
    assert k <= 3


def test_a_candidate_1_1x_slower_is_not_rolled_back() -> None:
    for seed in range(20):
        judgement, _, _ = run_step(CanaryPolicy(), 300 + seed, slower=1.1)
        assert judgement.action == "advance", judgement.reason
        assert judgement.evidence["latency"]["decision"] == "pass"


def latency_p95(judgement: Judgement) -> float:
    return float(judgement.evidence["latency"]["champion_p95"])


def latency_threshold(judgement: Judgement) -> float:
    return float(judgement.evidence["latency"]["threshold"])


def test_sub_millisecond_jitter_of_a_fast_model_is_no_latency_breach() -> None:
    """A model answering in 0.2 ms whose candidate takes 3 times as long (0.6 ms) is as
    fast as a busy machine's scheduling noise: the 5 ms slack keeps it; without the slack
    the same counts breach."""
    rng = np.random.default_rng(5)
    champion, candidate = ArmStats(), ArmStats()
    fast = 0.0002 / MEDIAN
    add(champion, rng, 2000, slower=fast)
    add(candidate, rng, 200, slower=3 * fast)
    kept = judge_canary(CanaryPolicy(), champion, candidate, elapsed=30.0)
    assert kept.evidence["latency"]["decision"] == "pass", kept.reason
    assert latency_threshold(kept) == pytest.approx(latency_p95(kept) + 0.005, abs=1e-6)
    strict = judge_canary(CanaryPolicy(latency_slack=0.0), champion, candidate, elapsed=30.0)
    assert strict.action == "rollback"
    assert strict.evidence["breach"] == "latency"
    with pytest.raises(LifecycleError, match="latency_slack"):
        CanaryPolicy(latency_slack=-1.0)


def test_latency_waits_for_the_champions_p95() -> None:
    rng = np.random.default_rng(7)
    champion, candidate = ArmStats(), ArmStats()
    add(champion, rng, 10)
    add(candidate, rng, 200, slower=5.0)
    judgement = judge_canary(CanaryPolicy(), champion, candidate, elapsed=30.0)
    assert judgement.action == "hold"
    assert judgement.evidence["latency"]["decision"] == "pending"
    assert "champion's p95 needs 50 requests" in judgement.reason


def test_a_candidate_that_always_answers_class_0_is_rolled_back_for_predictions() -> None:
    judgement, _, _ = run_step(
        CanaryPolicy(),
        11,
        champion_classes=(0.2, 0.5, 0.3),
        candidate_classes=(1.0, 0.0, 0.0),
    )
    assert judgement.action == "rollback"
    assert judgement.evidence["breach"] == "predictions"
    assert judgement.reason.startswith("predictions: the candidate's answers differ")
    assert "candidate '0' 100%" in judgement.reason
    shift = judgement.evidence["predictions"]
    assert shift["js"] > 0.2 and shift["p"] < 0.001
    assert set(shift["candidate"]) == {"0"}


def test_a_small_but_significant_prediction_shift_is_not_a_breach() -> None:
    champion = ArmStats(requests=20000, predictions={"0": 10000, "1": 10000})
    candidate = ArmStats(requests=20000, predictions={"0": 11000, "1": 9000})
    judgement = judge_canary(CanaryPolicy(), champion, candidate, elapsed=1.0)
    shift = judgement.evidence["predictions"]
    assert shift["p"] < 1e-6 and shift["js"] < 0.2
    assert shift["decision"] == "pass"


def test_too_little_traffic_holds_then_rolls_back_as_inconclusive() -> None:
    policy = CanaryPolicy()
    champion, candidate = ArmStats(), ArmStats()
    rng = np.random.default_rng(3)
    elapsed = 0.0
    while elapsed <= policy.step_timeout:
        elapsed += policy.interval
        add(champion, rng, 2)
        add(candidate, rng, 1)
        judgement = judge_canary(policy, champion, candidate, elapsed=elapsed)
        if elapsed <= policy.step_timeout:
            assert judgement.action == "hold", judgement.reason
            assert judgement.reason.startswith("hold: errors: ")
    assert judgement.action == "rollback"
    assert judgement.reason.startswith("inconclusive after 630 s (step_timeout 600 s)")
    assert judgement.evidence["inconclusive"] is True


def test_the_judgement_names_every_check_and_is_json() -> None:
    judgement, _, _ = run_step(
        CanaryPolicy(),
        5,
        candidate_errors=0.05,
        champion_classes=(0.5, 0.5),
        candidate_classes=(0.5, 0.5),
    )
    text = json.dumps(judgement.evidence, allow_nan=False)
    back = json.loads(text)
    assert set(back) >= {"errors", "latency", "predictions", "requests", "elapsed"}
    assert back["errors"]["hits"] == judgement.evidence["errors"]["hits"]
    for name in ("errors", "latency"):
        assert {"llr", "lower", "upper", "p0", "p1", "n", "hits"} <= set(back[name])
    assert {"champion_p95", "candidate_p95", "threshold"} <= set(back["latency"])
    assert {"chi2", "df", "p", "js"} <= set(back["predictions"])
    # The reason in the documented shape
    assert judgement.reason.startswith("errors: ")
    assert (
        "candidate requests (" in judgement.reason
        and "the SPRT crossed its bound (LLR" in judgement.reason
    )


def shadow_arms(
    seed: int,
    n: int,
    *,
    agree: float = 0.98,
    errors: float = 0.0,
    slower: float = 1.0,
) -> tuple[ArmStats, ArmStats]:
    rng = np.random.default_rng(seed)
    champion, shadow = ArmStats(), ArmStats()
    add(champion, rng, n * 10)
    add(shadow, rng, n, error_rate=errors, slower=slower)
    compared = shadow.requests - shadow.errors
    shadow.compared, shadow.agreed = compared, int(rng.binomial(compared, agree))
    return champion, shadow


def test_an_agreeing_shadow_advances() -> None:
    policy = ShadowPolicy()
    champion, shadow = shadow_arms(1, 100)
    assert judge_shadow(policy, champion, shadow, elapsed=10.0).action == "hold"
    champion, shadow = shadow_arms(1, 400)
    judgement = judge_shadow(policy, champion, shadow, elapsed=20.0)
    assert judgement.action == "advance", judgement.reason
    assert judgement.evidence["agreement"]["lower"] >= 0.9
    assert judgement.reason.startswith("passed: agreement: ")


def test_a_disagreeing_shadow_is_stopped() -> None:
    champion, shadow = shadow_arms(2, 100, agree=0.7)
    judgement = judge_shadow(ShadowPolicy(), champion, shadow, elapsed=10.0)
    assert judgement.action == "rollback"
    assert judgement.evidence["breach"] == "agreement"
    assert judgement.evidence["agreement"]["upper"] < 0.9
    assert "below the 90% required" in judgement.reason


def test_an_erring_shadow_is_stopped() -> None:
    champion, shadow = shadow_arms(3, 200, errors=0.1)
    judgement = judge_shadow(ShadowPolicy(), champion, shadow, elapsed=10.0)
    assert judgement.action == "rollback"
    assert judgement.evidence["breach"] == "errors"
    assert judgement.reason.startswith("errors: ") and "shadow requests" in judgement.reason


def test_a_slow_shadow_is_stopped() -> None:
    champion, shadow = shadow_arms(4, 200, slower=4.0)
    judgement = judge_shadow(ShadowPolicy(), champion, shadow, elapsed=10.0)
    assert judgement.action == "rollback"
    assert judgement.evidence["breach"] == "latency"
    json.dumps(judgement.evidence, allow_nan=False)


def test_a_shadow_with_nothing_compared_times_out() -> None:
    champion, shadow = shadow_arms(5, 400)
    shadow.compared = shadow.agreed = 0
    policy = ShadowPolicy()
    assert judge_shadow(policy, champion, shadow, elapsed=600.0).action == "hold"
    judgement = judge_shadow(policy, champion, shadow, elapsed=600.5)
    assert judgement.action == "rollback"
    assert "inconclusive" in judgement.reason and "no answers compared yet" in judgement.reason


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"steps": ()}, "steps"),
        ({"steps": (0.5, 0.25)}, "steps"),
        ({"steps": (0.0, 0.5)}, "steps"),
        ({"steps": (0.5, 1.5)}, "steps"),
        ({"steps": (0.1, 0.1)}, "steps"),
        ({"steps": "0.5"}, "steps"),
        ({"alpha": 0.5}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
        ({"beta": -0.1}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"interval": 0}, "interval"),
        ({"interval": float("inf")}, "interval"),
        ({"step_timeout": -1.0}, "step_timeout"),
        ({"min_requests": 0}, "min_requests"),
        ({"min_requests": 2.5}, "min_requests"),
        ({"max_error_increase": 0.0}, "max_error_increase"),
        ({"max_latency_ratio": "1.5"}, "max_latency_ratio"),
        ({"max_prediction_shift": 2.0}, "max_prediction_shift"),
        ({"error_floor": True}, "error_floor"),
        ({"slow_rate_ok": 0.2, "slow_rate_bad": 0.1}, "slow_rate_bad"),
    ],
)
def test_bad_canary_policies_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(LifecycleError, match=rf"CanaryPolicy\.{field} must"):
        CanaryPolicy(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"min_agreement": 0}, "min_agreement"),
        ({"min_requests": -5}, "min_requests"),
        ({"timeout": 0.0}, "timeout"),
        ({"alpha": 0.7}, "alpha"),
        ({"max_latency_ratio": 0}, "max_latency_ratio"),
    ],
)
def test_bad_shadow_policies_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(LifecycleError, match=rf"ShadowPolicy\.{field} must"):
        ShadowPolicy(**kwargs)


def test_a_policy_error_shows_a_good_value() -> None:
    with pytest.raises(LifecycleError, match=r"not 0; e\.g\. interval=30\.0"):
        CanaryPolicy(interval=0)
    assert CanaryPolicy(steps=[0.1, 1.0]).steps == (0.1, 1.0)  # a list is kept as a tuple


def test_the_statistics_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 10, 51, 100):
        for x in (0.01, 0.5, 3.0, 10.0, 40.0, 150.0, 400.0):
            assert chi2_sf(x, df) == pytest.approx(
                float(stats.chi2.sf(x, df)), rel=1e-7, abs=1e-300
            )
    first, second = {"a": 30, "b": 50, "c": 20}, {"a": 60, "b": 25, "c": 15, "d": 0}
    statistic, df, p = chi2_table(first, second)
    table = np.array([[30, 50, 20], [60, 25, 15]])
    expected = stats.chi2_contingency(table, correction=False)
    assert statistic == pytest.approx(expected[0]) and df == expected[2]
    assert p == pytest.approx(expected[1])
    distance = pytest.importorskip("scipy.spatial.distance")
    assert js_distance(first, second) == pytest.approx(
        float(distance.jensenshannon([30, 50, 20], [60, 25, 15], base=2))
    )
    assert js_distance({"x": 5}, {"y": 5}) == pytest.approx(1.0)
    assert chi2_table({"x": 5}, {"x": 9}) == (0.0, 0, 1.0)
    low, high = wilson(90, 100, 1.96)
    assert (low, high) == pytest.approx((0.8256, 0.9448), abs=1e-4)


@pytest.mark.parametrize(
    ("arm", "words"),
    [
        (ArmStats(requests=3, errors=5), r"errors \(5\) exceed requests \(3\)"),
        (ArmStats(requests=-1), "counts must be whole numbers of at least 0"),
        (ArmStats(requests=2.5), "counts must be whole numbers of at least 0"),  # type: ignore[arg-type]
        (ArmStats(requests=4, predictions={"a": -2}), "counts must be whole numbers of at least 0"),
        (ArmStats(compared=1, agreed=2), r"agreed \(2\) exceeds compared \(1\)"),
        (ArmStats(latency=[1, 2, 3]), "latency has 3 bins, not 50"),
    ],
)
def test_damaged_counts_are_refused_naming_the_arm(arm: ArmStats, words: str) -> None:
    with pytest.raises(LifecycleError, match=rf"the candidate's ArmStats are damaged: {words}"):
        judge_canary(CanaryPolicy(), ArmStats(), arm, elapsed=1.0)
    with pytest.raises(LifecycleError, match=rf"the champion's ArmStats are damaged: {words}"):
        judge_shadow(ShadowPolicy(), arm, ArmStats(), elapsed=1.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(LifecycleError, match="must be an ArmStats, not dict; read stored counts"):
        judge_canary(CanaryPolicy(), ArmStats(), {"requests": 3}, elapsed=1.0)  # type: ignore[arg-type]
    with pytest.raises(LifecycleError, match="policy must be a CanaryPolicy, not ShadowPolicy"):
        judge_canary(ShadowPolicy(), ArmStats(), ArmStats(), elapsed=1.0)  # type: ignore[arg-type]
    with pytest.raises(LifecycleError, match="policy must be a ShadowPolicy, not CanaryPolicy"):
        judge_shadow(CanaryPolicy(), ArmStats(), ArmStats(), elapsed=1.0)  # type: ignore[arg-type]
    for elapsed in (float("nan"), -1.0, float("inf"), "10"):
        with pytest.raises(
            LifecycleError, match="elapsed must be the seconds since the step began"
        ):
            judge_canary(CanaryPolicy(), ArmStats(), ArmStats(), elapsed=elapsed)  # type: ignore[arg-type]


def test_empty_arms_hold() -> None:
    judgement = judge_canary(CanaryPolicy(), ArmStats(), ArmStats(), elapsed=0.0)
    assert judgement.action == "hold"
    assert judgement.evidence["errors"]["llr"] == 0.0
    assert judge_shadow(ShadowPolicy(), ArmStats(), ArmStats(), elapsed=0.0).action == "hold"
    json.dumps(judgement.evidence, allow_nan=False)


def test_huge_counts_and_many_labels_stay_finite() -> None:
    big = 10**12
    champion = ArmStats(requests=big, errors=big // 100)
    candidate = ArmStats(requests=big, errors=big // 50)
    champion.latency[20] = candidate.latency[20] = big
    champion.predictions = {str(i): big // 101 for i in range(101)}
    candidate.predictions = {str(i): big // 101 + i for i in range(101)}
    judgement = judge_canary(CanaryPolicy(), champion, candidate, elapsed=1.0)
    assert judgement.action == "rollback" and judgement.evidence["breach"] == "errors"
    assert judgement.evidence["predictions"]["df"] == 100
    json.dumps(judgement.evidence, allow_nan=False)
    everything_errs = ArmStats(requests=100, errors=100)
    judgement = judge_canary(CanaryPolicy(), everything_errs, everything_errs, elapsed=1.0)
    json.dumps(judgement.evidence, allow_nan=False)
    assert math.isfinite(judgement.evidence["errors"]["llr"])


def test_a_breach_wins_over_the_timeout_and_a_pass_over_the_timeout() -> None:
    policy = CanaryPolicy()
    rng = np.random.default_rng(9)
    champion, good, bad = ArmStats(), ArmStats(), ArmStats()
    add(champion, rng, 4000)
    add(good, rng, 400)
    add(bad, rng, 400, error_rate=0.2)
    assert judge_canary(policy, champion, bad, elapsed=1e5).reason.startswith("errors: ")
    assert judge_canary(policy, champion, good, elapsed=1e5).action == "advance"


def test_a_candidate_whose_answers_lose_their_labels_is_rolled_back() -> None:
    champion = ArmStats(requests=500, predictions={"cat": 300, "dog": 200})
    candidate = ArmStats(requests=60)  # answered, but nothing in them reads as a label
    judgement = judge_canary(CanaryPolicy(), champion, candidate, elapsed=30.0)
    assert judgement.action == "rollback"
    assert judgement.evidence["predictions"]["unlabelled"] == "candidate"
    assert judgement.reason == (
        "predictions: the candidate's answers carry no label where the champion's do "
        "(most common: 'cat' 60%)"
    )
    few = ArmStats(requests=20)
    assert judge_canary(CanaryPolicy(), champion, few, elapsed=30.0).action == "hold"
