"""The timeline's folding, on made-up recordings: every unit's busy time lands in the
buckets it covers, exactly; lanes are one per worker; width is bounded; a run of
100,000 units folds to the same small answer as one of ten."""

from __future__ import annotations

import json
import random

import pytest

from conveyor.observe.recording import Recording, Series, StageRecording, StageShape, UnitDetail

pytest.importorskip("starlette", reason="the dashboard extra is not installed")

from conveyor.dashboard._timeline import MAX_WIDTH, MIN_WIDTH, timeline_data


def recording(units: list[tuple[str, int, int, int]], *, end: int, bucket: int = 10) -> Recording:
    """A recording that started at 1000 ns and ended at 1000 + ``end``, with
    ``(stage, worker, start, finish)`` units (times since the start)."""
    stages: dict[str, StageRecording] = {}
    for name in dict.fromkeys(u[0] for u in units):
        shape = StageShape(name, "map", "threads", 4, 8, (), ())
        mine = [u for u in units if u[0] == name]
        detail = UnitDetail(
            keys=[(i,) for i in range(len(mine))],
            worker=[u[1] for u in mine],
            started=[1000 + u[2] for u in mine],
            finished=[1000 + u[3] for u in mine],
        )
        series = Series(depth_area=[bucket * 2, bucket * 4], depth_low=[0, 1], depth_peak=[3, 5])
        stages[name] = StageRecording(shape=shape, units=len(mine), series=series, detail=detail)
    return Recording(
        run_id="r1", pipeline="p", ordered=False, started_ns=1000, stages=stages,
        ended_ns=1000 + end, state="succeeded", bucket_ns=bucket,
    )  # fmt: skip


def test_busy_time_lands_in_the_buckets_it_covers() -> None:
    # 100 ns in 50 buckets of 2 ns; worker 0 busy [0, 3) and [10, 11); worker 1 [4, 8)
    rec = recording([("a", 0, 0, 3), ("a", 1, 4, 8), ("a", 0, 10, 11)], end=100)
    tl = timeline_data(rec, width=50)
    lanes = {lane["worker"]: lane["busy"] for lane in tl["lanes"]}
    assert [lane["units"] for lane in tl["lanes"]] == [2, 1]
    assert lanes[0][:6] == [1.0, 0.5, 0.0, 0.0, 0.0, 0.5]
    assert lanes[1][:5] == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert sum(lanes[0]) * 2 == pytest.approx(4) and sum(lanes[1]) * 2 == pytest.approx(4)
    assert tl["x"][:3] == [0.0, 2e-9, 4e-9] and tl["seconds"] == 1e-7
    assert tl["depth"] == {
        "x": [0.0, 1e-8],
        "stages": [{"stage": "a", "bound": 8, "mean": [2.0, 4.0], "peak": [3, 5]}],
    }


def test_one_lane_per_worker_per_stage_in_stage_order() -> None:
    rec = recording([("b", 2, 0, 5), ("b", 0, 5, 9), ("c", 1, 1, 2), ("b", 2, 20, 30)], end=40)
    tl = timeline_data(rec, width=MIN_WIDTH)
    assert [(lane["stage"], lane["worker"]) for lane in tl["lanes"]] == [
        ("b", 0), ("b", 2), ("c", 1),
    ]  # fmt: skip


@pytest.mark.parametrize(("asked", "given"), [(1, MIN_WIDTH), (10**9, MAX_WIDTH), (640, 640)])
def test_the_width_is_bounded(asked: int, given: int) -> None:
    tl = timeline_data(recording([("a", 0, 0, 5)], end=50), width=asked)
    assert len(tl["x"]) == len(tl["lanes"][0]["busy"]) == given


def test_units_past_the_end_and_empty_units_are_safe() -> None:
    # a unit that ends after the recorded end (a snapshot of a live run) and one of 0 ns
    tl = timeline_data(recording([("a", 0, 90, 130), ("a", 0, 5, 5)], end=100), width=50)
    busy = tl["lanes"][0]["busy"]
    assert busy[-5:] == [1.0] * 5 and sum(busy) == pytest.approx(5.0)


def test_a_hundred_thousand_units_fold_to_a_small_answer() -> None:
    rng = random.Random(7)
    units, t = [], [0, 0, 0, 0]
    for _ in range(100_000):
        w = rng.randrange(4)
        d = rng.randrange(1, 50)
        units.append(("s", w, t[w], t[w] + d))
        t[w] += d + rng.randrange(0, 5)
    rec = recording(units, end=max(t))
    tl = timeline_data(rec, width=1000)
    assert len(tl["lanes"]) == 4 and sum(lane["units"] for lane in tl["lanes"]) == 100_000
    assert len(json.dumps(tl)) < 200_000  # lanes × width numbers, not units
    step = max(t) / 1000
    busy = sum(d - a for _, _, a, d in units)
    assert sum(sum(lane["busy"]) for lane in tl["lanes"]) * step == pytest.approx(busy, rel=1e-3)
