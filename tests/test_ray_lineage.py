"""Lineage without Ray: how lost kept results are made again (``executors/ray/lineage``).

Fake makers stand for the producer stages' executors: each re-run returns a new ref,
or says which of its inputs were lost (as an actor does, with LostResultError)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from conveyor.executors.base import Failure, Outcome
from conveyor.executors.ray.handles import LostResultError, Outputs
from conveyor.executors.ray.lineage import CannotRemake, Lineage, lost_error, remake

LOST = "lost"


class Maker:
    """A producer stage: re-runs answer with a fresh ref, or the inputs that are lost."""

    def __init__(self, name: str, remakes: int = 1, lose: bool = False) -> None:
        self.name, self.remakes, self.lose = name, remakes, lose
        self.runs: list[list[Any]] = []

    def rerun(self, data: bytes, refs: list[Any], stop: threading.Event) -> tuple[Any, Outcome]:
        self.runs.append(list(refs))
        lost = tuple(k for k, r in enumerate(refs) if r == LOST)
        if lost:
            error = LostResultError("an input is lost")
            error.lost = lost
            return None, Outcome(-1, 0, [], [0], [Failure(0, error)])
        ref = LOST if self.lose else f"{self.name}-{len(self.runs)}"
        return ref, Outcome(-1, 0, [1, [1, 1]], [0, 1, 2])


def made(maker: Maker, upstream: list[Outputs], ref: Any = LOST) -> Outputs:
    """An object of ``maker``'s task of two units (a result, then two children)."""
    return Outputs(ref, 3, maker.name, Lineage(maker, b"task", upstream, [1, [1, 1]]), "node-b")


def test_a_lost_object_is_made_again_from_values_the_driver_held() -> None:
    a = Maker("a")
    o = made(a, [])
    assert remake(o, threading.Event()) == [("a", "node-b", 3)]  # three results
    assert o.ref == "a-1" and a.runs == [[]] and o.remade == 1


def test_a_lost_input_of_the_re_run_is_made_again_first() -> None:
    a, b = Maker("a"), Maker("b")
    up = made(a, [])  # alive, but lost
    o = made(b, [up])
    done = remake(o, threading.Event())
    assert done == [("a", "node-b", 3), ("b", "node-b", 3)]
    assert b.runs == [[LOST], ["a-1"]] and o.ref == "b-2"


def test_a_freed_input_is_made_again_from_its_lineage() -> None:
    a, b = Maker("a"), Maker("b")
    up = made(a, [], ref="a-0")
    o = made(b, [up])
    del up  # consumed: freed, only its lineage is left
    assert remake(o, threading.Event()) == [("a", "", 3), ("b", "node-b", 3)]
    assert b.runs == [["a-1"]]


def test_a_lineage_holds_no_upstream_object_alive() -> None:
    import gc
    import weakref

    up = made(Maker("a"), [], ref="a-0")
    gone = weakref.ref(up)
    o = made(Maker("b"), [up])
    del up
    gc.collect()
    assert gone() is None and o.lineage.upstream[0][1] is not None  # the recipe stays


def test_an_object_is_made_again_at_most_its_producer_s_attempts() -> None:
    a = Maker("a", remakes=2, lose=True)  # each re-made object is lost again
    o = made(a, [])
    stop = threading.Event()
    remake(o, stop)
    remake(o, stop)
    with pytest.raises(CannotRemake, match=r"stage 'a' made it again 2 time"):
        remake(o, stop)
    assert len(a.runs) == 2


def test_a_re_run_whose_inputs_stay_lost_gives_up() -> None:
    a, b = Maker("a", lose=True), Maker("b", remakes=3)
    o = made(b, [made(a, [])])
    with pytest.raises(CannotRemake, match="stage 'a' made it again 1 time"):
        remake(o, threading.Event())


def test_a_re_run_that_gives_other_results_fails() -> None:
    class Shrinks(Maker):
        def rerun(self, data: bytes, refs: list[Any], stop: threading.Event) -> Any:
            return "x", Outcome(-1, 0, [1, [1]], [0, 1, 2])  # one child, not two

    with pytest.raises(CannotRemake, match="another number of results"):
        remake(made(Shrinks("a"), []), threading.Event())


def test_the_error_past_the_bound_names_the_stages_and_the_fixes() -> None:
    error = lost_error("c", ["b", "b"], "stage 'b' made it again 1 time(s)")
    text = str(error)
    assert "stage 'c'" in text and "stage 'b' this item needs" in text
    assert "more retry attempts" in text and "on_error='skip'" in text
    assert "CONVEYOR_RAY_OBJECT_STORE=0" in text
