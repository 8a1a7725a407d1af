"""Building stages and pipelines: every mistake is caught at build time, clearly."""

from __future__ import annotations

import functools
import re

import pytest

import conveyor as cv
import stagefns as f


def test_stage_decorator_bare_and_with_options() -> None:
    @cv.stage
    def a(x: int) -> int:
        return x

    @cv.stage(workers=3, executor="sync", name="bee")
    def b(x: int) -> int:
        return x

    assert isinstance(a, cv.Stage) and a.name == "a" and a.workers == 1 and a.executor == "threads"
    assert b.name == "bee" and b.workers == 3 and b(4) == 4  # still callable as a function


def test_plain_functions_become_map_stages() -> None:
    pipe = cv.Pipeline("p", [f.inc, f.double])
    assert pipe.order == ("inc", "double")
    assert pipe.run([1, 2], ordered=True).results == [4, 6]


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(cv.PipelineError, match="two stages are named 'inc'") as info:
        cv.Pipeline("p", [f.inc, f.inc])
    assert info.value.stage == "inc"
    assert "name='inc_2'" in str(info.value)


def test_cycles_are_rejected_and_shown() -> None:
    a, b, c = (cv.stage(fn) for fn in (f.inc, f.double, f.square))
    with pytest.raises(cv.PipelineError, match="cycle: inc -> double -> square -> inc"):
        cv.Pipeline("p", [a, b, c], edges=[(a, b), (b, c), (c, a)])
    with pytest.raises(cv.PipelineError, match="connects a stage to itself"):
        cv.Pipeline("p", [a], edges=[(a, a)])


def test_edges_must_name_known_stages() -> None:
    with pytest.raises(cv.PipelineError, match="names stage 'nope'"):
        cv.Pipeline("p", [f.inc], edges=[("inc", "nope")])


def test_non_callables_are_rejected() -> None:
    with pytest.raises(cv.PipelineError, match="is not callable"):
        cv.Stage(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["map", "flat_map", "batch", "collect"])
def test_arity_mismatch_is_rejected(kind: str) -> None:
    def two(a, b):  # type: ignore[no-untyped-def]
        return a

    size = 4 if kind == "batch" else None
    with pytest.raises(cv.PipelineError, match="exactly one required parameter") as info:
        cv.stage(two, kind=kind, size=size)  # type: ignore[arg-type]
    assert info.value.stage == "two"

    def none():  # type: ignore[no-untyped-def]
        return 1

    with pytest.raises(cv.PipelineError, match="exactly one"):
        cv.stage(none, kind=kind, size=size)  # type: ignore[arg-type]


def test_partial_and_defaults_are_accepted() -> None:
    def scale(x: int, factor: int) -> int:
        return x * factor

    def with_default(x: int, y: int = 2) -> int:
        return x + y

    s = cv.stage(functools.partial(scale, factor=3))
    assert cv.Pipeline("p", [s, with_default]).run([1], ordered=True).results == [5]


def test_functions_that_cannot_travel_are_rejected_for_processes() -> None:
    # lambdas and closures travel by value (tests/test_notebook_functions.py); a
    # closure over a value no pickler can send does not
    gen = (i for i in range(3))

    def local(x):  # type: ignore[no-untyped-def]
        return next(gen) + x

    with pytest.raises(cv.PipelineError, match="cannot be sent to a process worker") as info:
        cv.stage(local, executor="processes", name="local")
    assert "generator" in str(info.value)
    assert "executor='threads'" in str(info.value)
    cv.stage(local, executor="threads")  # fine on threads


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "reduce"}, "kind='reduce' is not one of"),
        ({"executor": "gpu"}, "executor='gpu' is not one of"),
        ({"workers": 0}, "workers=0"),
        ({"kind": "batch"}, "needs size"),
        ({"size": 3}, "only for kind='batch'"),
        ({"split": True}, "split=True is only for kind='batch'"),
        ({"kind": "collect", "workers": 2}, "workers=2 has no meaning"),
        ({"capacity": 0}, "capacity=0"),
        ({"concurrency": 0}, "concurrency=0"),
    ],
)
def test_bad_policies_are_rejected(options: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(cv.PipelineError, match=message):
        cv.stage(f.inc, **options)


def test_pipeline_level_errors() -> None:
    with pytest.raises(cv.PipelineError, match="no stages"):
        cv.Pipeline("p", [])
    with pytest.raises(cv.PipelineError, match="capacity=0"):
        cv.Pipeline("p", [f.inc], capacity=0)
    with pytest.raises(cv.PipelineError, match="was given no source"):
        cv.Pipeline("p", [f.inc]).run()
    with pytest.raises(cv.PipelineError, match="is not iterable"):
        cv.Pipeline("p", [f.inc]).run(5)  # type: ignore[arg-type]


def test_bound_source_and_callable_source() -> None:
    pipe = cv.Pipeline("p", [f.inc], source=lambda: range(3), ordered=True)
    assert pipe.run().results == [1, 2, 3]
    assert pipe.run(range(2)).results == [1, 2]


def test_errors_share_one_hierarchy() -> None:
    for exc in (cv.PipelineError, cv.StageError, cv.WorkerLostError, cv.RunError):
        assert issubclass(exc, cv.ConveyorError)
    assert issubclass(cv.WorkerLostError, cv.RunError)


def test_public_names_are_pinned() -> None:
    assert sorted(cv.__all__) == sorted(
        [
            "CacheError",
            "CacheWarning",
            "ConfigError",
            "ConveyorError",
            "FingerprintError",
            "GateFailed",
            "Instrument",
            "InstrumentError",
            "InstrumentWarning",
            "LifecycleError",
            "Metrics",
            "MissingTorchError",
            "ModelError",
            "ModelNotFoundError",
            "OutputError",
            "Pipeline",
            "PipelineChangedError",
            "PipelineError",
            "QueueStatistics",
            "Rebalancer",
            "Recorder",
            "Recording",
            "RecordingError",
            "RemoteError",
            "RemoteTraceback",
            "ResultsWriter",
            "Retry",
            "Run",
            "RunError",
            "RunInfo",
            "RunNotFoundError",
            "RunStatistics",
            "ServeError",
            "Service",
            "SourceError",
            "Stage",
            "StageError",
            "StageInfo",
            "StageStatistics",
            "StallError",
            "StoreError",
            "TrainError",
            "UnsafeModelError",
            "WorkerLostError",
            "stage",
            "write_results",
        ]
    )


def test_decorated_module_functions_run_on_process_workers() -> None:
    # @stage binds the module's name to the Stage; the worker still finds the function.
    pipe = cv.Pipeline("deco", [f.decorated_triple])
    assert pipe.run(range(20), ordered=True).results == [3 * x for x in range(20)]


def test_a_module_level_name_bound_elsewhere_travels_by_value() -> None:
    def shadowed(x):  # type: ignore[no-untyped-def]
        return -x

    shadowed.__qualname__ = "inc"  # claims to be stagefns.inc, which is another function
    shadowed.__module__ = "stagefns"
    s = cv.stage(shadowed, executor="processes", name="shadowed")
    # the worker runs this function, not the one its name points to
    assert cv.Pipeline("p", [s]).run([1, 2], ordered=True).results == [-1, -2]


def test_help_of_stage_explains_every_option() -> None:
    """help(cv.stage) is the reference users read: every option with its meaning."""
    import inspect
    import pydoc

    text = pydoc.render_doc(cv.stage, renderer=pydoc.plaintext)
    args = text.split("Args:", 1)[1]
    options = [p for p in inspect.signature(cv.stage).parameters if p != "fn"]
    described = {
        o for o in options if re.search(rf"^\s+(\w+, )*{o}(, \w+)*: \S", args, re.MULTILINE)
    }
    assert described == set(options)
    assert "Examples" in text and "retry=3" in text
