"""One error tree: every error conveyor raises is a ConveyorError, named by its public path."""

from __future__ import annotations

import inspect
import pickle
import traceback

import pytest

import conveyor as cv
import conveyor.errors as errors

ERRORS = [
    getattr(errors, n)
    for n in errors.__all__
    if issubclass(getattr(errors, n), Exception) and not issubclass(getattr(errors, n), Warning)
]


def test_the_tree_drawn_in_the_module_is_the_tree() -> None:
    doc = errors.__doc__ or ""
    for cls in ERRORS:
        if cls is errors.RemoteTraceback:
            continue  # a cause, not an error of its own
        assert issubclass(cls, cv.ConveyorError), cls
        assert cls.__name__ in doc, f"{cls.__name__} is missing from the tree in errors.py"
        parent = cls.__mro__[1]
        assert parent.__name__ in doc or parent is Exception


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_errors_name_their_public_path(cls: type[Exception]) -> None:
    assert cls.__module__ == "conveyor" and getattr(cv, cls.__name__) is cls
    assert inspect.getdoc(cls)


def test_a_stage_error_prints_as_conveyor_stage_error_and_carries_its_context() -> None:
    err = cv.StageError("stage 'parse' failed on item 3", stage="parse", key=(3,), run_id="ab12")
    line = traceback.format_exception_only(type(err), err)[-1]
    assert line.startswith("conveyor.StageError: stage 'parse'")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is cv.StageError and str(again) == str(err)
    assert (again.stage, again.key, again.run_id) == ("parse", (3,), "ab12")


@pytest.mark.parametrize(
    "cls", [c for c in ERRORS if issubclass(c, cv.ConveyorError)], ids=lambda c: c.__name__
)
def test_every_error_survives_a_pickle_round_trip(cls: type[Exception]) -> None:
    err = cls.__new__(cls)
    err.args = ("what happened",)
    err.__dict__.update(stage="s", key=(1,))
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is cls and again.args == err.args and again.__dict__ == err.__dict__


def test_a_failed_run_names_its_run_in_the_error() -> None:
    def bad(x: int) -> int:
        raise ValueError(x)

    run = cv.Pipeline("p", [cv.stage(bad, executor="sync")]).stream(range(3))
    with pytest.raises(cv.StageError) as info:
        run.wait()
    assert (info.value.stage, info.value.key, info.value.run_id) == ("bad", (0,), run.id)
