"""Functions of ``__main__`` (a notebook, the IPython shell, ``python -``), lambdas and
closures run on process workers; what cannot travel at all is refused when the stage
is built, naming the value.

The main module is a fresh interpreter reading its program from stdin, as a notebook's
kernel has no file a spawned worker could import again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import conveyor as cv

PROGRAM = textwrap.dedent(
    """
    import json
    import conveyor as cv

    OFFSET = 1000

    def double(x):
        return 2 * x

    def make_adder(k):
        def add(x):
            return x + k + OFFSET
        return add

    class Scale:
        def __init__(self):
            self.k = 10
        def __call__(self, x):
            return x * self.k

    @cv.stage(executor="processes", workers=2)
    def square(x):
        return x * x

    pipe = cv.Pipeline("nb", [
        cv.stage(double, executor="processes", workers=2),
        cv.stage(make_adder(5), executor="processes", name="add"),
        cv.stage(Scale, executor="processes"),
        cv.stage(lambda x: x - 1, executor="processes", name="dec"),
        square,
    ])
    run = pipe.run(range(8), ordered=True)
    print(json.dumps({"state": run.state, "results": run.results}))
    """
)


def _expected() -> list[int]:
    return [((2 * x + 5 + 1000) * 10 - 1) ** 2 for x in range(8)]


def _run(argv: list[str], program: str) -> dict[str, object]:
    proc = subprocess.run(
        argv,
        input=program,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert proc.returncode == 0, proc.stderr
    # IPython prints its prompt before the output: take the JSON from where it starts.
    last = [line for line in proc.stdout.splitlines() if '{"state"' in line][-1]
    return json.loads(last[last.index('{"state"') :])  # type: ignore[no-any-return]


@pytest.mark.slow
def test_main_functions_closures_and_lambdas_run_on_process_workers() -> None:
    out = _run([sys.executable, "-"], PROGRAM)
    assert out == {"state": "succeeded", "results": _expected()}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("IPython") is None, reason="IPython not installed")
def test_functions_typed_into_ipython_run_on_process_workers() -> None:
    argv = [sys.executable, "-m", "IPython", "--no-banner", "--quick", "--simple-prompt"]
    out = _run(argv, PROGRAM)
    assert out == {"state": "succeeded", "results": _expected()}


def test_a_closure_over_what_cannot_travel_is_refused_when_the_stage_is_built() -> None:
    lock = threading.Lock()

    def guarded(x):  # type: ignore[no-untyped-def]
        with lock:
            return x

    with pytest.raises(cv.PipelineError, match="cannot be sent to a process worker") as info:
        cv.stage(guarded, executor="processes")
    message = str(info.value)
    assert "lock" in message  # the value's type
    assert "'guarded'" in message  # the stage
    assert "executor='threads'" in message  # and a way out
    cv.stage(guarded, executor="threads")  # fine where nothing has to travel


def test_a_lambda_and_a_closure_in_a_test_module_run_on_process_workers() -> None:
    k = 3
    pipe = cv.Pipeline(
        "local",
        [
            cv.stage(lambda x: x + k, executor="processes", name="plus"),
            cv.stage(lambda x: x * k, executor="processes", name="times"),
        ],
    )
    assert pipe.run(range(5), ordered=True).results == [(x + 3) * 3 for x in range(5)]
