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
    assert fv({"a": 1, "b": [1, 2]}) == fv({"a": 1, "b": [1, 2]})
    # A dict's order is visible to the code that reads it (list(d), json.dumps(d)).
    assert fv({"a": 1, "b": [1, 2]}) != fv({"b": [1, 2], "a": 1})
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


# --- what the code fingerprint follows ---------------------------------------------------


class Settings:
    factor = 2

    def scaled(self, x: int) -> int:
        return x * SCALE


CONFIG = Settings()


def uses_config(x: int) -> int:
    return x * CONFIG.factor


def uses_method(x: int) -> int:
    return Settings().scaled(x)


def test_instances_classes_and_their_methods_are_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    before = fingerprint_function(uses_config)
    monkeypatch.setattr(CONFIG, "factor", 3, raising=False)  # an instance attribute now
    assert fingerprint_function(uses_config) != before
    monkeypatch.undo()
    assert fingerprint_function(uses_config) == before
    monkeypatch.setattr(Settings, "factor", 5)  # a class attribute
    assert fingerprint_function(uses_config) != before

    method = fingerprint_function(uses_method)
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 7)  # a global the method reads
    assert fingerprint_function(uses_method) != method


def test_attributes_read_through_modules_are_followed(tmp_path: Any) -> None:
    import types

    settings = types.ModuleType("conveyor_test_settings")  # a module of the user's
    settings.FACTOR = 2  # type: ignore[attr-defined]
    settings.nested = types.ModuleType("conveyor_test_settings.nested")  # type: ignore[attr-defined]
    settings.nested.LIMIT = 10  # type: ignore[attr-defined]
    ns: dict[str, Any] = {"settings": settings}
    exec("def f(x):\n    return x * settings.FACTOR + settings.nested.LIMIT\n", ns)
    first = fingerprint_function(ns["f"])
    settings.nested.LIMIT = 11  # type: ignore[attr-defined]
    second = fingerprint_function(ns["f"])
    settings.FACTOR = 3  # type: ignore[attr-defined]
    assert len({first, second, fingerprint_function(ns["f"])}) == 3
    settings.UNREAD = 1  # type: ignore[attr-defined]  # an attribute the function does not read
    assert fingerprint_function(ns["f"]) == fingerprint_function(ns["f"])


def test_library_code_is_named_not_read_and_listed() -> None:
    import math
    import os
    import time

    from conveyor.cache import code_fingerprint

    def f(x: float) -> float:
        return math.sqrt(x) + math.pi + time.time() + len(os.environ) + len(open(str(x)).name)

    code = code_fingerprint(f)
    assert code.named == ("builtins.open", "math.sqrt", "os.environ", "time.time")
    assert code.refused == ()


def test_a_value_that_cannot_be_fingerprinted_is_named_with_where_it_was_read() -> None:
    from conveyor.cache import code_fingerprint

    class Holder:
        lock = threading.Lock()

        def get(self) -> int:
            return 1

    def f(x: int) -> int:
        return Holder().get() + x

    with pytest.raises(
        FingerprintError, match=r"cannot fingerprint \S*Holder.lock: it holds a _thread.lock"
    ):
        fingerprint_function(f)
    lenient = code_fingerprint(f, strict=False)  # with cache_version: counted by type
    (refused,) = lenient.refused
    assert refused.endswith("Holder.lock: a _thread.lock")
    assert code_fingerprint(f, strict=False).digest == lenient.digest


def test_code_fingerprints_do_not_depend_on_the_hash_seed() -> None:
    """Frozenset constants (``x in {"a", "b"}``) and class attributes that are sets
    iterate in a salted order; fingerprints must not."""
    code = textwrap.dedent(
        """
        from conveyor.cache import fingerprint_function
        TAGS = {"alpha", "beta", "gamma", "delta"}
        class Rules:
            names = frozenset({"x", "y", "z", "w"})
            def ok(self, s):
                return s in {"p", "q", "r", "s"} and s in self.names
        def f(s):
            return Rules().ok(s) and s in TAGS
        print(fingerprint_function(f))
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
        for seed in (1, 2, 3, 4)
    }
    assert len(outs) == 1 and len(outs.pop()) == 64


# --- the registry -------------------------------------------------------------------------


class Handle:
    """A type conveyor cannot fingerprint on its own: it holds a lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()


class SubHandle(Handle):
    pass


def test_registered_types_are_fingerprinted_by_what_their_encoder_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor.cache import _values, register_fingerprint

    monkeypatch.setattr(_values, "_registry", {})
    monkeypatch.setattr(_values, "_by_name", dict(_values._by_name))
    monkeypatch.setattr(_values, "_resolved", {})
    assert fv(Handle("a")) is None
    register_fingerprint(Handle, lambda h: h.name)
    assert fv(Handle("a")) == fv(Handle("a")) != fv(Handle("b"))
    assert fv(Handle("a")) != fv("a")  # the class is part of it
    assert fv(SubHandle("a")) not in (None, fv(Handle("a")))  # subclasses: covered, apart

    register_fingerprint(f"{__name__}.SubHandle", lambda h: (h.name, "sub"))  # by name
    assert fv(SubHandle("a")) == fv(SubHandle("a")) != fv(Handle("a"))

    def broken(h: Handle) -> Any:
        raise RuntimeError("no")

    register_fingerprint(Handle, broken)
    assert explain_value(Handle("a")) == (
        None,
        f"a {__name__}.Handle (its registered fingerprint raised RuntimeError: no)",
    )
    with pytest.raises(TypeError, match="not callable"):
        register_fingerprint(Handle, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"give 'module\.QualName'"):
        register_fingerprint("Handle", str)


def test_masked_arrays_datetimes_and_ordered_mappings() -> None:
    import zoneinfo

    data = np.array([1.0, 2.0, 3.0])
    assert fv(np.ma.array(data, mask=[0, 1, 0])) != fv(np.ma.array(data, mask=[0, 0, 0]))
    assert fv(np.ma.array(data, mask=[0, 1, 0])) == fv(np.ma.array(data.copy(), mask=[0, 1, 0]))
    assert fv(np.ma.array(data)) != fv(data)
    assert fv(np.ma.array(data, fill_value=9.0)) != fv(np.ma.array(data, fill_value=8.0))
    paris = datetime.datetime(2024, 1, 15, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    fixed = datetime.datetime(
        2024, 1, 15, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    assert paris == fixed and fv(paris) != fv(fixed)  # equal instants, other zones
    assert fv(paris) == fv(paris.replace()) != fv(paris.replace(fold=1))
    assert fv(OrderedDict(a=1, b=2)) != fv(OrderedDict(b=2, a=1))
    assert fv(np.array([1, "a"], dtype=object)) == fv(np.array([1, "a"], dtype=object))
    assert fv(np.array([1, "a"], dtype=object)) != fv(np.array([1, "b"], dtype=object))


def test_torch_tensors_are_fingerprinted_by_content() -> None:
    torch = pytest.importorskip("torch")
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert fv(a) == fv(a.clone()) == fv(a.t().contiguous().t())
    assert fv(a) != fv(a.to(torch.float64)) != fv(a.reshape(3, 2))
    assert fv(a) != fv(a.clone().requires_grad_())
    assert fv(torch.tensor([1.5], dtype=torch.bfloat16)) != fv(
        torch.tensor([2.5], dtype=torch.bfloat16)
    )
    assert fv(torch.nn.Parameter(a.clone())) != fv(a)  # the subclass is named
