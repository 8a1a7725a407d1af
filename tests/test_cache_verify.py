"""``conveyor cache verify`` and ``verify_cache``: entries recomputed and compared, so
that what a fingerprint misses is found rather than served."""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

import cachefns as c
import conveyor as cv
from conveyor.cache import StageCache, verify_cache
from conveyor.cli import cli


def _read_files(tmp_path: Path, names: list[str], **options: Any) -> tuple[list[str], Path]:
    """Run a cached stage that reads files, whose content no fingerprint sees."""
    paths = []
    for name in names:
        path = tmp_path / name
        path.write_text(f"{name} v1")
        paths.append(str(path))
    root = tmp_path / "cache"
    stage = cv.stage(c.read_file, executor="threads", cache=str(root), **options)
    cv.Pipeline("chk", [stage]).run(paths)
    return paths, root


def test_verify_finds_the_entry_the_fingerprint_missed(tmp_path: Path) -> None:
    paths, root = _read_files(tmp_path, ["a", "b", "c"])
    cache = StageCache(root)
    assert [f.status for f in verify_cache(cache).findings] == ["same"] * 3

    Path(paths[1]).write_text("b v2")  # what the stage reads changed; its input did not
    report = verify_cache(cache)
    assert report.total == 3 and report.count("same") == 2
    (found,) = report.differing
    assert found.stage == "chk/read_file"
    assert f"input {paths[1]!r}: cached 'b v1', computed now 'b v2'" in found.detail
    assert "the fingerprint named but did not read: pathlib.Path" in found.detail
    assert "cache_version= or cache_key=" in found.detail


def test_the_command_reports_the_stage_and_exits_1(tmp_path: Path) -> None:
    paths, root = _read_files(tmp_path, [f"f{i}" for i in range(10)])
    ok = CliRunner().invoke(cli, ["cache", "--cache", str(root), "verify"])
    assert ok.exit_code == 0, ok.output
    assert f"verified all 10 entries in {root}: 10 same, 0 differs" in ok.output

    Path(paths[4]).write_text("changed")
    # From another folder, in another process: the stage's module is imported from
    # where the run imported it.
    cmd = [sys.executable, "-m", "conveyor.cli", "cache", "--cache", str(root), "verify"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "differs: stage 'chk/read_file', entry " in out.stdout
    assert "cached 'f4 v1', computed now 'changed'" in out.stdout
    assert "9 same, 1 differs, 0 outdated, 0 unchecked" in out.stdout
    assert "stale entries found in 'chk/read_file'" in out.stdout

    sampled = CliRunner().invoke(
        cli, ["cache", "--cache", str(root), "verify", "--sample", "3", "--seed", "1"]
    )
    assert "verified 3 of 10 entries" in sampled.output
    assert sampled.exit_code == (1 if "differs:" in sampled.output else 0)
    everything = [
        CliRunner().invoke(
            cli, ["cache", "--cache", str(root), "verify", "--sample", "3", "--seed", str(seed)]
        )
        for seed in range(12)
    ]
    assert {r.exit_code for r in everything} == {0, 1}  # samples that hold it, and not


def test_an_entry_whose_code_changed_is_outdated_not_wrong(tmp_path: Path) -> None:
    module = tmp_path / "vmod.py"
    module.write_text("def f(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        vmod = importlib.import_module("vmod")
        root = tmp_path / "cache"
        cv.Pipeline("v", [cv.stage(vmod.f, executor="sync", cache=str(root))]).run([1, 2])
        module.write_text("def f(x):\n    return x + 100\n")
        importlib.reload(vmod)
        report = verify_cache(StageCache(root))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("vmod", None)
    assert [f.status for f in report.findings] == ["outdated", "outdated"]
    assert "code changed since it was computed" in report.findings[0].detail


def test_entries_that_cannot_be_recomputed_say_why(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    big = b"x" * (2 << 20)  # over the 1 MiB of input an entry keeps
    cv.Pipeline("u", [cv.stage(len, name="size", executor="sync", cache=str(root))]).run(
        [big, b"small"]
    )
    local = functools.partial(lambda k, x: x + k, 1)  # cannot be pickled: no way to load it
    cv.Pipeline("u", [cv.stage(local, name="add", executor="sync", cache=str(root))]).run([1])
    by_stage = {}
    for f in verify_cache(StageCache(root)).findings:
        by_stage.setdefault(f.stage, []).append((f.status, f.detail))
    assert sorted(by_stage["u/size"]) == [
        ("same", ""),
        ("unchecked", "its input was not kept (over 1 MiB, or it does not pickle)"),
    ]
    ((status, detail),) = by_stage["u/add"]
    assert status == "unchecked" and "cannot be loaded here" in detail
