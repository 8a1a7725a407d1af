"""Results kept in Ray's object store between consecutive Ray stages.

The driver routes handles (:class:`Kept`), not values, when a Ray stage feeds another
Ray stage that fusion keeps apart (here: a different worker count); values come to the
driver only where they leave Ray. One local Ray instance for the module
(``ray_instance``).
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
import stagefns as f
from raycluster import have_ray

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not have_ray(), reason="needs Ray: pip install -e '.[ray]'"),
]

MiB = 1 << 20


@pytest.fixture(scope="module")
def prompt_frees() -> Iterator[None]:
    """Ray's raylet frees released objects in batches, once a second by default: every
    50 ms instead, so that its object store stats follow what is released."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("RAY_free_objects_period_milliseconds", "50")
        yield


@pytest.fixture(autouse=True)
def ray(prompt_frees, ray_instance):  # type: ignore[no-untyped-def]
    return ray_instance


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], int]]:
    """Every task the driver sends a Ray actor: its units' types and its bytes."""
    from conveyor.executors.ray import pool

    seen: list[tuple[list[str], int]] = []
    encode = pool.encode_task

    def spy(task_id: int, units: list[Any]) -> tuple[bytes, list[Any]]:
        data, refs = encode(task_id, units)
        seen.append(([type(u).__name__ for u in units], len(data)))
        return data, refs

    dumps = pool.dumps

    def plain(obj: Any, registry: Any) -> Any:  # tasks to stages no handle reaches
        data, pinned = dumps(obj, registry)
        seen.append(([type(u).__name__ for u in obj[1]], len(data)))
        return data, pinned

    monkeypatch.setattr(pool, "encode_task", spy)
    monkeypatch.setattr(pool, "dumps", plain)
    return seen


@pytest.fixture
def budgets(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The kept-bytes accounting of every stage that keeps its results."""
    from conveyor.executors.ray import pool

    made: list[Any] = []

    class Recorded(pool.KeptBytes):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pool, "KeptBytes", Recorded)
    return made


def test_large_payloads_go_from_ray_stage_to_ray_stage_as_handles(
    ray: Any, sent: list[tuple[list[str], int]], budgets: list[Any]
) -> None:
    pipe = cv.Pipeline(
        "handles",
        [
            cv.stage(f.big_array, executor="ray", workers=2),
            cv.stage(f.array_first, executor="ray"),  # another pool: not fused
        ],
    )
    run = pipe.run(range(24))
    assert sorted(run.results) == [float(i) for i in range(24)]  # each once, right value
    kept = [(types, n) for types, n in sent if "Kept" in types]
    assert {t for types, _ in kept for t in types} == {"Kept"}  # stage 2 got handles only
    assert sum(len(types) for types, _ in kept) == 24
    assert max(n for _, n in kept) < 4096  # a few hundred bytes per task, not 4 MiB
    # no capacity_bytes: the producer's cap is a quarter of the object store
    [budget] = budgets
    assert budget.cap == int(ray.cluster_resources()["object_store_memory"] * 0.25)
    assert budget.statistics().held == 0  # every object freed once consumed


def test_values_reach_the_driver_where_they_leave_ray(sent: list[tuple[list[str], int]]) -> None:
    # a thread stage after a Ray stage gets values; so does the run's output
    pipe = cv.Pipeline(
        "leave",
        [
            cv.stage(f.big_array, executor="ray"),
            cv.stage(f.type_name, executor="threads"),
        ],
    )
    assert pipe.run(range(5)).results == ["ndarray"] * 5
    out = cv.Pipeline("out", [cv.stage(f.inc, executor="ray")]).run(range(5))
    assert sorted(out.results) == [1, 2, 3, 4, 5]  # unordered: tasks in flight may cross
    assert not any("Kept" in types for types, _ in sent)


def test_results_come_back_as_values_when_switched_off(
    monkeypatch: pytest.MonkeyPatch, sent: list[tuple[list[str], int]]
) -> None:
    monkeypatch.setenv("CONVEYOR_RAY_OBJECT_STORE", "0")
    pipe = cv.Pipeline(
        "off",
        [cv.stage(f.big_array, executor="ray", workers=2), cv.stage(f.array_first, executor="ray")],
    )
    assert sorted(pipe.run(range(4)).results) == [0.0, 1.0, 2.0, 3.0]
    assert not any("Kept" in types for types, _ in sent)
    assert max(n for _, n in sent) > 4 * MiB  # the arrays went through the driver


def test_a_dead_lettered_item_is_recorded_with_its_value_not_a_handle() -> None:
    class DeadLetters(cv.Instrument):
        def __init__(self) -> None:
            self.rows: list[tuple[str, Any, Any]] = []

        def dead_lettered(self, stage, key, value, error, traceback, t_ns):  # type: ignore[no-untyped-def]
            self.rows.append((stage, key, value))

    dead = DeadLetters()
    pipe = cv.Pipeline(
        "dead",
        [
            cv.stage(f.big_array, executor="ray", workers=2),
            cv.stage(f.array_first_fail_on_3, executor="ray", on_error="skip"),
        ],
    )
    run = pipe.run(range(6), instruments=[dead])
    assert sorted(run.results) == [0.0, 1.0, 2.0, 4.0, 5.0]
    [(stage, key, value)] = dead.rows
    assert (stage, key) == ("array_first_fail_on_3", (3,))
    assert type(value).__name__ == "ndarray" and value.shape == (1 << 19,) and value[0] == 3


@pytest.mark.parametrize("fn", [f.lock_on_5, f.lock_or_array])  # small results, kept ones
def test_a_result_that_cannot_be_kept_fails_only_its_item(fn: Any) -> None:
    pipe = cv.Pipeline(
        "unpicklable",
        [
            cv.stage(fn, executor="ray", workers=2, on_error="skip"),
            cv.stage(f.type_name, executor="ray"),
        ],
    )
    run = pipe.run(range(10))
    assert len(run.results) == 9 and set(run.results) <= {"int", "ndarray"}
    assert run.statistics().stages[fn.__name__].dead_lettered == 1


def test_small_results_come_back_as_values_between_ray_stages(
    sent: list[tuple[list[str], int]],
) -> None:
    # under 100 KB a task's results would be inlined to the driver by Ray anyway
    stages = [cv.stage(f.inc, executor="ray", workers=2), cv.stage(f.double, executor="ray")]
    pipe = cv.Pipeline("small", stages)
    assert sorted(pipe.run(range(100)).results) == [2 * (x + 1) for x in range(100)]
    assert not any("Kept" in types for types, _ in sent)


def lost_ref(ray: Any) -> Any:
    """A ref to an object that is lost: its owner (an actor) was killed."""
    owner = ray.remote(f.RefOwner).remote()
    [lost] = ray.get(owner.put.remote([0]))
    ray.kill(owner)
    return lost


class Ledger(cv.Instrument):
    """Items read, each root's terminal state, results made again, failures."""

    def __init__(self) -> None:
        self.read = 0
        self.states: collections.Counter[str] = collections.Counter()
        self.remade: list[tuple[str, int, str]] = []
        self.errors: list[str] = []

    def items_read(self, keys: Any, t_ns: int) -> None:
        self.read += len(keys)

    def roots_finished(self, roots: Any, state: str, t_ns: int) -> None:
        self.states[state] += len(roots)

    def results_remade(self, stage: str, count: int, lost_on: str, t_ns: int) -> None:
        self.remade.append((stage, count, lost_on))

    def unit_failed(self, stage, key, error, traceback, attempt, retrying, t_ns):  # type: ignore[no-untyped-def]
        self.errors.append(f"{stage} {attempt} {retrying} {error}")


def lose_first(monkeypatch: pytest.MonkeyPatch, lost: Any, *stages: str) -> list[int]:
    """The first kept outputs of each of ``stages`` are swapped for ``lost`` as they are
    made (and, for a later stage, the upstream objects its task read): the number of
    results swapped, by stage."""
    from conveyor.executors.ray import pool

    make, swapped = pool.handles, []

    def handles(outputs: Any, shapes: Any) -> list[Any]:
        if outputs.stage in stages[len(swapped) :][:1]:
            swapped.append(sum(1 for s in shapes if s is not None))
            outputs.ref = lost
            for ref, _ in outputs.lineage.upstream:  # alive: the task's units hold them
                if ref() is not None:
                    ref().ref = lost
        return make(outputs, shapes)

    monkeypatch.setattr(pool, "handles", handles)
    return swapped


def test_a_lost_object_is_made_again_and_each_item_reaches_the_output_once(
    ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first task's outputs are swapped for an object whose owner is then killed:
    # the consumer finds it lost, the driver runs the producer's task again, and the
    # items go on, with no retry policy and nothing skipped.
    swapped = lose_first(monkeypatch, lost_ref(ray), "big_array")
    ledger = Ledger()
    pipe = cv.Pipeline(
        "lost",
        [
            cv.stage(f.big_array, executor="ray", workers=2),
            cv.stage(f.array_first, executor="ray"),
        ],
    )
    run = pipe.run(range(12), instruments=[ledger])
    [n] = swapped
    assert sorted(run.results) == [float(i) for i in range(12)]  # each once
    assert ledger.read == 12 and ledger.states == {"done": 12}  # the ledger balances
    stats = run.statistics().stages
    assert stats["big_array"].remade == n and stats["big_array"].items_out == 12
    assert stats["array_first"].errors == stats["array_first"].dead_lettered == 0
    node = f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()[:8]}"
    assert ledger.remade == [("big_array", n, node)] and not ledger.errors
    assert f"{n} results lost with node {node} were made again" in run.report().render(width=300)


def test_lost_objects_two_stages_deep_are_made_again_up_the_chain(
    ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # plus_one's first outputs and the big_array objects its task read are lost: the
    # consumer's loss makes plus_one run again, whose inputs are made again first
    swapped = lose_first(monkeypatch, lost_ref(ray), "array_plus_one")
    ledger = Ledger()
    pipe = cv.Pipeline(
        "deep",
        [
            cv.stage(f.big_array, executor="ray", workers=2),
            cv.stage(f.array_plus_one, executor="ray"),
            cv.stage(f.array_first, executor="ray", workers=2),
        ],
    )
    run = pipe.run(range(10), instruments=[ledger])
    assert swapped and sorted(run.results) == [float(i + 1) for i in range(10)]
    assert ledger.read == 10 and ledger.states == {"done": 10}
    stats = run.statistics().stages
    assert stats["array_plus_one"].remade == swapped[0]
    assert stats["big_array"].remade >= 1  # lost (or freed since), made again first
    assert {s for s, _, _ in ledger.remade} == {"big_array", "array_plus_one"}
    assert not ledger.errors


def test_a_result_lost_again_each_time_it_is_made_fails_under_the_policy(
    ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every re-made object is lost too: past the producer's attempts (retry=1: two),
    # the items are dead-lettered by the consumer's policy, named, and the rest arrive
    from conveyor.executors.ray import remaking

    lost = lost_ref(ray)
    swapped = lose_first(monkeypatch, lost, "big_array")
    wait = remaking.Rerun.wait

    def lost_again(self: Any, stop: Any) -> Any:
        return lost, wait(self, stop)[1]

    monkeypatch.setattr(remaking.Rerun, "wait", lost_again)
    ledger = Ledger()
    pipe = cv.Pipeline(
        "lost-again",
        [
            cv.stage(f.big_array, executor="ray", workers=2, retry=1),
            cv.stage(f.array_first, executor="ray", retry=1, on_error="skip"),
        ],
    )
    run = pipe.run(range(12), instruments=[ledger])
    [n] = swapped
    stats = run.statistics().stages
    assert stats["array_first"].dead_lettered == n and len(run.results) == 12 - n
    assert len(set(run.results)) == len(run.results)  # none twice
    assert ledger.read == 12 and ledger.states == {"done": 12 - n, "dead_lettered": n}
    assert stats["big_array"].remade == 2 * n  # made again twice (its attempts), lost each time
    assert len(ledger.errors) == 2 * n  # the consumer's two attempts per item
    assert all("stage 'big_array'" in e and "more retry attempts" in e for e in ledger.errors)


def plasma_bytes(ray: Any) -> int:
    """The bytes in the object stores, as Ray's own memory summary says."""
    from ray._private.internal_api import memory_summary

    text = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    m = re.search(r"Plasma memory usage (\d+) MiB", text)
    return int(m.group(1)) * MiB if m else 0


@pytest.mark.slow
def test_a_fast_producer_of_large_payloads_waits_for_a_slow_consumer(
    ray: Any, budgets: list[Any]
) -> None:
    cap = 24 * MiB  # six 4 MiB arrays
    pipe = cv.Pipeline(
        "bytes",
        [
            cv.stage(f.big_array, executor="ray", workers=2),
            cv.stage(f.slow_array_first, executor="ray", capacity_bytes=cap),
        ],
        capacity=64,  # items alone would let 64 arrays (256 MiB) pile up
    )
    before = plasma_bytes(ray)
    seen: collections.Counter[float] = collections.Counter()
    store = []
    with pipe.stream(range(60)) as run:
        for r in run:
            seen[r] += 1
            store.append(plasma_bytes(ray) - before)
    assert seen == {float(i): 1 for i in range(60)}  # every item once
    [budget] = budgets
    stats = budget.statistics()
    assert stats.cap == cap and 4 * MiB < stats.peak <= cap
    assert stats.waits > 0 and stats.held == 0  # the producer waited; all was freed
    # Ray's view: never much more than the cap (the consumer's task in flight aside)
    assert max(store) <= cap + 8 * MiB


def test_a_cached_stage_between_ray_stages_fingerprints_values_in_its_actors(
    tmp_path: Path, sent: list[tuple[list[str], int]]
) -> None:
    # the cached middle stage gets handles, and its actors fingerprint the values
    log = tmp_path / "calls.log"
    first_ = functools.partial(f.logged_array_first, str(log))
    pipe = cv.Pipeline(
        "cached",
        [
            cv.stage(f.big_array, executor="ray"),
            cv.stage(first_, name="first", executor="ray", cache=str(tmp_path / "c")),
        ],
    )
    first = pipe.run(range(6), ordered=True)
    second = pipe.run(range(6), ordered=True)
    assert first.results == second.results == [float(x) for x in range(6)]
    assert sorted(f.calls(str(log))) == list(range(6))  # each value once
    assert second.statistics().stages["first"].cache_hits == 6
    assert any("Kept" in types for types, _ in sent)


def test_ray_workers_are_recorded_on_their_node(ray: Any) -> None:
    # one local node: every actor of the stage on it, the report and the chart say so
    from conveyor.observe.gantt import gantt_svg

    run = cv.Pipeline("placed", [cv.stage(f.inc, executor="ray", workers=2)]).run(range(50))
    rec = run.recording
    assert rec is not None
    node = f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()[:8]}"
    places = rec.places["inc"]
    assert places and set(places.values()) == {node}
    assert set(rec.stages["inc"].detail.worker) <= set(places)
    assert f"nodes of inc: {node}: actor" in run.report().render(width=300)
    assert f"{node} · actor" in gantt_svg(rec)


def test_a_fan_out_and_a_join_of_ray_stages_pass_handles(
    sent: list[tuple[list[str], int]],
) -> None:
    # the split's arrays go to both branches as handles; the join's dicts hold handles
    split = cv.stage(f.big_array, name="split", executor="ray")
    left = cv.stage(f.array_plus_one, name="left", executor="ray")
    right = cv.stage(f.array_negate, name="right", executor="ray")
    both = cv.Stage(f.joined_first, name="both", join=True, executor="ray")
    pipe = cv.Pipeline(
        "diamond",
        [split, left, right, both],
        edges=[(split, left), (split, right), ("left", "both"), ("right", "both")],
    )
    run = pipe.run(range(8))
    assert sorted(run.results) == [(x + 1.0, -float(x)) for x in range(8)]
    kinds = {t for types, _ in sent for t in types}
    assert {"Kept", "dict"} <= kinds  # handles to the branches, dicts of them to the join
    assert max(n for types, n in sent if "int" not in types) < 4096


def test_fused_ray_stages_hand_nothing_off(sent: list[tuple[list[str], int]]) -> None:
    # the same pool: fusion runs both in one actor, results come back as values
    pipe = cv.Pipeline(
        "fused",
        [cv.stage(f.big_array, executor="ray"), cv.stage(f.array_first, executor="ray")],
    )
    assert pipe.fused == (("big_array", "array_first"),)
    assert sorted(pipe.run(range(4)).results) == [0.0, 1.0, 2.0, 3.0]
    assert not any("Kept" in types for types, _ in sent)
