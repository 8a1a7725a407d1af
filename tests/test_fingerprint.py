"""Fingerprints of values and functions: stable, typed, and sensitive to what matters."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
import subprocess
import sys
import textwrap
import threading
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np
import pytest

import conveyor as cv
from conveyor.cache import (
    FingerprintError,
    explain_value,
    fingerprint_function,
    fingerprint_pipeline,
    fingerprint_value,
)

fv = fingerprint_value


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Other:
    x: int
    y: int


class Pair(NamedTuple):
    a: int
    b: int


class Colour(enum.Enum):
    RED = 1


def test_types_never_collide() -> None:
    values: list[Any] = [
        1, 1.0, True, "1", b"1", bytearray(b"1"), (1,), [1], {1}, frozenset({1}), {1: 1},
        None, 0, False, "", b"", (), [], {}, 1 + 0j, Colour.RED, np.int64(1), np.float64(1.0),
        np.array([1]), np.array([1.0]), Pair(1, 1), (1, 1), Point(1, 1), Other(1, 1),
        datetime.date(2020, 1, 1), "2020-01-01",
    ]  # fmt: skip
    digests = [fv(v) for v in values]
    assert None not in digests
    assert len(set(digests)) == len(values)


def test_equal_content_gives_equal_fingerprints() -> None:
    assert fv({"a": 1, "b": [1, 2]}) == fv({"b": [1, 2], "a": 1})  # dict order is ignored
    assert fv({3, 1, 2}) == fv({1, 2, 3})
    assert fv(Point(1, 2)) == fv(Point(1, 2)) != fv(Point(2, 1))
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert fv(a) == fv(a.copy()) == fv(np.asfortranarray(a))  # layout does not matter
    assert fv(a) != fv(a.reshape(4, 3)) != fv(a.astype(np.float64))
    assert fv(a[:, 1]) == fv(np.array([1.0, 5.0, 9.0], dtype=np.float32))
    assert fv("x" * 10) != fv("x" * 11)
    assert fv(["ab", "c"]) != fv(["a", "bc"])  # lengths frame every part


def test_stable_across_processes() -> None:
    """``hash()`` is salted per process; fingerprints must not be."""
    code = textwrap.dedent(
        """
        from conveyor.cache import fingerprint_value
        print(fingerprint_value({"k": ["s", 1, 2.5, b"b", (None, True)], "z": frozenset("ab")}))
        """
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout.strip()
        for seed in (1, 2)
    }
    here = fv({"k": ["s", 1, 2.5, b"b", (None, True)], "z": frozenset("ab")})
    assert outs == {here}


def test_unfingerprintable_values_give_none_and_say_why() -> None:
    lock = threading.Lock()
    assert fv(lock) is None
    assert fv({"a": [1, lock]}) is None
    assert fv(np.array([object()], dtype=object)) is None
    assert explain_value({"a": lock})[1] == "a _thread.lock"
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert explain_value(cyclic) == (None, "a reference cycle through a list")
    shared = [1, 2]
    assert fv([shared, shared]) == fv([[1, 2], [1, 2]])  # sharing is not a cycle
    assert fv(OrderedDict(a=1)) != fv({"a": 1})


# --- functions -------------------------------------------------------------------------

SCALE = 3
TABLE = {"a": 1}


def helper(x: int) -> int:
    return x * SCALE


def uses_helper(x: int) -> int:
    return helper(x) + 1


def test_function_source_changes_the_fingerprint() -> None:
    ns1: dict[str, Any] = {}
    ns2: dict[str, Any] = {}
    exec("def f(x):\n    return x + 1\n", ns1)
    exec("def f(x):\n    return x + 2\n", ns2)
    assert fingerprint_function(ns1["f"]) != fingerprint_function(ns2["f"])
    ns3: dict[str, Any] = {}
    exec("def f(x):\n    return x + 1\n", ns3)
    assert fingerprint_function(ns1["f"]) == fingerprint_function(ns3["f"])


def test_closures_globals_defaults_and_helpers_count(monkeypatch: pytest.MonkeyPatch) -> None:
    def make(k: int) -> Any:
        def add(x: int) -> int:
            return x + k

        return add

    assert fingerprint_function(make(1)) == fingerprint_function(make(1))
    assert fingerprint_function(make(1)) != fingerprint_function(make(2))

    before = fingerprint_function(uses_helper)
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 4)  # a constant the helper reads
    assert fingerprint_function(uses_helper) != before

    def with_default(x: int, n: int = 1) -> int:
        return x + n

    fp = fingerprint_function(with_default)
    with_default.__defaults__ = (2,)
    assert fingerprint_function(with_default) != fp

    p1, p2 = functools.partial(with_default, n=1), functools.partial(with_default, n=2)
    assert fingerprint_function(p1) != fingerprint_function(p2)


class Scaler:
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, x: float) -> float:
        return x * self.factor

    def apply(self, x: float) -> float:
        return x * self.factor


def test_callable_objects_and_methods_count_their_state() -> None:
    assert fingerprint_function(Scaler(2)) == fingerprint_function(Scaler(2))
    assert fingerprint_function(Scaler(2)) != fingerprint_function(Scaler(3))
    assert fingerprint_function(Scaler(2).apply) != fingerprint_function(Scaler(3).apply)
    stage = cv.Stage(Scaler(2), name="scale")
    assert fingerprint_function(stage) == fingerprint_function(Scaler(2))


def test_unfingerprintable_closure_is_refused() -> None:
    lock = threading.Lock()

    def guarded(x: int) -> int:
        with lock:
            return x

    with pytest.raises(
        FingerprintError, match=r"'lock', which .*guarded closes over: it holds a _thread.lock"
    ):
        fingerprint_function(guarded)


def test_pipeline_fingerprint_follows_code_and_shape() -> None:
    def make(k: int) -> Any:
        def add(x: int) -> int:
            return x + k

        return add

    a = cv.Pipeline("p", [cv.stage(make(1), name="add"), cv.stage(helper)])
    b = cv.Pipeline("p", [cv.stage(make(1), name="add"), cv.stage(helper)])
    c = cv.Pipeline("p", [cv.stage(make(2), name="add"), cv.stage(helper)])
    d = cv.Pipeline("p", [cv.stage(helper), cv.stage(make(1), name="add")])
    assert fingerprint_pipeline(a) == fingerprint_pipeline(b)
    assert len({fingerprint_pipeline(x) for x in (a, c, d)}) == 3
