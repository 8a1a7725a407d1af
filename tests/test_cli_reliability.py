"""The run store from the command line: run, kill, resume; dead letters and re-drive."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import stagefns as f
from conftest import running, wait_until
from conveyor.cli import cli
from conveyor.store import RunStore

TESTS = str(Path(__file__).parent)

PIPE = textwrap.dedent(
    """
    import functools, multiprocessing, os, pathlib, sys, time
    sys.path.insert(0, {tests!r})
    import conveyor as cv
    import stagefns as f

    if multiprocessing.parent_process() is not None:  # a process worker: note its pid
        pathlib.Path({pids!r}, str(os.getpid())).touch()

    def slow_square(x):
        time.sleep({sleep})
        return f.logged_square({log!r}, int(x))

    def check(x):
        if x % 7 == 0 and {strict}:
            raise ValueError(f"no multiples of 7: {{x}}")
        return x

    pipeline = cv.Pipeline(
        "cli-resume",
        [
            cv.stage(slow_square, executor="processes", workers=2, cache={cache!r}),
            cv.stage(check, on_error="skip"),
        ],
        ordered=True,
    )
    """
)


@pytest.fixture(autouse=True)
def fresh_module():  # type: ignore[no-untyped-def]
    """Each test writes its own cli_resume_pipe.py: forget the last one's module."""
    sys.modules.pop("cli_resume_pipe", None)
    yield
    sys.modules.pop("cli_resume_pipe", None)


def write_pipe(tmp_path: Path, *, strict: bool = False, sleep: float = 0.01) -> Path:
    path = tmp_path / "cli_resume_pipe.py"
    (tmp_path / "pids").mkdir(exist_ok=True)
    path.write_text(
        PIPE.format(
            tests=TESTS,
            pids=str(tmp_path / "pids"),
            log=str(tmp_path / "calls.log"),
            cache=str(tmp_path / "cache"),
            strict=strict,
            sleep=sleep,
        )
    )
    return path


def run_recorded(runner: CliRunner, pipe: Path, source: Path, store: Path) -> str:
    """`conveyor run` the test pipeline into ``store``; the id of the run it recorded."""
    args = ["run", f"{pipe}:pipeline", "--source", str(source), "--store", str(store)]
    result = runner.invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    return next(
        line.split()[1]
        for line in result.output.splitlines()
        if line.startswith("run ") and "recorded in" in line
    )


def conveyor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_run_killed_then_resumed_from_the_command_line(tmp_path: Path) -> None:
    pipe = write_pipe(tmp_path)
    source = tmp_path / "numbers.txt"
    source.write_text("".join(f"{i}\n" for i in range(100)))
    log, store = tmp_path / "calls.log", tmp_path / "runs.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor.cli",
            "run",
            f"{pipe}:pipeline",
            "--source",
            str(source),
            "--store",
            str(store),
            "--no-progress",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert wait_until(lambda: len(f.calls(str(log))) >= 30 or proc.poll() is not None, 60)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # The orphaned workers finish the call in hand (logging it) and exit: wait for that.
    pids = [int(p.name) for p in (tmp_path / "pids").iterdir()]
    assert pids and wait_until(lambda: not any(running(p) for p in pids), 30)
    before = f.calls(str(log))

    runs = conveyor("runs", "--store", str(store), cwd=tmp_path)
    assert runs.returncode == 0 and "running" in runs.stdout
    run_id = re.search(r"\b[0-9a-f]{12}\b", runs.stdout).group(0)  # type: ignore[union-attr]
    out = tmp_path / "results.jsonl"
    resumed = conveyor(
        "resume",
        run_id[:8],
        "--store",
        str(store),
        "--no-progress",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    after = f.calls(str(log))[len(before) :]
    assert sorted(set(before) | set(after)) == list(range(100)) and len(set(after)) == len(after)
    with RunStore(store, readonly=True) as rs:  # what the killed run recorded as finished
        done = {i for a, b, _ in rs.root_ranges(run_id, "done") for i in range(a, b + 1)}
    rest = [i for i in range(100) if i not in done]
    assert f"slow_square: {len(rest) - len(after)} from the cache, {len(after)} computed" in (
        resumed.stdout
    )
    assert f"check: {len(rest)} computed (the stage is not cached)" in resumed.stdout
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert results == [x * x for x in rest]  # what a clean run gives for them, in order
    shown = conveyor("show", run_id[:8], "--store", str(store), cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr


def test_dead_letters_are_listed_and_re_driven(tmp_path: Path) -> None:
    pipe = write_pipe(tmp_path, strict=True, sleep=0)
    store = tmp_path / "runs.db"
    source = tmp_path / "numbers.txt"
    source.write_text("".join(f"{i}\n" for i in range(30)))
    runner = CliRunner()
    run_id = run_recorded(runner, pipe, source, store)
    letters = runner.invoke(cli, ["deadletters", run_id, "--store", str(store)])
    assert letters.exit_code == 0, letters.output
    assert "5 dead letters" in letters.output and "no multiples of 7" in letters.output

    write_pipe(tmp_path, strict=False, sleep=0)  # the fix
    sys.modules.pop("cli_resume_pipe", None)
    out = tmp_path / "redriven.jsonl"
    again = runner.invoke(
        cli, ["deadletters", run_id, "--store", str(store), "--redrive", "--output", str(out)]
    )
    assert again.exit_code == 0, again.output
    assert "re-drove 5 item(s) through check: 5 result(s) written to" in again.output
    assert "0 dead-lettered again" in again.output
    # the results are kept, not thrown away
    assert sorted(json.loads(line) for line in out.read_text().splitlines()) == [
        0, 49, 196, 441, 784
    ]  # fmt: skip
    redrive_id = re.search(r"\(run ([0-9a-f]{12})\)", again.output).group(1)  # type: ignore[union-attr]

    # each letter names the run that re-drove it
    with RunStore(store) as rs:
        assert {d.redriven_by for d in rs.dead_letters(run_id)} == {redrive_id}
    listed = runner.invoke(cli, ["deadletters", run_id, "--store", str(store)])
    assert "re-driven by" in listed.output and listed.output.count(redrive_id) == 5

    # re-driving them again is refused, in one line, unless forced
    twice = runner.invoke(cli, ["deadletters", run_id, "--store", str(store), "--redrive"])
    assert twice.exit_code == 2, twice.output
    assert f"re-driven already (by run {redrive_id}); pass --force" in twice.output
    with RunStore(store, readonly=True) as rs:
        assert len(rs.runs()) == 2  # nothing ran
    forced = runner.invoke(
        cli, ["deadletters", run_id, "--store", str(store), "--redrive", "--force"]
    )
    assert forced.exit_code == 0, forced.output
    assert "5 result(s) not kept (--output FILE)" in forced.output
    with RunStore(store) as rs:
        (latest, *_) = rs.runs()
        assert {d.redriven_by for d in rs.dead_letters(run_id)} == {latest.id} != {redrive_id}
    usage = runner.invoke(cli, ["deadletters", run_id, "--store", str(store), "--force"])
    assert usage.exit_code == 2 and "go with --redrive" in usage.output


def test_resume_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["resume", "abc", "--store", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "no run store at" in missing.output
    pipe = write_pipe(tmp_path, sleep=0)
    store = tmp_path / "runs.db"
    source = tmp_path / "n.txt"
    source.write_text("1\n2\n")
    run_id = run_recorded(runner, pipe, source, store)
    unknown = runner.invoke(cli, ["resume", "zzzz", "--store", str(store)])
    assert unknown.exit_code == 2 and "Traceback" not in unknown.output
    done = runner.invoke(cli, ["resume", run_id, "--store", str(store)])
    assert done.exit_code == 1 and "nothing to resume" in done.output


# --- a run whose record or results cannot be written ends failed, in one line --------

# `conveyor ARGS` in a process whose files cannot grow past LIMIT bytes: a full disk,
# without root (the write that would pass the limit fails; SIGXFSZ is ignored).
LIMITED = (
    "import resource, runpy, signal, sys; "
    "limit = int(sys.argv[1]); signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
    "sys.argv = ['conveyor', *sys.argv[2:]]; "
    "runpy.run_module('conveyor.cli', run_name='__main__')"
)

FULL_PIPE = textwrap.dedent(
    """
    import conveyor as cv

    def check(x):
        x = int(x)
        if x % 50 == 7:  # a failure whose record alone is larger than the disk's room
            raise ValueError("no " + "x" * 600_000)
        return x

    def big(x):
        return str(x) * 2000

    def small(x):
        return int(x)

    store_fills = cv.Pipeline("fills", [cv.stage(check, executor="threads", on_error="skip")])
    output_fills = cv.Pipeline("output", [cv.stage(big, executor="threads")])
    few = cv.Pipeline("few", [cv.stage(small)])
    """
)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def only_run(store: Path) -> Any:
    with RunStore(store, create=False, readonly=True) as opened:
        (run,) = opened.runs()
        return run, opened.ledger(run.id)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_under_the_store_ends_the_run_failed_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "full_pipe.py").write_text(FULL_PIPE)
    source = tmp_path / "n.txt"
    source.write_text("".join(f"{i}\n" for i in range(20_000)))
    store = tmp_path / "store" / "runs.db"
    args = ["run", "full_pipe.py:store_fills", "--source", str(source), "--store", str(store)]
    done = subprocess.run(
        [sys.executable, "-c", LIMITED, str(512 * 1024), *args, "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr)
    assert line.startswith("error: run ") and "could not be recorded in full" in line, line
    assert "the disk is full or failing" in line and f"it is recorded as failed in {store}" in line
    assert "RuntimeWarning" not in done.stderr and " recorded in " not in done.stderr.replace(
        line, ""
    )
    run, _ = only_run(store)
    assert run.state == "failed" and run.finished_at is not None
    assert run.error is not None and "could not record this run in full" in run.error
    assert run.items_read is not None and run.items_read < 20_000  # it stopped early


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (ENOSPC on write)")
@pytest.mark.parametrize("pipeline", ["output_fills", "few"])
def test_results_that_cannot_be_written_end_the_run_failed_in_one_line(
    tmp_path: Path, pipeline: str
) -> None:
    # /dev/full answers every write with ENOSPC: "output_fills" fills the buffer during
    # the run; "few" writes less than a buffer, which fails only as the run ends
    (tmp_path / "full_pipe.py").write_text(FULL_PIPE)
    source = tmp_path / "n.txt"
    source.write_text("".join(f"{i}\n" for i in range(2000 if pipeline == "output_fills" else 5)))
    store = tmp_path / "runs.db"
    done = conveyor(
        "run",
        f"full_pipe.py:{pipeline}",
        "--source",
        str(source),
        "--store",
        str(store),
        "--no-progress",
        "--output",
        "/dev/full",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr)
    assert line.startswith("error: cannot write a result to --output '/dev/full': No space left")
    run, ledger = only_run(store)
    assert run.state == "failed" and run.error is not None and "--output" in run.error
    assert ledger.balanced, ledger


def test_a_damaged_store_is_refused_before_the_pipeline_runs(tmp_path: Path) -> None:
    from test_store_integrity import damage_page, record_history, table_page

    store = tmp_path / "runs.db"
    record_history(store, 5)
    damage_page(store, table_page(store, "item_outcomes"))  # a page in the middle
    pipe = write_pipe(tmp_path, sleep=0)
    source = tmp_path / "n.txt"
    source.write_text("1\n2\n3\n")
    done = conveyor(
        "run", f"{pipe}:pipeline", "--source", str(source), "--store", str(store), cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr)
    assert line.startswith(f"error: run store {store} is damaged: ") and "store check" in line
    assert not (tmp_path / "calls.log").exists()  # the pipeline never ran
    assert done.stdout == ""  # no report, no "recorded in", no resume advice


def read_only(folder: Path) -> Callable[[list[str]], list[str]] | None:
    """A wrapper that runs a command with ``folder`` read-only for it: by the folder's
    mode for an ordinary user, by a read-only bind mount in a private mount namespace
    for root (whom modes do not stop); None when neither can be had here."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda command: command
    unshare = shutil.which("unshare")
    mount = f"mount --bind -o ro {shlex.quote(str(folder))} {shlex.quote(str(folder))}"
    if unshare is None or subprocess.run([unshare, "-m", "sh", "-c", mount]).returncode:
        return None
    return lambda command: [unshare, "-m", "sh", "-c", f"{mount} && exec {shlex.join(command)}"]


def test_the_store_in_a_read_only_folder_can_be_listed(tmp_path: Path) -> None:
    folder = tmp_path / "history"
    folder.mkdir()
    store = folder / "runs.db"
    pipe = write_pipe(tmp_path, strict=True, sleep=0)
    source = tmp_path / "n.txt"
    source.write_text("".join(f"{i}\n" for i in range(10)))
    run_id = run_recorded(CliRunner(), pipe, source, store)
    assert sorted(os.listdir(folder)) == ["runs.db", "runs.db-writers"]  # closed cleanly
    outputs = []
    try:
        wrap = read_only(folder)
        if wrap is None:
            pytest.skip("no way to make a folder read-only here (root, and no unshare)")
        probe = subprocess.run(wrap(["touch", str(folder / "probe")]), capture_output=True)
        assert probe.returncode != 0  # the folder really is read-only for the commands
        for args in (["runs"], ["show", run_id], ["deadletters", run_id]):
            command = [sys.executable, "-m", "conveyor.cli", *args, "--store", str(store)]
            done = subprocess.run(wrap(command), capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            outputs.append(done.stdout)
    finally:
        folder.chmod(0o755)
    assert run_id in outputs[0] and "succeeded" in outputs[0]
    assert "balanced:" in outputs[1]
    assert "2 dead letters" in outputs[2]
    assert sorted(os.listdir(folder)) == ["runs.db", "runs.db-writers"]  # nothing written
