"""Faults only process workers can have: death, and a real Ctrl-C."""

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


@pytest.mark.parametrize(
    ("fn", "exitcode", "how"),
    [
        (f.kill_on_7, -signal.SIGKILL, "killed by SIGKILL"),
        (f.exit_on_7, 3, "exited with code 3"),
        (f.segfault_on_7, -signal.SIGSEGV, "killed by SIGSEGV"),
    ],
)
def test_a_dead_worker_is_reported_with_the_item_it_held(fn, exitcode: int, how: str) -> None:  # type: ignore[no-untyped-def]
    pipe = cv.Pipeline(
        "dies",
        [cv.stage(f.slow, executor="threads"), cv.stage(fn, executor="processes", workers=2)],
    )
    started = time.monotonic()
    with pytest.raises(cv.WorkerLostError) as info:
        pipe.run(range(1000))
    assert time.monotonic() - started < 30  # promptly: no hang, on a loaded machine too
    err = info.value
    assert err.stage == fn.__name__
    assert err.key == (7,) and (7,) in err.keys
    assert err.exitcode == exitcode
    assert how in str(err) and "item 7" in str(err)


def test_a_worker_that_cannot_start_is_reported(tmp_path: Path) -> None:
    # A module that exists in the driver but not in the worker's import path.
    mod = tmp_path / "vanishing_module.py"
    mod.write_text("def ident(x):\n    return x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import vanishing_module  # type: ignore[import-not-found]

        pipe = cv.Pipeline("p", [cv.stage(vanishing_module.ident, executor="processes")])
        sys.path.remove(str(tmp_path))
        with pytest.raises(cv.StageError) as info:
            pipe.run(range(3))
        assert "ModuleNotFoundError" in str(info.value) or "vanishing_module" in str(
            info.value.__cause__
        )
    finally:
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
        sys.modules.pop("vanishing_module", None)


@pytest.mark.slow
def test_ctrl_c_cancels_cleanly_with_no_orphans(tmp_path: Path) -> None:
    script = tmp_path / "long_run.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            sys.path.insert(0, {tests!r})
            import conveyor as cv
            import stagefns as f

            if __name__ == "__main__":
                pipe = cv.Pipeline("long", [
                    cv.stage(f.slow, executor="processes", workers=2),
                    cv.stage(f.pid_of, executor="processes", workers=2),
                ], fuse=False)  # two pools of two: four worker processes
                pids = set()
                try:
                    # Ctrl-C may land inside the run or in this loop's body: leaving
                    # the with block cancels the run either way.
                    with pipe.stream(range(10**7)) as run:
                        for pid in run:
                            if pid not in pids:
                                pids.add(pid)
                                print("PIDS", *run.worker_pids(), flush=True)
                except KeyboardInterrupt:
                    print("STATE", run.state, flush=True)
                    sys.exit(130)
            """
        ).format(tests=str(Path(__file__).parent))
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), line + proc.stderr.read()  # type: ignore[union-attr]
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == 4
    proc.send_signal(signal.SIGINT)  # mid-run: results are streaming
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "STATE cancelled" in out
    assert wait_until(lambda: not any(alive(p) for p in pids)), "orphan worker processes"
    assert "Traceback" not in err, err  # workers ignore SIGINT: no tracebacks of their own


def test_no_shared_memory_segment_outlives_a_run() -> None:
    np = pytest.importorskip("numpy")
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this platform")

    def ours() -> set[str]:  # the run's segments are named cv<driver pid>x<run token>...
        return {n for n in os.listdir("/dev/shm") if n.startswith(f"cv{os.getpid()}x")}

    before = ours()  # arrays of earlier tests may still hold theirs
    arrays = [np.ones(1 << 20) * i for i in range(8)]  # 8 MiB each
    pipe = cv.Pipeline(
        "shm",
        [
            cv.stage(f.array_plus_one, executor="processes", workers=2),
            cv.stage(f.array_touch, executor="processes", workers=2),
        ],
    )
    out = pipe.run(arrays).results
    assert sorted(float(a[5]) for a in out) == [i + 1.0 for i in range(8)]
    del out
    import gc

    gc.collect()
    assert ours() <= before

    # and after a cancelled run
    run = pipe.stream(iter(arrays * 50))
    next(run)
    run.close()
    gc.collect()
    assert ours() <= before


def test_in_place_process_stages_return_the_segment_they_were_sent() -> None:
    # The worker answers with the very shared-memory segment the driver sent; the
    # driver must keep it mapped until the answer is unpickled (a past race).
    np = pytest.importorskip("numpy")
    arrays = [np.full(1 << 18, float(i)) for i in range(12)]  # 2 MiB each
    pipe = cv.Pipeline(
        "inplace",
        [
            cv.stage(f.array_touch, name="t1", executor="processes"),
            cv.stage(f.array_touch, name="t2", executor="processes"),
        ],
        capacity=2,
    )
    for _ in range(3):
        out = sorted(pipe.run(arrays).results, key=lambda a: float(a[1]))
        assert [float(a[0]) for a in out] == [i + 2.0 for i in range(12)]
