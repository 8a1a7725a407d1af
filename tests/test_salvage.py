"""Salvaging a pickle that cannot be loaded whole: exactly the parts that hold what
fails are broken, and every other part is loaded exact, objects shared between
parts included (:mod:`conveyor.executors.processes.salvage`)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contractfns as fns
from conveyor.executors.processes.salvage import salvage


def test_salvage_blames_exactly_the_parts_that_hold_what_fails() -> None:
    shared = {"ok": [1, 2]}
    bad = fns.KeywordOnly(1, reason="x")
    refused = fns.RefusesState(5)
    parts = [
        fns.Job(0, "log"),
        (bad, shared),  # `shared` is first pickled here, after what fails
        shared,
        {"k": [bad]},
        fns.Job(4, "log", payload=shared),
        [refused],  # half built: setting its state fails
        {"again": refused},  # and another part holds the same object
        5,
    ]
    data = pickle.dumps(parts, protocol=5)
    with pytest.raises(TypeError):
        pickle.loads(data)
    salvaged = salvage(data)
    errors = [salvaged.error_in(p) for p in salvaged.value]
    assert [e is not None for e in errors] == [False, True, False, True, False, True, True, False]
    assert isinstance(errors[1], TypeError) and isinstance(errors[5], ValueError)
    value = salvaged.value
    assert value[0] == parts[0] and value[2] == shared and value[7] == 5
    assert value[4].payload is value[2]  # shared objects stay shared


def leaves() -> st.SearchStrategy[Any]:
    good = st.one_of(
        st.integers(), st.text(max_size=5), st.builds(fns.Job, st.integers(), st.just("l"))
    )
    bad = st.builds(fns.KeywordOnly, st.integers(), reason=st.just("r"))
    return st.one_of(good, good, good, bad)


values = st.recursive(
    leaves(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
    ),
    max_leaves=12,
)


def holds_bad(value: Any) -> bool:
    if isinstance(value, fns.KeywordOnly):
        return True
    if isinstance(value, (list, tuple)):
        return any(holds_bad(v) for v in value)
    if isinstance(value, dict):
        return any(holds_bad(v) for v in value.values())
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(values, min_size=1, max_size=8), st.data())
def test_salvage_fails_the_parts_that_hold_a_bad_value_and_keeps_the_rest_exact(
    parts: list[Any], data: st.DataObject
) -> None:
    # Share some parts' objects with others, so that memoised objects cross parts.
    for _ in range(data.draw(st.integers(0, 3))):
        i, j = data.draw(st.integers(0, len(parts) - 1)), data.draw(st.integers(0, len(parts) - 1))
        parts[j] = [parts[j], parts[i]]
    blob = pickle.dumps(parts, protocol=5)
    salvaged = salvage(blob)
    assert len(salvaged.value) == len(parts)
    for original, got in zip(parts, salvaged.value, strict=True):
        if holds_bad(original):
            assert isinstance(salvaged.error_in(got), TypeError)
        else:
            assert salvaged.error_in(got) is None and got == original
