"""Property: values that differ anywhere never share a fingerprint; equal values always do.

Values are built from *recipes*: plain tuples that say what to build, compared with
``==``. Two recipes are equal exactly when the values they build are the same value
(same types, same contents, same order where order is visible, same zone, same
mask...), so the property is: ``fp(build(a)) == fp(build(b))`` iff ``a == b``. Every
build makes fresh objects, so equal fingerprints never come from shared identity.
Recipes nest up to ten levels, and include the types the cache once got wrong:
masked arrays, aware datetimes, ordered mappings, str subclasses and dataclasses
with extra attributes.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import zoneinfo
from collections import OrderedDict
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.cache import fingerprint_value

Recipe = tuple[Any, ...]


class Tagged(str):
    """A str subclass with attributes of its own."""


@dataclasses.dataclass
class Box:
    x: Any
    y: Any


ZONES = ("Europe/Paris", "America/New_York", "UTC")

# --- leaves -----------------------------------------------------------------------------

_text = st.text(alphabet="abcé\x00", max_size=4)
_floats = st.floats(allow_nan=True, allow_infinity=True).map(lambda f: ("float", f.hex()))
_tz = st.one_of(
    st.just(None),
    st.tuples(st.just("fixed"), st.integers(-14 * 60, 14 * 60), st.sampled_from((None, "A", "B"))),
    st.tuples(st.just("zone"), st.sampled_from(ZONES)),
)
_datetime = st.tuples(
    st.just("datetime"),
    st.tuples(
        st.integers(1, 9999),
        st.integers(1, 12),
        st.integers(1, 28),
        st.integers(0, 23),
        st.integers(0, 59),
        st.integers(0, 59),
        st.integers(0, 999_999),
    ),
    _tz,
    st.integers(0, 1),
)
_masked = st.integers(1, 4).flatmap(
    lambda n: st.tuples(
        st.just("masked"),
        st.tuples(*[st.integers(-3, 3)] * n),
        st.one_of(st.just(None), st.tuples(*[st.booleans()] * n)),
        st.sampled_from(("i8", "f8")),
    )
)
_array = st.tuples(
    st.just("array"),
    st.lists(st.integers(-5, 5), max_size=6).map(tuple),
    st.sampled_from(("i8", "i4", "f8")),
)
LEAVES = st.one_of(
    st.integers(-(2**70), 2**70).map(lambda i: ("int", i)),
    _floats,
    _text.map(lambda s: ("str", s)),
    st.binary(max_size=4).map(lambda b: ("bytes", b)),
    st.booleans().map(lambda b: ("bool", b)),
    st.just(("none",)),
    st.decimals(allow_nan=False, places=2, max_value=100, min_value=-100).map(
        lambda d: ("decimal", str(d))
    ),
    _datetime,
    _masked,
    _array,
    st.frozensets(_text, max_size=3).map(lambda s: ("set", s)),
    st.tuples(
        st.just("tagged"),
        _text,
        st.dictionaries(st.sampled_from("pq"), _text, max_size=2).map(
            lambda d: tuple(sorted(d.items()))
        ),
    ),
)


@st.composite
def _container(
    draw: st.DrawFn, deep: st.SearchStrategy[Recipe], other: st.SearchStrategy[Recipe]
) -> Recipe:
    """One container level: one child from ``deep``, its siblings from ``other``."""
    kind = draw(st.sampled_from(("list", "tuple", "dict", "odict", "box")))
    first = draw(deep)
    rest = draw(st.lists(other, max_size=2))
    at = draw(st.integers(0, len(rest)))
    children = (*rest[:at], first, *rest[at:])
    if kind in ("list", "tuple"):
        return (kind, children)
    if kind == "box":
        return ("box", children[0], children[-1], children[1:2] if len(children) == 3 else ())
    keys = draw(st.lists(_text, min_size=len(children), max_size=len(children), unique=True))
    return (kind, tuple(zip(keys, children, strict=True)))


_SHALLOW = st.one_of(LEAVES, _container(LEAVES, LEAVES))
_NESTED: list[st.SearchStrategy[Recipe]] = [LEAVES]
for _depth in range(1, 11):
    _NESTED.append(st.deferred(lambda d=_depth: _container(_NESTED[d - 1], _SHALLOW)))


def nested(depth: int) -> st.SearchStrategy[Recipe]:
    """Recipes exactly ``depth`` containers deep along one path (siblings stay shallow)."""
    return _NESTED[depth]


RECIPES = st.integers(0, 10).flatmap(nested)

# --- building ---------------------------------------------------------------------------


def _zone(spec: Any) -> datetime.tzinfo | None:
    if spec is None:
        return None
    if spec[0] == "fixed":
        offset = datetime.timedelta(minutes=spec[1])
        return datetime.timezone(offset) if spec[2] is None else datetime.timezone(offset, spec[2])
    return zoneinfo.ZoneInfo(spec[1])


def build(r: Recipe) -> Any:
    kind = r[0]
    if kind == "int":
        return r[1]
    if kind == "float":
        return float.fromhex(r[1])
    if kind in ("str", "bytes", "bool"):
        return r[1]
    if kind == "none":
        return None
    if kind == "decimal":
        return decimal.Decimal(r[1])
    if kind == "datetime":
        return datetime.datetime(*r[1], tzinfo=_zone(r[2]), fold=r[3])
    if kind == "masked":
        data = np.array(r[1], dtype=r[3])
        return np.ma.array(data) if r[2] is None else np.ma.array(data, mask=list(r[2]))
    if kind == "array":
        return np.array(r[1], dtype=r[2])
    if kind == "set":
        return set(r[1])
    if kind == "tagged":
        t = Tagged(r[1])
        for k, v in r[2]:
            setattr(t, k, v)
        return t
    if kind == "list":
        return [build(x) for x in r[1]]
    if kind == "tuple":
        return tuple(build(x) for x in r[1])
    if kind == "dict":
        return {k: build(v) for k, v in r[1]}
    if kind == "odict":
        return OrderedDict((k, build(v)) for k, v in r[1])
    if kind == "box":
        box = Box(build(r[1]), build(r[2]))
        if r[3]:
            box.extra = build(r[3][0])  # type: ignore[attr-defined]
        return box
    raise AssertionError(kind)


def _fp(r: Recipe) -> str:
    digest = fingerprint_value(build(r))
    assert digest is not None, r
    return digest


# --- mutations: the same recipe, different at one place deep inside ---------------------


def _paths(r: Recipe, here: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    found = [here]
    kind = r[0]
    if kind in ("list", "tuple"):
        for i, x in enumerate(r[1]):
            found += _paths(x, (*here, i))
    elif kind in ("dict", "odict"):
        for i, (_, v) in enumerate(r[1]):
            found += _paths(v, (*here, i))
    return found


def _replace(r: Recipe, path: tuple[int, ...], new: Recipe) -> Recipe:
    if not path:
        return new
    i, rest = path[0], path[1:]
    kind = r[0]
    if kind in ("list", "tuple"):
        items = list(r[1])
        items[i] = _replace(items[i], rest, new)
        return (kind, tuple(items))
    pairs = list(r[1])
    pairs[i] = (pairs[i][0], _replace(pairs[i][1], rest, new))
    return (kind, tuple(pairs))


def _near(r: Recipe) -> st.SearchStrategy[Recipe]:
    """Values close to ``r``'s: the change a fingerprint that looks too little misses."""
    kind = r[0]
    options: list[Recipe] = []
    if kind in ("list", "tuple", "dict", "odict"):
        items = r[1]
        if len(items) > 1:
            options.append((kind, (*items[1:], items[0])))  # the same items, another order
        options.append((kind, items[:-1]))
        other = {"list": "tuple", "tuple": "list", "dict": "odict", "odict": "dict"}[kind]
        options.append((other, items))
    elif kind == "box":
        options += [("box", r[1], r[2], () if r[3] else (("none",),)), ("box", r[2], r[1], r[3])]
    elif kind == "masked":
        data, mask, dtype = r[1], r[2], r[3]
        flipped = tuple(not m for m in mask) if mask else (True,) + (False,) * (len(data) - 1)
        options += [
            ("masked", data, flipped, dtype),
            ("masked", data, None if mask else (False,) * len(data), dtype),
        ]
        options.append(("masked", data, mask, "f8" if dtype == "i8" else "i8"))
        options.append(("array", data, dtype))
    elif kind == "datetime":
        fields, tz, fold = r[1], r[2], r[3]
        options.append(("datetime", fields, tz, 1 - fold))
        options += [
            ("datetime", fields, z, fold)
            for z in (
                None,
                ("fixed", 60, None),
                ("fixed", 60, "CET"),
                ("zone", "Europe/Paris"),
                ("zone", "UTC"),
            )
        ]
    elif kind == "tagged":
        options += [("tagged", r[1], ()), ("tagged", r[1], (("p", "zz"),)), ("str", r[1])]
    elif kind == "array":
        options += [("array", r[1], "f8" if r[2] != "f8" else "i8"), ("array", r[1][:-1], r[2])]
    elif kind == "int":
        options += [("int", r[1] + 1), ("float", float(r[1]).hex()), ("bool", bool(r[1]))]
    elif kind in ("str", "bytes"):
        other = ("bytes", r[1].encode()) if kind == "str" else ("str", r[1].decode("latin-1"))
        options += [(kind, r[1] + r[1][:1]), other]
    elif kind == "set":
        options.append(("set", r[1] | {"new"}))
    options = [o for o in options if o != r]
    return st.one_of(LEAVES, *[st.just(o) for o in options])


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Recipe, Recipe]:
    """A recipe, and the same recipe changed at one place, often deep inside."""
    r = draw(RECIPES)
    path = draw(st.sampled_from(_paths(r)))
    inner = r
    for i in path:
        inner = inner[1][i] if inner[0] in ("list", "tuple") else inner[1][i][1]
    return r, _replace(r, path, draw(_near(inner)))


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(RECIPES)
def test_equal_values_share_a_fingerprint(r: Recipe) -> None:
    assert _fp(r) == _fp(r)  # two separate builds: equal values, distinct objects


@SETTINGS
@given(mutated())
def test_values_that_differ_anywhere_never_share_a_fingerprint(pair: tuple[Recipe, Recipe]) -> None:
    a, b = pair
    assert (_fp(a) == _fp(b)) == (a == b)


@SETTINGS
@given(RECIPES, RECIPES)
def test_unrelated_values_share_a_fingerprint_only_when_equal(a: Recipe, b: Recipe) -> None:
    assert (_fp(a) == _fp(b)) == (a == b)


def test_the_recipes_reach_ten_levels_and_every_kind() -> None:
    def depth(r: Recipe) -> int:
        kind = r[0]
        if kind in ("list", "tuple"):
            return 1 + max(depth(x) for x in r[1])
        if kind in ("dict", "odict"):
            return 1 + max(depth(v) for _, v in r[1])
        if kind == "box":
            return 1 + max(depth(x) for x in (r[1], r[2], *r[3]))
        return 0

    seen_depths: set[int] = set()
    kinds: set[str] = set()

    @settings(max_examples=400, deadline=None, database=None)
    @given(RECIPES)
    def collect(r: Recipe) -> None:
        seen_depths.add(depth(r))

        def walk(x: Recipe) -> None:
            kinds.add(x[0])
            if x[0] in ("list", "tuple"):
                for y in x[1]:
                    walk(y)
            elif x[0] in ("dict", "odict"):
                for _, y in x[1]:
                    walk(y)
            elif x[0] == "box":
                for y in (x[1], x[2], *x[3]):
                    walk(y)

        walk(r)

    collect()
    assert 10 in seen_depths
    assert {"masked", "datetime", "odict", "tagged", "box", "set", "array"} <= kinds
