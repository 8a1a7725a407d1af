"""Progress where users look: run(progress=True), stream(progress=True), `conveyor run`
piped to a file; busy counts within the pool; piped tables that keep every figure;
sentences kept whole; a readable RunStatistics."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import conveyor as cv
from conftest import wait_until
from conveyor.observe import Progress, ProgressDisplay

GATE = threading.Event()


def gated(x: int) -> int:
    GATE.wait(30)
    return x


@pytest.fixture
def gate():  # type: ignore[no-untyped-def]
    GATE.clear()
    yield GATE
    GATE.set()  # whatever happened, release the workers


def _run_in_thread(pipe: cv.Pipeline, **kwargs: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(pipe.run(**kwargs)), name="test-driver")  # type: ignore[arg-type]
    t.start()
    return t, out


def test_busy_workers_never_exceed_the_pool(gate: threading.Event) -> None:
    progress = Progress()
    pipe = cv.Pipeline("busy", [cv.Stage(gated, workers=1)])
    t, out = _run_in_thread(pipe, source=range(6), instruments=[progress])
    # one task runs, the next is already sent to the worker: two started, one worker
    assert wait_until(lambda: "gated" in progress.stages and progress.stages["gated"].busy >= 2)
    c = progress.stages["gated"]
    assert c.busy_workers == 1
    console_text = io.StringIO()
    from rich.console import Console

    Console(file=console_text, width=100).print(progress)
    assert "1 / 1" in console_text.getvalue() and "2 / 1" not in console_text.getvalue()
    gate.set()
    t.join(30)
    assert out and out[0].results is not None  # type: ignore[attr-defined]


def test_run_with_progress_writes_the_figures_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipe = cv.Pipeline("shown", [cv.Stage(lambda x: x + 1, name="inc", workers=2)])
    run = pipe.run(range(25), progress=True)
    assert sorted(run.results or []) == list(range(1, 26))
    err = capsys.readouterr().err  # not a terminal: plain lines, the last at the end
    assert "shown: succeeded" in err
    assert "25 read, 25 results" in err
    assert "inc  25 done" in err


def test_stream_with_progress_writes_lines_while_the_run_goes_on(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = io.StringIO()
    display = ProgressDisplay(file=log, every=0.02)
    pipe = cv.Pipeline("long", [cv.Stage(gated, workers=2)])
    t, _ = _run_in_thread(pipe, source=range(4), instruments=[display])
    # the lines come before the run ends: the gate is still shut
    assert wait_until(lambda: log.getvalue().count("long: running") >= 2)
    assert "busy 2 / 2" in log.getvalue()
    gate.set()
    t.join(30)
    assert log.getvalue().rstrip().splitlines()[-2].startswith("long: succeeded")
    with pytest.raises(ValueError, match="every=0"):
        ProgressDisplay(every=0)
    # stream() takes it too
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with pipe.stream(range(3), progress=True) as run:
        gate.set()
        assert sorted(run) == [0, 1, 2]
    assert "long: succeeded" in sys.stderr.getvalue()  # type: ignore[attr-defined]


def test_a_live_display_renders_the_table() -> None:
    out = io.StringIO()
    display = ProgressDisplay(file=out, live=True)
    cv.Pipeline("lv", [cv.Stage(lambda x: x, name="same")]).run(range(7), instruments=[display])
    assert "lv: succeeded" in out.getvalue() and "same" in out.getvalue()


BLOCKED = """
import os, time
import conveyor as cv

MARK = {mark!r}

def wait_for_mark(x):
    while not os.path.exists(MARK):  # the test creates it once it has seen progress
        time.sleep(0.01)
    return x

pipe = cv.Pipeline("blocked", [cv.Stage(wait_for_mark)], source=range(3))
"""


@pytest.mark.slow
def test_conveyor_run_piped_to_a_file_prints_progress_as_it_goes(tmp_path: Path) -> None:
    mark = tmp_path / "go"
    (tmp_path / "blocked.py").write_text(BLOCKED.format(mark=str(mark)))
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor",
                "run",
                f"{tmp_path}/blocked.py:pipe",
                "--progress-every",
                "0.05",
                "--no-store",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert wait_until(lambda: "blocked: running" in err_path.read_text(), timeout=30)
        finally:
            mark.touch()
            stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, err_path.read_text()
    assert "blocked: succeeded, 3 items read, 3 results" in stdout


WIDE = """
import conveyor as cv

def {name}(x):
    return x

pipe = cv.Pipeline({pipeline!r}, [cv.Stage({name}, workers=3)], source=range(123457))
"""


@pytest.mark.slow
@pytest.mark.parametrize("columns", [None, "60"])
def test_piped_reports_keep_every_figure_and_sentence_whole(
    tmp_path: Path, columns: str | None
) -> None:
    name = "a_stage_with_a_name_long_enough_to_push_the_table_past_its_width_" + "x" * 40
    pipeline = "a pipeline named at length " + "y" * 100
    (tmp_path / "wide.py").write_text(WIDE.format(name=name, pipeline=pipeline))
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "conveyor",
            "run",
            f"{tmp_path}/wide.py:pipe",
            "--no-progress",
            "--no-store",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.lstrip().startswith(name))
    assert "123457" in row and "threads×3" in row
    assert f"{pipeline}: succeeded, 123457 items read, 123457 results in" in proc.stdout
    # A trivial stage: the limit is the stage or, as often, conveyor's own overhead.
    limiting = [line for line in proc.stdout.splitlines() if "limiting" in line]
    assert limiting, proc.stdout
    line = limiting[0].strip()  # the sentence on one line, from its start to its end
    assert line.startswith("limiting") and line.endswith(")"), line
    assert "of its workers' time" in line


def test_run_statistics_print_as_readable_lines() -> None:
    pipe = cv.Pipeline(
        "readable",
        [cv.Stage(lambda x: x, name="first", workers=2), cv.Stage(lambda x: str(x), name="second")],
    )
    stats = pipe.run(range(40)).statistics()
    text = str(stats)
    lines = text.splitlines()
    assert lines[0].startswith("readable: succeeded, 40 items read, 40 results in")
    assert len(lines) == 4  # the run, a header, two stages
    assert all(len(line) <= 100 for line in lines)
    first = lines[2].split()
    assert first[:4] == ["first", "threads×2", "40", "40"]
    assert lines[3].split()[0] == "second"
    assert len(repr(stats)) < 200 and "first" in repr(stats) and "'succeeded'" in repr(stats)
