"""The conformance suite: the same assertions against every executor."""

from __future__ import annotations

import collections
import multiprocessing
import time

import pytest

import conveyor as cv
import stagefns as f
from conftest import alive, conveyor_threads, wait_until


def chain(executor: str, *fns, workers: int = 2, **pipe_options):  # type: ignore[no-untyped-def]
    stages = [cv.stage(fn, executor=executor, workers=workers) for fn in fns]
    return cv.Pipeline("test", stages, **pipe_options)


def test_every_item_arrives_exactly_once_with_correct_values(executor: str) -> None:
    run = chain(executor, f.inc, f.double, f.jitter).run(range(500))
    assert collections.Counter(run.results) == collections.Counter(2 * (x + 1) for x in range(500))
    assert run.state == "succeeded"
    stats = run.statistics()
    assert stats.items_read == 500 and stats.items_emitted == 500
    for s in stats.stages.values():
        assert (s.items_in, s.items_out, s.errors, s.busy_workers) == (500, 500, 0, 0)
        assert s.queue.depth == 0 and s.queue.items_in == s.queue.items_out == 500


def test_ordered_results_follow_the_source_order(executor: str) -> None:
    run = chain(executor, f.jitter, f.inc, workers=3).run(range(300), ordered=True)
    assert run.results == [x + 1 for x in range(300)]


def test_results_stream_before_the_source_is_exhausted(executor: str) -> None:
    read = []

    def source():  # type: ignore[no-untyped-def]
        for i in range(10_000):
            read.append(i)
            yield i

    with chain(executor, f.inc, capacity=8).stream(source()) as run:
        first = next(run)
        assert first >= 1
        assert len(read) < 10_000


def test_fan_out_and_fan_in(executor: str) -> None:
    split = cv.stage(f.inc, name="split", executor=executor)
    left = cv.stage(f.double, name="left", executor=executor, workers=2)
    right = cv.stage(f.negate, name="right", executor=executor, workers=2)
    merge = cv.stage(f.square, name="merge", executor=executor)
    pipe = cv.Pipeline(
        "diamond",
        [split, left, right, merge],
        edges=[(split, left), (split, right), ("left", "merge"), ("right", "merge")],
    )
    run = pipe.run(range(200))
    expected = [(2 * (x + 1)) ** 2 for x in range(200)] + [(x + 1) ** 2 for x in range(200)]
    assert collections.Counter(run.results) == collections.Counter(expected)
    assert run.statistics().stages["merge"].items_in == 400


def test_fan_out_to_two_sinks_yields_both(executor: str) -> None:
    a = cv.stage(f.inc, name="a", executor=executor)
    b = cv.stage(f.double, name="b", executor=executor)
    c = cv.stage(f.negate, name="c", executor=executor)
    pipe = cv.Pipeline("two-sinks", [a, b, c], edges=[(a, b), (a, c)], ordered=True)
    out = pipe.run(range(50)).results
    assert sorted(out) == sorted([2 * (x + 1) for x in range(50)] + [-(x + 1) for x in range(50)])
    # ordered: all results of item i come before those of item i + 1
    assert out[:2] in ([2, -1], [-1, 2])


def test_flat_map_expands_and_drops(executor: str) -> None:
    pipe = cv.Pipeline("flat", [cv.stage(f.explode, kind="flat_map", executor=executor, workers=2)])
    out = pipe.run(range(100), ordered=True).results
    assert out == [x for x in range(100) for _ in range(x % 4)]


def test_flat_map_that_returns_no_iterable_fails_clearly(executor: str) -> None:
    pipe = cv.Pipeline("bad", [cv.stage(f.not_iterable, kind="flat_map", executor=executor)])
    with pytest.raises(cv.StageError, match="must return an iterable") as info:
        pipe.run(range(3))
    assert info.value.stage == "not_iterable"


def test_batch_stage_gets_lists_of_size_n(executor: str) -> None:
    pipe = cv.Pipeline("b", [cv.stage(f.batch_len, kind="batch", size=8, executor=executor)])
    out = pipe.run(range(50)).results
    assert sorted(out) == [2] + [8] * 6


def test_batch_split_gives_items_back_under_their_keys(executor: str) -> None:
    pipe = cv.Pipeline(
        "b",
        [
            cv.stage(f.batch_square, kind="batch", size=16, split=True, executor=executor),
            cv.stage(f.inc, executor=executor),
        ],
    )
    assert pipe.run(range(100), ordered=True).results == [x * x + 1 for x in range(100)]


def test_batch_split_with_wrong_length_fails_clearly(executor: str) -> None:
    pipe = cv.Pipeline(
        "b", [cv.stage(f.batch_wrong_length, kind="batch", size=4, split=True, executor=executor)]
    )
    with pytest.raises(cv.StageError, match="4 expected, got 3"):
        pipe.run(range(8))


def test_collect_is_a_barrier_over_every_item(executor: str) -> None:
    pipe = cv.Pipeline(
        "c",
        [
            cv.stage(f.jitter, executor=executor, workers=2),
            cv.stage(f.total, kind="collect", executor=executor),
            cv.stage(f.inc, executor=executor),
        ],
    )
    assert pipe.run(range(100)).results == [sum(range(100)) + 1]


def test_queues_never_exceed_their_bound_with_a_slow_consumer(executor: str) -> None:
    read = 0

    def source():  # type: ignore[no-untyped-def]
        nonlocal read
        for i in range(400):
            read += 1
            yield i

    # Three pools and their queues (fused, the items would never queue between them).
    pipe = cv.Pipeline(
        "bounded",
        [
            cv.stage(f.inc, executor=executor, workers=2),
            cv.stage(f.explode, kind="flat_map", executor=executor, workers=2),
            cv.stage(f.double, executor=executor, workers=2),
        ],
        capacity=8,
        fuse=False,
    )
    taken = 0
    worst = 0
    with pipe.stream(source()) as run:
        for _ in run:
            taken += 1
            worst = max(worst, read - taken)
            time.sleep(0.0005)
        stats = run.statistics()
    for s in stats.stages.values():
        assert s.queue.bound == 8
        assert 0 < s.queue.peak_depth <= 8
    # items held anywhere: at most the stages' queues plus the output buffer
    assert worst <= 3 * 8 + 8, worst


def test_a_stage_that_raises_stops_the_run_and_names_stage_and_item(executor: str) -> None:
    pipe = chain(executor, f.slow, f.fail_on_13, workers=2)
    started = time.monotonic()
    with pytest.raises(cv.StageError) as info:
        pipe.run(range(10_000))
    assert time.monotonic() - started < 30  # promptly: no hang, on a loaded machine too
    err = info.value
    assert err.stage == "fail_on_13" and err.key == (13,)
    assert "fail_on_13" in str(err) and "item 13" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert "thirteen is unlucky" in str(err.__cause__)
    if executor == "processes":
        remote = err.__cause__.__cause__
        assert isinstance(remote, cv.RemoteTraceback)
        assert "fail_on_13" in remote.tb and "ValueError" in remote.tb


def test_an_unpicklable_exception_still_reports_the_stage(executor: str) -> None:
    pipe = chain(executor, f.raise_unpicklable)
    with pytest.raises(cv.StageError, match=r"raise_unpicklable.*Unpicklable: \d") as info:
        pipe.run(range(3))
    # From a process worker too it comes back as (a subclass of) its own class.
    assert isinstance(info.value.__cause__, f.Unpicklable)
    assert str(info.value.__cause__) == str(info.value.key[0])


def test_closing_early_stops_every_worker(executor: str) -> None:
    pipe = chain(executor, f.slow, f.inc, workers=2, fuse=False)  # two pools to stop
    run = pipe.stream(range(100_000))
    assert next(run) >= 1
    pids = run.worker_pids()
    assert (len(pids) == 4) if executor == "processes" else not pids
    run.close()
    assert run.state == "cancelled"
    assert wait_until(lambda: not any(alive(p) for p in pids))
    assert wait_until(lambda: not multiprocessing.active_children())
    assert wait_until(lambda: not conveyor_threads())
    with pytest.raises(StopIteration):
        next(run)


def test_keyboard_interrupt_cancels_the_run(executor: str) -> None:
    def source():  # type: ignore[no-untyped-def]
        yield from range(50)
        raise KeyboardInterrupt

    run = chain(executor, f.slow, f.inc).stream(source())
    with pytest.raises(KeyboardInterrupt):
        for _ in run:
            pass
    assert run.state == "cancelled"


def test_keyboard_interrupt_while_starting_cancels_the_run(executor: str) -> None:
    class CtrlCAtStart(cv.Instrument):
        def run_started(self, run: cv.RunInfo) -> None:  # workers are started by now
            raise KeyboardInterrupt

    run = chain(executor, f.inc).stream(range(10), instruments=[CtrlCAtStart()])
    with pytest.raises(KeyboardInterrupt):
        run.wait()
    assert run.state == "cancelled" and run.worker_pids() == []


def test_source_errors_name_the_source(executor: str) -> None:
    def source():  # type: ignore[no-untyped-def]
        yield 1
        raise OSError("disk on fire")

    with pytest.raises(cv.StageError, match="source raised OSError") as info:
        chain(executor, f.inc).run(source())
    assert info.value.stage == "<source>"


def test_async_stage_functions(executor: str) -> None:
    pipe = cv.Pipeline(
        "async", [cv.stage(f.async_double, executor=executor, workers=2, concurrency=8)]
    )
    assert pipe.run(range(64), ordered=True).results == [2 * x for x in range(64)]


@pytest.mark.parametrize("executor", ["sync", "threads"])
def test_async_concurrency_limit(executor: str) -> None:
    probe = f.ConcurrencyProbe()
    pipe = cv.Pipeline("async", [cv.stage(probe, name="probe", executor=executor, concurrency=4)])
    assert sorted(pipe.run(range(40)).results) == list(range(40))
    assert 2 <= probe.peak <= 4


def test_numpy_arrays_cross_every_executor(executor: str) -> None:
    np = pytest.importorskip("numpy")
    arrays = [np.full((512, 1024), float(i)) for i in range(6)]  # 4 MiB each
    pipe = chain(executor, f.array_plus_one, f.array_touch, workers=2)
    out = sorted(pipe.run(arrays).results, key=lambda a: float(a[1, 1]))
    for i, a in enumerate(out):
        assert a.shape == (512, 1024) and a[1, 1] == i + 1 and a[0, 0] == i + 2
    assert all(a[0, 0] == i for i, a in enumerate(arrays))  # inputs untouched


def test_sync_runs_are_deterministic() -> None:
    pipe = chain("sync", f.explode, f.inc, workers=3)
    pipe = cv.Pipeline(
        "d",
        [
            cv.stage(f.explode, kind="flat_map", executor="sync", workers=3),
            cv.stage(f.inc, executor="sync"),
        ],
    )
    assert pipe.run(range(200)).results == pipe.run(range(200)).results


def test_resize_grows_and_shrinks_a_stage_while_it_runs(executor: str) -> None:
    pipe = cv.Pipeline("grow", [cv.stage(f.slow, executor=executor, workers=1)])
    seen = []
    with pipe.stream(range(300)) as run:
        for i, x in enumerate(run):
            seen.append(x)
            if i == 20:
                run.resize("slow", 3)
                assert run.statistics().stages["slow"].workers == 3
                if executor == "processes":
                    assert len(run.worker_pids()) == 3
                elif executor == "threads":
                    assert len(conveyor_threads()) == 3
            if i == 150:
                run.resize("slow", 1)
                # the workers told to stop finish their task, then exit (a deadline for a
                # machine under load: an interpreter's exit can take seconds there)
                if executor == "processes":
                    assert wait_until(lambda: len(run.worker_pids()) == 1, 60)
                elif executor == "threads":
                    assert wait_until(lambda: len(conveyor_threads()) == 1, 60)
    assert sorted(seen) == list(range(300))
    with pytest.raises(cv.PipelineError, match="no such stage"):
        run.resize("nope", 2)
    with pytest.raises(cv.PipelineError, match="give at least 1"):
        run.resize("slow", 0)


def test_an_instrument_can_resize_through_the_run_control(executor: str) -> None:
    class GrowOnce(cv.Instrument):
        def run_started(self, run: cv.RunInfo) -> None:
            self.control = run.control
            self.resized: list[tuple[str, int]] = []

        def task_finished(self, stage, task, worker, keys, starts_ns, ends_ns, error):  # type: ignore[no-untyped-def]
            if not self.resized:
                self.control.resize(stage, 2)  # type: ignore[union-attr]

        def stage_resized(self, stage: str, workers: int, t_ns: int) -> None:
            self.resized.append((stage, workers))

    grow = GrowOnce()
    pipe = cv.Pipeline("grow", [cv.stage(f.slow, executor=executor, workers=1)])
    run = pipe.run(range(100), instruments=[grow])
    assert sorted(run.results) == list(range(100))
    assert grow.resized == [("slow", 2)]
    assert run.statistics().stages["slow"].workers == 2


class Ledger(cv.Instrument):
    def __init__(self) -> None:
        self.states: dict[int, str] = {}

    def roots_finished(self, roots, state, t_ns):  # type: ignore[no-untyped-def]
        for r in roots:
            assert r not in self.states, f"root {r} finished twice"
            self.states[r] = state


def test_every_source_item_ends_in_exactly_one_terminal_state(executor: str) -> None:
    ledger = Ledger()
    pipe = cv.Pipeline(
        "ledger",
        [
            cv.stage(f.explode, kind="flat_map", executor=executor, workers=2),
            cv.stage(f.batch_len, kind="batch", size=4, executor=executor),
        ],
    )
    pipe.run(range(40), instruments=[ledger])
    assert sorted(ledger.states) == list(range(40))
    assert {r for r, st in ledger.states.items() if st == "filtered"} == {
        x for x in range(40) if x % 4 == 0
    }
    assert all(st == "done" for r, st in ledger.states.items() if r % 4)


def test_collect_gives_every_item_the_fate_of_the_merged_result(executor: str) -> None:
    ledger = Ledger()
    pipe = cv.Pipeline(
        "c",
        [
            cv.stage(f.evens_only, kind="flat_map", executor=executor),
            cv.stage(f.total, kind="collect", executor=executor),
        ],
    )
    assert pipe.run(range(30), instruments=[ledger]).results == [sum(range(0, 30, 2))]
    assert ledger.states == {r: ("filtered" if r % 2 else "done") for r in range(30)}
