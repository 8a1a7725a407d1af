"""Every ConveyorError that reaches the ``conveyor`` command is one line, exit code 1."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

import conveyor.errors
from conveyor.cli import cli
from conveyor.cli.errors import describe_error
from conveyor.errors import ConveyorError, RemoteTraceback, StageError, StoreError
from conveyor.store import RunStore

ERRORS = sorted(
    (
        cls
        for cls in map(lambda n: getattr(conveyor.errors, n), conveyor.errors.__all__)
        if isinstance(cls, type) and issubclass(cls, ConveyorError)
    ),
    key=lambda cls: cls.__name__,
)


def make(cls: type[ConveyorError]) -> ConveyorError:
    """An instance of ``cls`` with a message, whatever its constructor asks for."""
    try:
        params = inspect.signature(cls).parameters
    except ValueError:  # Exception's own __init__: a message only
        return cls(f"the {cls.__name__} message")
    if "message" not in params:
        return cls()  # MissingTorchError: its message is fixed
    kwargs = {"stage": "parse"} if "stage" in params else {}
    if "type_name" in params:  # RemoteError: the class of the worker's exception
        kwargs["type_name"] = "module.OriginalError"
    return cls(f"the {cls.__name__} message", **kwargs)


def one_line(result: Result) -> list[str]:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), result.output
    return lines


@pytest.fixture
def raising():  # type: ignore[no-untyped-def]
    """Register a command that raises a given error on the real group, then remove it."""
    names: list[str] = []

    def register(error: BaseException) -> str:
        @click.command(f"raise-{len(names)}")
        def command() -> None:
            raise error

        cli.add_command(command)
        names.append(command.name)  # type: ignore[arg-type]
        return command.name  # type: ignore[return-value]

    yield register
    for name in names:
        cli.commands.pop(name, None)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_each_conveyor_error_is_one_line_and_exit_1(raising, cls: type[ConveyorError]) -> None:  # type: ignore[no-untyped-def]
    error = make(cls)
    result = CliRunner().invoke(cli, [raising(error)])
    assert one_line(result) == [f"error: {error}"]


def test_a_cause_the_message_does_not_name_gets_its_line(raising) -> None:  # type: ignore[no-untyped-def]
    error = StoreError("run store x.db is unusable; pass another --store path")
    error.__cause__ = OSError("Input/output error")
    result = CliRunner().invoke(cli, [raising(error)])
    assert one_line(result) == [
        "error: run store x.db is unusable; pass another --store path",
        "  caused by OSError: Input/output error",
    ]


def test_other_exceptions_are_bugs_and_keep_their_traceback(raising) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, [raising(ZeroDivisionError("a bug"))])
    assert isinstance(result.exception, ZeroDivisionError)


def test_describe_error_adds_a_cause_only_when_it_says_more() -> None:
    inner = ValueError("fourteen is unlucky")
    inner.__cause__ = RemoteTraceback("Traceback ...")
    named = StageError("stage 'inc' failed on item 0: ValueError: fourteen is unlucky", stage="inc")
    named.__cause__ = inner
    assert describe_error(named) == str(named)
    bare = StageError("stage 'inc' failed on item 0", stage="inc")
    bare.__cause__ = inner
    assert describe_error(bare).endswith("\n  caused by ValueError: fourteen is unlucky")
    remote = StageError("failed", stage="s")
    remote.__cause__ = RemoteTraceback("tb")
    assert describe_error(remote) == "failed"
    silent = StoreError("cannot write")
    silent.__cause__ = KeyError()
    assert describe_error(silent) == "cannot write\n  caused by KeyError"


PIPE = textwrap.dedent(
    """
    import conveyor as cv

    def {name}(x):
        if int(x) % 3 == 0:
            raise ValueError(f"no multiples of 3: {{x}}")
        return int(x)

    pipeline = cv.Pipeline("errs", [cv.Stage({name}, on_error="skip")], source=range(7))
    """
)


@pytest.fixture
def pipe_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "errs_pipe.py"
    path.write_text(PIPE.format(name="check"))
    yield tmp_path
    sys.modules.pop("errs_pipe", None)


def test_redrive_of_a_stage_the_pipeline_lost_is_one_line(pipe_dir: Path) -> None:
    store = pipe_dir / "runs.db"
    runner = CliRunner()
    ran = runner.invoke(cli, ["run", f"{pipe_dir}/errs_pipe.py:pipeline", "--store", str(store)])
    assert ran.exit_code == 0, ran.output
    run_id = RunStore(store).runs(1)[0].id
    (pipe_dir / "errs_pipe.py").write_text(PIPE.format(name="renamed"))
    sys.modules.pop("errs_pipe", None)
    result = runner.invoke(cli, ["deadletters", run_id, "--redrive", "--store", str(store)])
    (line,) = one_line(result)
    assert line.startswith("error: the dead letters are from stage 'check', which pipeline")


def test_resume_of_a_changed_pipeline_is_one_line(pipe_dir: Path) -> None:
    store = RunStore(pipe_dir / "runs.db")
    store.begin_run("feed0001", "errs", "0" * 64, {}, f"{pipe_dir}/errs_pipe.py:pipeline")
    store.set_state("feed0001", "running")
    store.finish_run("feed0001", "failed", "ValueError: x")
    result = CliRunner().invoke(cli, ["resume", "feed0001", "--store", str(store.path)])
    (line,) = one_line(result)
    assert line.startswith("error: pipeline 'errs' changed since run feed0001")
    store.close()


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "dup.py").write_text(
        "import conveyor as cv\n"
        "def f(x):\n    return x\n"
        "pipeline = cv.Pipeline('dup', [cv.Stage(f), cv.Stage(f)], source=[1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", f"{tmp_path}/dup.py:pipeline"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error: ") and "two stages are named 'f'" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
