"""Resume after the driver itself was killed: only the missing items are computed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import conveyor as cv
import stagefns as f
from conftest import alive, wait_until
from conveyor.cache import StageCache
from conveyor.store import (
    PipelineChangedError,
    RunStore,
    StoreError,
    StoreRecorder,
    plan_resume,
    resume_report,
)

PIPELINE = textwrap.dedent(
    """
    import functools, sys, time
    sys.path.insert(0, {tests!r})
    import conveyor as cv
    import stagefns as f

    def slow_square(x):
        time.sleep(0.01)
        return f.logged_square({log!r}, x)

    pipeline = cv.Pipeline(
        "resumable",
        [
            cv.stage(slow_square, executor={executor!r}, workers=2, cache={cache!r}),
            cv.stage(f.inc, executor="threads"),
        ],
        source=lambda: range(120),
        ordered=True,
    )
    """
)

DRIVER = textwrap.dedent(
    """
    import importlib.util, sys
    sys.path.insert(0, {tests!r})
    spec = importlib.util.spec_from_file_location("resumable_pipe", {path!r})
    mod = importlib.util.module_from_spec(spec)
    sys.modules["resumable_pipe"] = mod
    spec.loader.exec_module(mod)
    from conveyor.store import StoreRecorder
    if __name__ == "__main__":
        rec = StoreRecorder({store!r}, pipeline=mod.pipeline, target={target!r})
        run = mod.pipeline.stream(instruments=[rec])
        for i, _ in enumerate(run):
            if i == 0:
                print("PIDS", *run.worker_pids(), flush=True)
    """
)


def load(target: str) -> cv.Pipeline:
    import importlib.util

    path, attr = target.rsplit(":", 1)
    # as `conveyor run` does: process workers must import the file too
    if str(Path(path).parent) not in sys.path:
        sys.path.insert(0, str(Path(path).parent))
    spec = importlib.util.spec_from_file_location("resumable_pipe", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["resumable_pipe"] = mod
    spec.loader.exec_module(mod)
    return getattr(mod, attr)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_a_driver_killed_mid_run_resumes_computing_only_what_is_missing(
    executor: str, tmp_path: Path
) -> None:
    log, cache, store = tmp_path / "calls.log", tmp_path / "cache", tmp_path / "runs.db"
    tests = str(Path(__file__).parent)
    pipe_file = tmp_path / "resumable_pipe.py"
    pipe_file.write_text(
        PIPELINE.format(tests=tests, log=str(log), cache=str(cache), executor=executor)
    )
    target = f"{pipe_file}:pipeline"
    driver = tmp_path / "driver.py"
    driver.write_text(
        DRIVER.format(tests=tests, path=str(pipe_file), store=str(store), target=target)
    )
    proc = subprocess.Popen(
        [sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), line + proc.stderr.read()  # type: ignore[union-attr]
    workers = [int(p) for p in line.split()[1:]]
    deadline = time.monotonic() + 60
    while len(f.calls(str(log))) < 40:  # let it finish about a third of the items
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stderr.close()  # type: ignore[union-attr]
    proc.stdout.close()
    # Orphaned process workers finish the call in hand, then see that their driver
    # is gone and exit: once they have, the log is final.
    assert wait_until(lambda: not any(alive(p) for p in workers), timeout=30)
    before = f.calls(str(log))
    assert len(before) < 120

    rs = RunStore(store)
    (killed,) = rs.runs()
    assert killed.state == "running"  # the driver died without a word
    plan = plan_resume(rs, killed.id[:6], load)
    rec = StoreRecorder(rs, pipeline=plan.pipeline, params=plan.params(), target=killed.target)
    run = plan.pipeline.run(plan.source(), ordered=plan.ordered, instruments=[rec])
    after = f.calls(str(log))[len(before) :]

    # the items the killed run recorded as done at the sink are skipped, the rest run
    skipped = {i for a, b in plan.finished for i in range(a, b + 1)}
    rest = [i for i in range(120) if i not in skipped]
    assert run.results == [x * x + 1 for x in rest]  # what a clean run gives for them
    # exactly the items missing from the cache were computed, each once
    hits = run.statistics().stages["slow_square"].cache_hits
    assert hits + len(skipped) >= 35  # most of what the killed run computed is not redone
    assert len(after) == len(rest) - hits
    assert len(set(after)) == len(after)
    assert sorted(set(before) | set(after)) == list(range(120))
    cached_keys = {e.key for e in StageCache(cache).entries()}
    assert len(cached_keys) == 120
    report = resume_report(plan, run.statistics())[1 if skipped else 0 :]
    assert report[0].startswith(f"slow_square: {hits} from the cache, {len(after)} computed")
    assert report[1] == f"inc: {len(rest)} computed (the stage is not cached)"
    (latest, _) = rs.runs()
    assert latest.params["resumed_from"] == killed.id and latest.state == "succeeded"
    assert rs.ledger(latest.id).balanced
    sys.path.remove(str(tmp_path))
    sys.modules.pop("resumable_pipe", None)


def test_resume_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    rs = RunStore(tmp_path / "runs.db")
    pipe = cv.Pipeline("p", [cv.stage(f.inc, cache=str(tmp_path / "c"))], source=range(5))
    pipe.run(instruments=[StoreRecorder(rs, pipeline=pipe)])
    (run,) = rs.runs()
    with pytest.raises(StoreError, match="succeeded; there is nothing to resume"):
        plan_resume(rs, run.id, lambda t: pipe)
    with pytest.raises(StoreError, match="not started by `conveyor run`"):
        plan_resume(rs, run.id, lambda t: pipe, force=True)
    with pytest.raises(StoreError, match="no run"):
        plan_resume(rs, "ffffffff", lambda t: pipe)

    # the code changed since the run
    target_run = cv.Pipeline("p", [cv.stage(f.inc, cache=str(tmp_path / "c"))], source=range(5))
    rec = StoreRecorder(rs, pipeline=target_run, target="x.py:p")
    with pipe.stream(instruments=[rec]) as r:
        next(r)  # interrupted: cancelled after one result
    latest = rs.runs()[0]
    changed = cv.Pipeline("p", [cv.stage(f.double, name="inc", cache=str(tmp_path / "c"))])
    with pytest.raises(PipelineChangedError):
        plan_resume(rs, latest.id, lambda t: changed)
    plan = plan_resume(rs, latest.id, lambda t: changed, force=True)
    assert plan.cached_stages == ("inc",)
