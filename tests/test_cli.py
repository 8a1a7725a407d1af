"""The ``conveyor`` command: targets, sources, the final report, JSON, errors, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import conveyor as cv
from conftest import interruptible_conveyor, wait_until
from conveyor.cli import cli
from conveyor.observe.progress import Progress
from conveyor.observe.summary import limiting_line, limiting_stage, stage_table

PIPELINE_FILE = """
import conveyor as cv

def double(x):
    if isinstance(x, str):
        if x != x.strip():
            raise ValueError(f"line {x!r} kept its newline")
        x = int(x)
    return x * 2

def inc(x):
    if x == 14:
        raise ValueError("fourteen is unlucky")
    return x + 1

def pairs(xs):
    return sum(xs)

def make():
    return cv.Pipeline("made", [cv.Stage(double)], source=[1, 2])

pipeline = cv.Pipeline(
    "small",
    [cv.Stage(double, workers=2), cv.Stage(inc, executor="sync"),
     cv.Stage(pairs, kind="batch", size=2)],
    source=lambda: range(5),
)
no_source = cv.Pipeline("bare", [cv.Stage(double)])
a_stage = cv.Stage(double)
not_a_pipeline = 42

def needs_args(n):
    return pipeline
"""


@pytest.fixture
def target_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory holding ``cvpipe.py``; sys.path and sys.modules restored afterwards."""
    (tmp_path / "cvpipe.py").write_text(textwrap.dedent(PIPELINE_FILE))
    path, modules = sys.path[:], set(sys.modules)
    yield tmp_path
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def rows(output: str) -> dict[str, list[str]]:
    """The final table's rows by stage name: the cells after the name (an edgeless table)."""
    table = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if cells and cells[0] and cells[0] != "stage":
            table[cells[0]] = cells[1:]
    return table


def test_run_prints_the_final_table(target_dir: Path) -> None:
    result = invoke("run", f"{target_dir}/cvpipe.py:pipeline", "--no-progress")
    assert result.exit_code == 0, result.output
    table = rows(result.stdout)
    # executor and workers, items in, items out, ...
    assert table["double"][:3] == ["threads\u00d72", "5", "5"]
    assert table["inc"][:3] == ["sync\u00d71", "5", "5"]
    assert table["pairs"][:3] == ["threads\u00d71", "5", "3"]  # batches of 2: 2 + 2 + 1
    assert table["double"][-1].endswith(
        "/ 128"
    )  # five items: done before a unit is timed, so it never grew
    assert "small: succeeded, 5 items read, 3 results" in result.stdout
    assert "limiting stage: " in result.stdout


def test_module_target_and_factory(target_dir: Path) -> None:
    sys.path.insert(0, str(target_dir))
    result = invoke("run", "cvpipe:make")
    assert result.exit_code == 0, result.output
    assert rows(result.stdout)["double"][1:3] == ["2", "2"]


def test_source_file_streams_stripped_lines(target_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "numbers.txt"
    source.write_text("1\n2\r\n3\n")
    stats_path = tmp_path / "stats.json"
    result = invoke(
        "run", f"{target_dir}/cvpipe.py:pipeline", "--source", str(source),
        "--json", str(stats_path), "--ordered",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = json.loads(stats_path.read_text())
    assert stats["pipeline"] == "small"
    assert stats["state"] == "succeeded"
    assert stats["items_read"] == 3
    assert stats["items_emitted"] == 2
    assert list(stats["stages"]) == ["double", "inc", "pairs"]
    double = stats["stages"]["double"]
    assert (double["items_in"], double["items_out"], double["workers"]) == (3, 3, 2)
    assert double["queue"]["bound"] == 128  # three items: never grew
    assert stats["stages"]["pairs"]["items_out"] == 2


def test_failing_stage_exits_1_naming_the_stage(target_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "seven.txt"
    source.write_text("7\n")
    result = invoke("run", f"{target_dir}/cvpipe.py:pipeline", "--source", str(source))
    assert result.exit_code == 1
    assert "stage 'inc' failed on item 0: ValueError: fourteen is unlucky" in result.stderr
    assert "Traceback" not in result.output
    assert "small: failed" in result.stdout  # the table is printed for a failed run too


@pytest.mark.parametrize(
    ("target", "code", "message"),
    [
        ("cvpipe.py", 2, "bad TARGET 'cvpipe.py': TARGET is module:attr or path/to/file.py:attr"),
        ("{dir}/cvpipe.py:", 2, "bad TARGET"),
        ("{dir}/missing.py:pipeline", 2, "missing.py' not found"),
        ("{dir}/cvpipe.txt:pipeline", 2, "not found"),
        ("{dir}/cvpipe.py:nope", 2, "has no attribute 'nope'; it defines these pipelines: "),
        ("{dir}/cvpipe.py:not_a_pipeline", 2, "is a int, not a Pipeline"),
        ("{dir}/cvpipe.py:a_stage", 2, "is a Stage, not a Pipeline; wrap it"),
        ("{dir}/cvpipe.py:needs_args", 2, "is a callable that needs arguments"),
        ("{dir}/cvpipe.py:no_source", 2, "pipeline 'bare' has no source; pass --source FILE"),
        ("no_such_module_xyz:pipeline", 2, "no module named 'no_such_module_xyz'"),
    ],
)
def test_bad_targets(target_dir: Path, target: str, code: int, message: str) -> None:
    result = invoke("run", target.format(dir=target_dir))
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_file_named_like_a_loaded_module(tmp_path: Path, target_dir: Path) -> None:
    (tmp_path / "json.py").write_text("pipeline = None\n")
    result = invoke("run", f"{tmp_path}/json.py:pipeline")
    assert result.exit_code == 2
    assert "a module of that name is already loaded" in result.output
    assert "rename the file" in result.output


def test_missing_attribute_lists_the_pipelines(target_dir: Path) -> None:
    result = invoke("run", f"{target_dir}/cvpipe.py:nope")
    assert "these pipelines: no_source, pipeline" in result.output


def test_target_that_raises_while_loading(tmp_path: Path, target_dir: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('no config found')\n")
    result = invoke("run", f"{tmp_path}/broken.py:pipeline")
    assert result.exit_code == 1
    assert "loading" in result.output
    assert "raised RuntimeError: no config found" in result.output


def test_pipeline_built_wrong_is_a_one_line_error(tmp_path: Path, target_dir: Path) -> None:
    (tmp_path / "dup.py").write_text(
        "import conveyor as cv\n"
        "def f(x):\n    return x\n"
        "pipeline = cv.Pipeline('dup', [cv.Stage(f), cv.Stage(f)], source=[1])\n"
    )
    result = invoke("run", f"{tmp_path}/dup.py:pipeline")
    assert result.exit_code == 1
    assert "two stages are named 'f'" in result.stderr
    assert "Traceback" not in result.output


def test_json_into_a_missing_directory(target_dir: Path, tmp_path: Path) -> None:
    result = invoke("run", f"{target_dir}/cvpipe.py:pipeline", "--json", f"{tmp_path}/no/s.json")
    assert result.exit_code == 1
    assert "cannot write the statistics to --json" in result.output
    assert "small: succeeded" in result.stdout  # the report still came first


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"conveyor, version {cv.__version__}"


def _cli(*args: str) -> list[str]:
    """The command line that runs ``conveyor ARGS`` under this interpreter."""
    return [sys.executable, "-m", "conveyor.cli", *args]


def test_process_workers_import_a_file_target(target_dir: Path) -> None:
    """A file target's directory goes on sys.path first, so spawned workers find it."""
    (target_dir / "procs.py").write_text(
        "import conveyor as cv\n"
        "from cvpipe import double\n"
        "pipeline = cv.Pipeline('procs', [cv.Stage(double, executor='processes')],"
        " source=range(20))\n"
    )
    out = subprocess.run(
        _cli("run", f"{target_dir}/procs.py:pipeline", "--no-progress"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent,  # anywhere but the target's directory
    )
    assert out.returncode == 0, out.stderr
    assert rows(out.stdout)["double"][:3] == ["processes\u00d71", "20", "20"]


def test_ctrl_c_cancels_and_exits_130(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    (tmp_path / "sleepy.py").write_text(
        "import pathlib, time\n"
        "import conveyor as cv\n"
        f"MARKER = pathlib.Path({str(marker)!r})\n"
        "def nap(x):\n"
        "    MARKER.touch()\n"
        "    time.sleep(0.02)\n"
        "    return x\n"
        "pipeline = cv.Pipeline('sleepy', [cv.Stage(nap)], source=range(100_000))\n"
    )
    proc = subprocess.Popen(
        interruptible_conveyor("run", f"{tmp_path}/sleepy.py:pipeline"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(marker.exists, 30), "the run never started"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "cancelled by SIGINT" in stderr
    assert "sleepy: cancelled" in stdout
    assert "Traceback" not in stderr


def test_progress_counts_items_from_hooks() -> None:
    def ident(x: int) -> int:
        return x

    def total(xs: list[int]) -> int:
        return sum(xs)

    progress = Progress()
    pipe = cv.Pipeline(
        "p",
        [cv.Stage(ident, workers=2), cv.Stage(total, kind="batch", size=4, executor="sync")],
        capacity=8,
    )
    run = pipe.run(range(30), instruments=[progress])
    assert run.results is not None and sum(run.results) == sum(range(30))
    ident_c, total_c = progress.stages["ident"], progress.stages["total"]
    assert (ident_c.done, ident_c.busy, ident_c.depth) == (30, 0, 0)
    assert total_c.done == 30  # items, not batches
    assert (progress.read, progress.emitted, progress.state) == (30, 8, "succeeded")
    console = Console(file=StringIO(), width=100)
    console.print(progress)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "p: succeeded" in text
    assert "0 / 8" in text and "0 / 2" in text


def test_report_names_the_busiest_stage() -> None:
    stats = cv.RunStatistics(
        pipeline="science",
        state="succeeded",
        elapsed_seconds=10.0,
        items_read=100,
        items_emitted=100,
        stages={
            name: cv.StageStatistics(
                name=name,
                kind="map",
                executor="processes",
                workers=workers,
                items_in=100,
                items_out=100,
                errors=0,
                tasks=100,
                busy_workers=0,
                busy_seconds=busy,
                queue=cv.QueueStatistics(bound=128, depth=0, peak_depth=peak, items_in=100, items_out=100),
            )
            for name, workers, busy, peak in [
                ("simulate", 1, 4.0, 3),
                ("analyse", 1, 3.0, 50),
                ("render", 2, 19.4, 128),
            ]
        },
    )  # fmt: skip
    assert limiting_stage(stats) == "render"
    assert limiting_line(stats) == "limiting stage: render (busy 97% of its workers' time)"
    console = Console(file=StringIO(), width=120)
    console.print(stage_table(stats))
    table = rows(console.file.getvalue())  # type: ignore[attr-defined]
    assert table["render"] == ["processes\u00d72", "100", "100", "10.0", "194", "97%", "128 / 128"]
    assert table["simulate"][3:6] == ["10.0", "40", "40%"]


def test_report_without_work_names_no_stage() -> None:
    pipe = cv.Pipeline("empty", [cv.Stage(abs)])
    assert limiting_stage(pipe.run([]).statistics()) is None


def test_entry_point_module_runs() -> None:
    out = subprocess.run(_cli("--help"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "run" in out.stdout


@pytest.mark.parametrize(
    ("train_cli", "code", "message"),
    [
        (
            "import click\n@click.command()\ndef train():\n    click.echo('training')\n",
            0,
            "training",
        ),
        (
            "import torch_is_not_installed_here\n",
            1,
            "conveyor train needs the train extra (torch_is_not_installed_here is not installed)",
        ),
    ],
)
def test_train_command_comes_from_the_train_extra(
    tmp_path: Path, train_cli: str, code: int, message: str
) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "__init__.py").write_text("")
    (tmp_path / "train" / "cli.py").write_text(train_cli)
    script = (
        "import sys, conveyor\n"
        f"conveyor.__path__.insert(0, {str(tmp_path)!r})  # a stand-in conveyor.train, found first\n"
        "from conveyor.cli import main\n"
        "sys.argv = ['conveyor', 'train']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == code, out.stderr
    assert message in out.stdout + out.stderr
