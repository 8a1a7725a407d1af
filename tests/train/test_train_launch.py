"""launch(): no process outlives a run, a failing rank's own error comes back, two nodes work.

Every test marks its run with an environment variable of its own, which torchrun
and the ranks inherit, and afterwards looks for processes carrying it in
/proc/*/environ: a process still running (a zombie's environment reads empty)
is one the run left behind. Whatever happens, the fixture kills any it finds.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from conftest import wait_until  # noqa: E402
from conveyor.errors import RemoteTraceback  # noqa: E402
from conveyor.train import TrainError, partition_uniform  # noqa: E402
from conveyor.train._launch import free_port, launch  # noqa: E402
from conveyor.train._runtime import RunSpec  # noqa: E402

pytestmark = [
    pytest.mark.train,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

HERE = Path(__file__).parent
TOY = HERE / "toy_model.py"
FAULTY = HERE / "faulty_data.py"
PARSE_LINE = next(  # where faulty_data's _parse_row raises
    n for n, line in enumerate(FAULTY.read_text().splitlines(), 1) if "return int(text)" in line
)


def spec(data: str = f"{TOY}:make_data", steps: int = 3) -> RunSpec:
    return RunSpec(
        model=f"{TOY}:make_model",
        data=data,
        schedule="1f1b",
        microbatches=2,
        bounds=list(partition_uniform([1.0] * 16, 2).bounds),
        batch_size=32,
        steps=steps,
        lr=0.1,
        record_parameters=True,
    )


def carrying(marker: str) -> list[int]:
    """Pids of the running processes whose environment holds ``marker`` (NAME=value)."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    name, value = "CONVEYOR_TEST_LAUNCH", uuid.uuid4().hex
    monkeypatch.setenv(name, value)
    token = f"{name}={value}"
    yield token
    for pid in carrying(token):  # only if the test failed: leave nothing running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(480)
def test_a_timeout_stops_every_process_of_the_run_even_one_deaf_to_sigterm(marker):
    # rank 1 never returns from its data factory and ignores SIGTERM, so it takes the
    # SIGKILL after the grace period; rank 0 waits for it at the first step
    with pytest.raises(TrainError, match=r"did not finish in 15 s"):
        launch([spec(f"{FAULTY}:hang_on_rank_1_deaf_to_sigterm")], 2, timeout=15)
    assert carrying(marker) == []


@pytest.mark.timeout(480)
@pytest.mark.parametrize(
    ("factory", "message", "frame"),
    [
        (
            "train_error_on_rank_1",
            "rank 1: the shard for rank 1 has 0 rows; regenerate it with --shards 2",
            "train_error_on_rank_1",
        ),
        (
            "value_error_on_rank_1",
            "rank 1 raised ValueError: invalid literal for int() with base 10: 'row 17' "
            f"(at {FAULTY}:{PARSE_LINE} in _parse_row)",
            "_parse_row",
        ),
    ],
    ids=["TrainError", "ValueError"],
)
def test_a_failing_rank_gives_its_own_error_and_stops_the_run(marker, factory, message, frame):
    with pytest.raises(TrainError) as info:
        launch([spec(f"{FAULTY}:{factory}")], 2, timeout=400)
    assert str(info.value) == message
    assert info.value.rank == 1
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and f"in {frame}\n" in cause.tb
    assert carrying(marker) == []


@pytest.mark.timeout(480)
def test_keyboard_interrupt_in_the_caller_stops_every_process(marker, tmp_path, monkeypatch):
    flag = tmp_path / "rank-1-hangs"
    monkeypatch.setenv("CONVEYOR_TEST_HANG_FLAG", str(flag))
    interrupted = threading.Event()
    done = threading.Event()

    def interrupt_once_rank_1_hangs() -> None:
        if wait_until(lambda: flag.exists() or done.is_set(), timeout=400) and not done.is_set():
            interrupted.set()
            _thread.interrupt_main()

    # a runner started in the background may pass SIGINT on ignored; interrupt_main needs it handled
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=interrupt_once_rank_1_hangs)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            launch([spec(f"{FAULTY}:hang_on_rank_1")], 2)  # no timeout: only the interrupt ends it
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    assert interrupted.is_set()
    assert carrying(marker) == []


@pytest.mark.timeout(720)
def test_two_nodes_on_loopback_train_like_one_node_with_two_ranks(marker):
    run = spec(steps=4)
    # node 1 planned another cut (its own timings): every rank runs node 0's plan
    elsewhere = replace(run, bounds=[0, 4, 16], microbatches=4)
    port = free_port()
    outcome: dict[int, Any] = {}

    def node(rank: int) -> None:
        try:
            outcome[rank] = launch(
                [run if rank == 0 else elsewhere], 2, nnodes=2, node_rank=rank, master_addr="127.0.0.1", master_port=port,
                timeout=600,
            )  # fmt: skip
        except BaseException as exc:  # handed to the test's thread
            outcome[rank] = exc

    nodes = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for t in nodes:
        t.start()
    for t in nodes:
        t.join()
    assert outcome[1] == [], outcome[1]  # the node without rank 0 returns no results
    assert isinstance(outcome[0], list), outcome[0]
    (two_nodes,) = outcome[0]
    (one_node,) = launch([run], 2, timeout=600)
    assert two_nodes["ranks"] == one_node["ranks"] == 2
    assert two_nodes["losses"] == one_node["losses"]
    for step, (got, want) in enumerate(
        zip(two_nodes["parameters"], one_node["parameters"], strict=True)
    ):
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), f"step {step} {name}"
    assert not torch.equal(
        one_node["parameters"][0]["0.weight"], one_node["final_state"]["0.weight"]
    )
    assert carrying(marker) == []
