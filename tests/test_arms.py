"""ArmStats: what one arm of a rollout did, fixed in size whatever the traffic."""

from __future__ import annotations

import json
import math

import pytest

from conveyor.lifecycle import ArmStats
from conveyor.lifecycle._arms import LATENCY_EDGES, MAX_LABELS, OTHER, label_of
from conveyor.lifecycle._evidence import count_slower, latency_quantile


def test_observe_counts_requests_errors_latencies_and_labels() -> None:
    arm = ArmStats()
    arm.observe(0.010, label="cat")
    arm.observe(0.020, label="dog")
    arm.observe(0.030, error=True, label="cat")  # an error's answer is not counted
    arm.observe(0.040)
    assert (arm.requests, arm.errors) == (4, 1)
    assert arm.error_rate == pytest.approx(0.25)
    assert arm.predictions == {"cat": 1, "dog": 1}
    assert sum(arm.latency) == 4
    assert len(arm.latency) == len(LATENCY_EDGES) + 1
    assert ArmStats().error_rate == 0.0


def test_extreme_latencies_land_in_the_end_bins() -> None:
    arm = ArmStats()
    for seconds in (0.0, -1.0, 1e-9, 1e6, math.inf):
        arm.observe(seconds)
    assert arm.latency[0] == 3 and arm.latency[-1] == 2
    assert arm.quantile(1.0) == LATENCY_EDGES[-1]
    assert ArmStats().quantile(0.95) == 0.0


def test_quantile_is_the_upper_edge_of_the_bin_and_slower_than_counts_whole_bins() -> None:
    arm = ArmStats()
    for _ in range(90):
        arm.observe(0.010)
    for _ in range(10):
        arm.observe(1.0)
    fast_bin = next(e for e in LATENCY_EDGES if e > 0.010)
    slow_bin = next(e for e in LATENCY_EDGES if e > 1.0)
    assert arm.quantile(0.5) == fast_bin
    assert arm.quantile(0.9) == fast_bin
    assert arm.quantile(0.95) == slow_bin
    assert arm.slower_than(0.1) == 10
    assert arm.slower_than(0.001) == 100
    assert arm.slower_than(1.0) == 0  # the bin holding 1.0 is not above it
    assert arm.slower_than(10.0) == 0


def test_the_interpolated_quantile_and_count_stay_inside_the_bin() -> None:
    arm = ArmStats()
    for i in range(1000):
        arm.observe(0.010 * (1 + i / 1000))  # 10 ms to 20 ms, even
    p50 = latency_quantile(arm, 0.5)
    assert 0.012 < p50 < 0.018
    assert p50 <= arm.quantile(0.5)
    assert count_slower(arm, 0.001) == pytest.approx(1000)
    assert count_slower(arm, 1.0) == 0
    assert 300 < count_slower(arm, 0.015) < 700
    assert latency_quantile(ArmStats(), 0.95) == 0.0
    tiny = ArmStats()
    tiny.observe(0.0)
    assert 0.0 <= latency_quantile(tiny, 0.5) <= LATENCY_EDGES[0]
    assert count_slower(tiny, LATENCY_EDGES[0] / 2) == pytest.approx(0.5)


def test_merge_adds_two_windows_into_a_new_object() -> None:
    first, second = ArmStats(), ArmStats()
    first.observe(0.01, label="a")
    first.compare(True)
    second.observe(0.5, error=True)
    second.observe(0.02, label="b")
    second.observe(0.02, label="a")
    second.compare(False)
    both = first.merge(second)
    assert (both.requests, both.errors, both.compared, both.agreed) == (4, 1, 2, 1)
    assert both.predictions == {"a": 2, "b": 1}
    assert sum(both.latency) == 4
    assert first.requests == 1 and first.predictions == {"a": 1}  # untouched
    assert second.requests == 3


def test_to_dict_round_trips_through_json() -> None:
    arm = ArmStats()
    for i in range(50):
        arm.observe(0.001 * (i + 1), error=i % 7 == 0, label=str(i % 3))
        arm.compare(i % 5 != 0)
    text = json.dumps(arm.to_dict())
    back = ArmStats.from_dict(json.loads(text))
    assert back == arm
    assert back.to_dict() == arm.to_dict()


def test_from_dict_tolerates_missing_and_short_fields() -> None:
    assert ArmStats.from_dict({}) == ArmStats()
    short = ArmStats.from_dict({"requests": "3", "latency": [1, 2], "predictions": {1: "2"}})
    assert short.requests == 3
    assert short.latency[:3] == [1, 2, 0] and len(short.latency) == len(LATENCY_EDGES) + 1
    assert short.predictions == {"1": 2}
    long = ArmStats.from_dict({"latency": [1] * 500})
    assert len(long.latency) == len(LATENCY_EDGES) + 1


def test_labels_are_bounded_by_max_labels() -> None:
    arm = ArmStats()
    for i in range(MAX_LABELS * 3):
        arm.observe(0.01, label=f"label-{i}")
    arm.observe(0.01, label="label-0")  # a known label is still counted by name
    assert len(arm.predictions) == MAX_LABELS + 1
    assert arm.predictions[OTHER] == MAX_LABELS * 2
    assert arm.predictions["label-0"] == 2
    assert sum(arm.predictions.values()) == arm.requests


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        (True, "True"),
        (3, "3"),
        ("spam", "spam"),
        (0.25, "0.25"),
        (float("nan"), None),
        ({"label": "cat"}, "cat"),
        ({"prediction": 2}, "2"),
        ({"class": [0.1, 0.7, 0.2]}, "1"),
        ({"outputs": ["dog"]}, "dog"),
        ({"score": 0.5}, None),
        ([0.1, 0.2, 0.9], "2"),
        ([[0.9, 0.1]], "0"),
        (["a", "b"], None),
        ([True, False], None),
        ([], None),
        (None, None),
        (b"bytes", None),
    ],
)
def test_label_of_reads_the_answer_shapes(answer: object, label: str | None) -> None:
    assert label_of(answer) == label
