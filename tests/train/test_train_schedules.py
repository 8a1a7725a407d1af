"""Schedules as data: literal tables, validity for many (p, m, v), and the validator's errors."""

from __future__ import annotations

import dataclasses

import pytest

from conveyor.train import (
    Action,
    TrainError,
    build_schedule,
    gpipe,
    interleaved_1f1b,
    one_f_one_b,
    validate,
    zb_h1,
)


def table(schedule):
    return [" ".join(str(a) for a in acts) for acts in schedule.actions]


def test_gpipe_table():
    assert table(gpipe(2, 3)) == [
        "0F0 0F1 0F2 0B0 0B1 0B2",
        "1F0 1F1 1F2 1B0 1B1 1B2",
    ]


def test_1f1b_table():
    assert table(one_f_one_b(4, 5)) == [
        "0F0 0F1 0F2 0F3 0B0 0F4 0B1 0B2 0B3 0B4",
        "1F0 1F1 1F2 1B0 1F3 1B1 1F4 1B2 1B3 1B4",
        "2F0 2F1 2B0 2F2 2B1 2F3 2B2 2F4 2B3 2B4",
        "3F0 3B0 3F1 3B1 3F2 3B2 3F3 3B3 3F4 3B4",
    ]


def test_interleaved_table():
    # torch 2.13's ScheduleInterleaved1F1B order for p=2, m=2, v=2; stage s on rank s % 2
    assert table(interleaved_1f1b(2, 2, 2)) == [
        "0F0 0F1 2F0 2F1 2B0 2B1 0B0 0B1",
        "1F0 1F1 3F0 3B0 3F1 3B1 1B0 1B1",
    ]


def test_zb_h1_table():
    # rank r holds back r weight-gradient passes to fill the drain
    assert table(zb_h1(3, 4)) == [
        "0F0 0F1 0F2 0I0 0W0 0F3 0I1 0W1 0I2 0W2 0I3 0W3",
        "1F0 1F1 1I0 1F2 1I1 1W0 1F3 1I2 1W1 1I3 1W2 1W3",
        "2F0 2I0 2F1 2I1 2F2 2I2 2W0 2F3 2I3 2W1 2W2 2W3",
    ]


@pytest.mark.parametrize("p", range(1, 7))
@pytest.mark.parametrize("m", range(1, 17))
def test_every_schedule_is_valid(p, m):
    validate(gpipe(p, m))
    if m >= p:
        validate(one_f_one_b(p, m))
        validate(zb_h1(p, m))
        for v in (2, 3, 4):
            if m % max(1, m // p) == 0:
                s = interleaved_1f1b(p, m, v)
                validate(s)
                assert s.num_stages == p * v


def test_m_smaller_than_p_is_a_clear_error():
    for name in ("1f1b", "interleaved", "zbh1"):
        with pytest.raises(TrainError, match=r"m >= p.*m=2 with p=4.*--microbatches 4"):
            build_schedule(name, 4, 2)
    assert gpipe(4, 2).microbatches == 2  # GPipe runs any m


def test_unknown_schedule():
    with pytest.raises(TrainError, match=r"unknown schedule 'pipedream'.*gpipe, 1f1b"):
        build_schedule("pipedream", 2, 2)


def test_interleaved_rounds_rule():
    with pytest.raises(TrainError, match=r"multiple of the number of rounds"):
        interleaved_1f1b(4, 9, 2)


def test_validator_finds_deadlock():
    s = gpipe(2, 2)
    # rank 1 wants micro-batch 1 first, rank 0 waits for backward 0 before forward 1
    bad = dataclasses.replace(
        s,
        actions=(
            (Action("F", 0, 0), Action("B", 0, 0), Action("F", 0, 1), Action("B", 0, 1)),
            (Action("F", 1, 1), Action("F", 1, 0), Action("B", 1, 0), Action("B", 1, 1)),
        ),
    )
    with pytest.raises(TrainError, match=r"deadlocks.*stuck at \{0: '0B0', 1: '1F1'\}"):
        validate(bad)


def test_validator_finds_missing_and_misplaced_actions():
    s = gpipe(2, 2)
    missing = dataclasses.replace(s, actions=(s.actions[0][:-1], s.actions[1]))
    with pytest.raises(TrainError, match=r"missing \['0B1'\]"):
        validate(missing)
    swapped = dataclasses.replace(s, actions=(s.actions[1], s.actions[0]))
    with pytest.raises(TrainError, match=r"belongs to rank 1"):
        validate(swapped)
