"""``conveyor runs / show / deadletters / cache``: tables, the ledger, one-line errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

import conveyor as cv
import stagefns as f
from conveyor.cache import StageCache
from conveyor.cli.cache import cache as cache_group
from conveyor.cli.cache import human_bytes
from conveyor.cli.store import deadletters, runs, show
from conveyor.store import SCHEMA_VERSION, RunStore, StoreRecorder


@click.group()
def cli() -> None:
    """The commands as the lead registers them on ``conveyor``."""


for command in (runs, show, deadletters, cache_group):
    cli.add_command(command)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "runs.db"
    with RunStore(path) as store:
        pipe = cv.Pipeline("evens", [cv.stage(f.inc), cv.Stage(f.evens_only, kind="flat_map")])
        pipe.run(range(100), instruments=[StoreRecorder(store, pipeline=pipe, params={"n": 100})])
        rec = StoreRecorder(store)
        from conveyor.core.events import RunInfo

        rec.run_started(RunInfo("dl0001", "parse", (), False, 0))
        rec.items_read([(0,), (1,)], 1)
        rec.task_finished("parse", 1, 0, [(0,)], [1], [2], None)
        rec.dead_lettered("parse", (1,), {"line": "bad"}, ValueError("not json"), "Trace-X", 3)
        rec.roots_finished([0], "done", 4)
        rec.roots_finished([1], "dead_lettered", 4)
        rec.run_finished("succeeded", None, 5)
    return path


def test_runs_lists_newest_first(store_path: Path) -> None:
    result = invoke("runs", "--store", str(store_path))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "succeeded" in line]
    assert len(lines) == 2
    assert "dl0001" in lines[0] and "evens" in lines[1] and "100" in lines[1]


def test_show_prints_stages_and_a_balanced_ledger(store_path: Path) -> None:
    run_id = RunStore(store_path).runs(2)[1].id
    result = invoke("show", run_id[:5], "--store", str(store_path))
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"run {run_id} of pipeline 'evens': succeeded" in out
    assert "params {'n': 100}" in out
    assert "evens_only" in out and "inc" in out
    assert "balanced: done 50 + filtered 50 + dead-lettered 0 + pending 0 = read 100" in out


def test_show_ledger_with_dead_letters(store_path: Path) -> None:
    result = invoke("show", "dl0001", "--store", str(store_path))
    assert result.exit_code == 0, result.output
    assert "done 1 + filtered 0 + dead-lettered 1 + pending 0 = read 2" in result.output


def test_show_lists_failures_of_a_failed_run(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    pipe = cv.Pipeline("unlucky", [cv.stage(f.fail_on_13, executor="sync")])
    run = pipe.stream(range(30), instruments=[StoreRecorder(path)])
    with pytest.raises(cv.StageError):
        run.wait()
    result = invoke("show", run.id, "--store", str(path))
    assert result.exit_code == 0, result.output
    assert f"run {run.id} of pipeline 'unlucky': failed" in result.output
    assert "fail_on_13 item 13 attempt 1: ValueError: thirteen is unlucky: 13" in result.output
    # items 0-12 reached the output before the failure: they are done, the rest pending
    assert "done 13 + filtered 0 + dead-lettered 0 + pending 17 = read 30" in result.output
    assert "balanced:" in result.output and "pending" in result.output


def test_show_exits_3_when_the_ledger_does_not_balance(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with RunStore(path) as store:
        store.begin_run("bad1", "p", None)
        store.set_state("bad1", "running")
        store.record_roots("bad1", [(0, "done")])
        store.finish_run("bad1", "succeeded", items_read=3)
    result = invoke("show", "bad1", "--store", str(path))
    assert result.exit_code == 3
    assert "NOT BALANCED: done 1 + filtered 0 + dead-lettered 0 + pending 0 != read 3" in (
        result.output
    )


def test_deadletters_lists_items_and_tracebacks(store_path: Path) -> None:
    result = invoke("deadletters", "dl00", "--traceback", "--store", str(store_path))
    assert result.exit_code == 0, result.output
    assert "1 dead letters of run dl0001" in result.output
    assert "ValueError: not json" in result.output and "{'line': 'bad'}" in result.output
    assert "Trace-X" in result.output
    run_id = RunStore(store_path).runs(2)[1].id
    result = invoke("deadletters", run_id, "--store", str(store_path))
    assert f"run {run_id} has no dead letters" in result.output


def test_unknown_and_ambiguous_runs_are_usage_errors(store_path: Path) -> None:
    line = one_line_error(invoke("show", "zzzz", "--store", str(store_path)), 2)
    assert "no run 'zzzz'" in line and "the latest are" in line
    line = one_line_error(invoke("deadletters", "", "--store", str(store_path)), 2)
    assert "is ambiguous" in line


def test_missing_store_is_a_usage_error(tmp_path: Path) -> None:
    line = one_line_error(invoke("runs", "--store", str(tmp_path / "none.db")), 2)
    assert "no run store at" in line
    assert not (tmp_path / "none.db").exists()


def test_garbage_store_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"\x00\x01garbage" * 100)
    line = one_line_error(invoke("runs", "--store", str(path)), 1)
    assert "is not a conveyor run store (file is not a database)" in line


def test_truncated_store_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with RunStore(path) as store:
        for i in range(300):
            store.begin_run(f"r{i:04d}", "p", "f" * 64, {"pad": "x" * 300})
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 4])
    result = invoke("show", "r0299", "--store", str(path))
    line = one_line_error(result, 1)
    assert "is corrupt" in line or "is not a conveyor run store" in line


def test_newer_schema_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    RunStore(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    line = one_line_error(invoke("runs", "--store", str(path)), 1)
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this conveyor" in line


# --- conveyor cache --------------------------------------------------------------------------


def test_cache_ls_size_and_clear(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    c = StageCache(root)
    for stage, n in (("etl.parse", 3), ("etl.embed", 1)):
        for i in range(n):
            key = c.key(stage, "code", i)
            assert key is not None
            c.put(key, b"x" * 2000)
    result = invoke("cache", "--cache", str(root), "ls")
    assert result.exit_code == 0, result.output
    assert "etl.parse" in result.output and "etl.embed" in result.output
    parse_row = next(line for line in result.output.splitlines() if "etl.parse" in line)
    assert " 3 " in parse_row and "KiB" in parse_row

    result = invoke("cache", "--cache", str(root), "ls", "--stage", "etl.embed")
    assert result.exit_code == 0 and len([e for e in c.entries() if e.stage == "etl.embed"]) == 1
    assert c.entries("etl.embed")[0].key in result.output

    result = invoke("cache", "--cache", str(root), "size")
    assert result.output.startswith(f"4 entries, {human_bytes(c.size_bytes())} ")

    result = invoke("cache", "--cache", str(root), "clear", "--stage", "etl.parse")
    assert result.output.startswith("removed 3 entries of stage 'etl.parse'")
    assert [e.stage for e in c.entries()] == ["etl.embed"]
    result = invoke("cache", "--cache", str(root), "clear")
    assert result.output.startswith("removed 1 entries")
    result = invoke("cache", "--cache", str(root), "ls")
    assert "no entries" in result.output


def test_cache_commands_take_a_url(tmp_path: Path) -> None:
    pytest.importorskip("fsspec", reason="URL caches need fsspec: pip install -e '.[files]'")
    url = f"file://{tmp_path / 'shared'}"
    c = StageCache(url)
    for i in range(2):
        key = c.key("etl.parse", "code", i)
        assert key is not None
        c.put(key, b"x" * 100)
    result = invoke("cache", "--cache", url, "size")
    assert result.exit_code == 0 and result.output.startswith("2 entries, ")
    assert result.output.rstrip().endswith(f"in {url}")
    result = invoke("cache", "--cache", url, "clear")
    assert result.output.startswith("removed 2 entries") and c.entries() == []
    from conveyor.cli import cli as conveyor  # the group that makes errors one line

    bad = CliRunner().invoke(conveyor, ["cache", "--cache", "nosuchproto://x", "ls"])
    line = one_line_error(bad, 1)
    assert "cannot use the cache URL 'nosuchproto://x': Protocol not known" in line


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 1024**2, 3 * 1024**4)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
        "3072.0 GiB",
    ]
