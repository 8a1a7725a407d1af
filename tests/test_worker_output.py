"""What workers print and log reaches the driver: named by stage and worker, through
the driver's logging configuration, above a live display, and never torn."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import conveyor as cv
import outputfns
from conveyor.observe import ProgressDisplay

TESTS = Path(__file__).parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """``text`` without the terminal's control sequences (a live display redraws)."""
    return ANSI.sub("", text)


def test_process_workers_prints_and_records_reach_the_driver(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    pipe = cv.Pipeline("p", [cv.Stage(outputfns.noisy, executor="processes", workers=2)])
    assert sorted(pipe.run(range(6)).results or []) == list(range(6))
    out = capsys.readouterr().out
    for x in range(6):  # through the driver's sys.stdout, each line whole and named
        assert re.search(rf"^\[noisy [01]\] printing {x}$", out, re.M), out
    infos = [r for r in caplog.records if r.name == "outputfns"]
    assert sorted(r.getMessage().split("] ")[1] for r in infos) == [
        f"info about {x}" for x in range(6)
    ]
    assert all(r.levelno == logging.INFO for r in infos)  # DEBUG: below the driver's level
    assert all(r.conveyor_stage == "noisy" and r.conveyor_worker in (0, 1) for r in infos)  # type: ignore[attr-defined]
    assert all(r.processName.startswith("conveyor-noisy-") for r in infos)


MAIN = """
import logging, sys
sys.path.insert(0, {tests!r})
import conveyor as cv
import outputfns

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stage = cv.Stage(outputfns.noisy, executor="processes", workers=2)
    run = cv.Pipeline("main", [stage]).run(range(4))
    print("results", sorted(run.results))
"""


@pytest.mark.slow
def test_logging_configured_under_the_main_guard_is_honoured(tmp_path: Path) -> None:
    script = tmp_path / "main.py"
    script.write_text(MAIN.format(tests=str(TESTS)))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    for x in range(4):
        assert re.search(rf"^INFO outputfns: \[noisy [01]\] info about {x}$", proc.stderr, re.M)
        assert re.search(rf"^\[noisy [01]\] printing {x}$", proc.stdout, re.M)
    assert "debug about" not in proc.stderr
    assert "results [0, 1, 2, 3]" in proc.stdout


def test_worker_output_goes_above_a_live_display(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = io.StringIO()  # where the user's handler wrote before the display began
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler()  # bound to that stream, as basicConfig binds it
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    shown = io.StringIO()
    try:
        pipe = cv.Pipeline("lv", [cv.Stage(outputfns.noisy, executor="processes")])
        run = pipe.run(range(3), instruments=[ProgressDisplay(file=shown, live=True)])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert run.state == "succeeded"
    text = plain(shown.getvalue())
    for x in range(3):
        assert f"[noisy 0] printing {x}" in text
        assert f"[noisy 0] info about {x}" in text
    assert "info about" not in terminal.getvalue()  # not under (through) the table


FIRST_HALF = threading.Event()
OTHER_DONE = threading.Event()


def interleaved(x: int) -> int:
    if x == 0:  # starts a line, lets the other worker print one, then ends its own
        sys.stdout.write("first half, ")
        FIRST_HALF.set()
        OTHER_DONE.wait(30)
        sys.stdout.write("second half\n")
    else:
        FIRST_HALF.wait(30)
        print("a whole line from another worker")
        OTHER_DONE.set()
    return x


def test_thread_workers_printing_at_once_do_not_tear_a_live_display() -> None:
    FIRST_HALF.clear()
    OTHER_DONE.clear()
    shown = io.StringIO()
    stage = cv.Stage(interleaved, workers=2, capacity=1)
    try:
        cv.Pipeline("tear", [stage]).run(
            [0, 1], instruments=[ProgressDisplay(file=shown, live=True)]
        )
    finally:
        FIRST_HALF.set()
        OTHER_DONE.set()
    lines = [line.strip() for line in plain(shown.getvalue()).splitlines()]
    assert "first half, second half" in lines
    assert "a whole line from another worker" in lines


@pytest.mark.parametrize("executor", ["sync", "threads", "processes"])
def test_init_runs_once_per_worker_before_its_first_call(executor: str) -> None:
    outputfns.INITS.clear()
    workers = 1 if executor == "sync" else 2
    stage = cv.Stage(
        outputfns.after_init, executor=executor, workers=workers, init=outputfns.record_init
    )
    results = cv.Pipeline("init", [stage]).run(range(40)).results or []
    assert sorted(r[0] for r in results) == list(range(40))
    if executor == "processes":  # each process ran its own init, once
        assert {r[2] for r in results} == {1}
        assert outputfns.INITS == []  # none in the driver
    else:  # one per thread that worked, each once
        assert len(outputfns.INITS) == len(set(outputfns.INITS)) <= workers
        assert outputfns.INITS
    outputfns.INITS.clear()


def test_an_init_that_fails_fails_the_unit_naming_its_error() -> None:
    stage = cv.Stage(outputfns.noisy, executor="processes", init=outputfns.failing_init)
    with pytest.raises(cv.StageError, match="the model file is missing"):
        cv.Pipeline("broken", [stage]).run(range(3))


def test_an_init_that_is_not_callable_or_cannot_travel_is_refused() -> None:
    with pytest.raises(cv.PipelineError, match=r"init=5 is not callable"):
        cv.Stage(outputfns.noisy, init=5)  # type: ignore[arg-type]
    lock = threading.Lock()

    def hold() -> None:
        lock.acquire()

    with pytest.raises(cv.PipelineError, match="its init cannot be sent to a process worker"):
        cv.Stage(outputfns.noisy, executor="processes", init=hold)
    cv.Stage(outputfns.noisy, executor="threads", init=hold)  # nothing has to travel


def test_a_worker_can_still_ask_its_streams_for_their_file_descriptor() -> None:
    stage = cv.Stage(outputfns.uses_fileno, executor="processes")
    assert cv.Pipeline("fd", [stage]).run([1, 2], ordered=True).results == [1, 2]
