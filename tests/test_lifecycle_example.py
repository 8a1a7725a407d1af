"""The lifecycle's examples end to end: the digits loop (release, serve, a shift,
drift, retraining, gate, shadow, canary, promotion) and a release as code through
``conveyor deploy``, each in a subprocess on a store of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import conveyor as cv
from conveyor.lifecycle import LifecycleLog

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytest.importorskip("sklearn")
pytest.importorskip("fastapi")
pytest.importorskip("scipy")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_digits_loop_detects_the_shift_retrains_and_promotes_by_canary(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "lifecycle.py"), "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        env={**os.environ, "CONVEYOR_STORE": str(store)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "release 1: digits:1 promoted" in out
    assert "served by digits:2" in out and "answers by status: {200:" in out
    assert "500" not in out.split("answers by status:")[1].splitlines()[0]  # no failed request
    with LifecycleLog(store) as log:
        promote = log.events("digits", kinds=["promote"])[-1]
        chain = [e.kind for e in log.lineage(promote.id)]
        assert chain[0] == "drift_alarm" and chain[-1] == "promote"
        assert {"build", "gate", "shadow", "canary_step"} <= set(chain)
        alarm = log.lineage(promote.id)[0]
        assert alarm.version == 1 and alarm.evidence["rows"] >= 300
        checks = log.events("digits", kinds=["drift_check"])
        assert checks and all(c.passed for c in checks if c.id < alarm.id)  # no false alarm
        gate = next(e for e in log.lineage(promote.id) if e.kind == "gate")
        assert gate.passed and gate.evidence["difference"] > 0.1
        live = log.live_performance("digits", since=alarm.evidence["since"])
    assert cv.models.ModelRegistry(store).resolve("digits@champion").version == 2
    assert live[2][1] / live[2][0] > live[1][1] / live[1][0]  # v2 answers the moved images better


@pytest.mark.slow
def test_conveyor_deploy_releases_then_blocks_a_worse_candidate(tmp_path: Path) -> None:
    env = {**os.environ, "CONVEYOR_STORE": str(tmp_path / "runs.db")}

    def deploy(**more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor.cli", "deploy", f"{EXAMPLES}/release.py:release"],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
            env={**env, **more},
        )

    first = deploy()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "digits:1 serves digits@champion" in first.stdout
    assert "test" in first.stdout and "gate" in first.stdout
    worse = deploy(DIGITS_C="0.0005")  # far too strong a penalty: a much worse model
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "stopped at validate: accuracy" in worse.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "deployments", "digits"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert "FAIL" in shown.stdout and "promote" in shown.stdout
