"""Two Ray nodes on loopback; the node running the middle stage is SIGKILLed mid-run.

One module-scoped fixture starts the cluster (a head on 127.0.0.2, a worker node on
127.0.0.3 advertising the resource ``node2``; about 10 s and 2 GB) and ends only the
processes it started. The run must complete with every item exactly once: the lost
node's units go back under the retry policy, its actors are replaced on the node that
takes its place, the results it kept in its object store are made again, and the
ledger balances.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
import stagefns as f
from raycluster import ENV, LoopbackCluster, have_ray
from test_ray_gpus import FAKES, once_sampling, parse
from test_ray_objstore import Ledger

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(360),
    pytest.mark.skipif(not have_ray(), reason="needs Ray: pip install -e '.[ray]'"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, LoopbackCluster]]:
    import ray

    os.environ.update(ENV)
    c = LoopbackCluster(gpus=1, path=(FAKES,))  # one fake GPU per node
    try:
        c.start(ray)
        yield ray, c
    finally:
        ray.shutdown()
        c.shutdown()


def test_each_nodes_gpu_is_one_series_labelled_with_its_node(
    cluster: tuple[Any, LoopbackCluster], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # before the tests that kill a node: a GPU on each, an actor of gpus=1 on each
    ray, c = cluster
    assert c.wait_nodes(ray, 2)
    nodes = {f"{n['NodeManagerAddress']} {n['NodeID'][:8]}" for n in c.alive_nodes(ray)}
    log = tmp_path / "nvml.log"
    monkeypatch.setenv("CONVEYOR_FAKE_NVML", json.dumps({"0": [0]}))  # idle
    monkeypatch.setenv("CONVEYOR_FAKE_NVML_LOG", str(log))
    pipe = cv.Pipeline(
        "gpu-two-nodes",
        [
            cv.stage(parse, name="parse"),
            cv.stage(f.visible_devices, name="embed", executor="ray", workers=2, gpus=1),
        ],
    )
    run = pipe.run(once_sampling(log, 2, 150))
    rec = run.recording
    assert len(run.results) == 150 and {d for _, d in run.results} <= {"0"}
    # one actor per node (a GPU each); the one ready first may take every item, but
    # both sample their node's device from their start
    assert set(rec.places["embed"].values()) <= nodes
    assert sorted(g.node for g in rec.gpus) == sorted(nodes)
    for g in rec.gpus:
        assert g.device == "0" and g.stages == ["embed"] and sum(g.samples) >= 2
        assert set(g.utilisation) == {0.0} and set(g.memory) == {1 << 30}
    report = run.report().render(width=300)
    assert all(f"GPU 0 on {node} (stage embed) was idle" in report for node in nodes)


def test_a_node_killed_mid_run_loses_and_duplicates_nothing(
    cluster: tuple[Any, LoopbackCluster],
) -> None:
    ray, c = cluster
    c.wait_nodes(ray, 2)
    worker_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node2" in n["Resources"])
    n = 300
    pipe = cv.Pipeline(
        "two-nodes",
        [
            cv.stage(f.inc, executor="ray", workers=2, retry=3),
            cv.stage(f.on_node, executor="ray", workers=2, resources={"node2": 1}, retry=3),
            cv.stage(f.negate_pair, executor="ray", workers=2, retry=3),
        ],
    )
    results: list[tuple[int, str]] = []
    killed_at = None
    ledger = Ledger()
    with pipe.stream(range(n), instruments=[ledger]) as run:
        for r in run:
            results.append(r)
            if len(results) == n // 4 and killed_at is None:
                c.nodes[1].kill()  # SIGKILL the worker node's every process
                killed_at = time.monotonic()
                c.add_worker()  # what an autoscaler does: a node takes its place
    ended = time.monotonic()
    assert killed_at is not None
    values = sorted(v for v, _ in results)
    assert values == sorted(-(i + 1) * 10 for i in range(n))  # none lost, none twice
    nodes = {node for _, node in results}
    assert worker_node in nodes and len(nodes) == 2  # the first node, then its successor
    stats = run.statistics().stages["on_node"]
    assert stats.lost_workers >= 1
    assert run.state == "succeeded"
    assert ledger.read == n and ledger.states == {"done": n}  # the ledger balances
    print(f"kill to end: {ended - killed_at:.1f} s")


def test_results_kept_on_a_killed_node_are_made_again_each_item_once(
    cluster: tuple[Any, LoopbackCluster],
) -> None:
    # 256 KiB payloads stay in the object stores: the middle stage's results wait on
    # the worker node for the last stage (on the head) when that node is killed
    ray, c = cluster
    assert c.wait_nodes(ray, 2)
    worker = next(n for n in ray.nodes() if n["Alive"] and "node2" in n["Resources"])
    node = f"{worker['NodeManagerAddress']} {worker['NodeID'][:8]}"
    head = {f"node:{c.HEAD}": 0.01}
    n = 120
    pipe = cv.Pipeline(
        "kept-two-nodes",
        [
            cv.stage(f.payload, executor="ray", workers=2, resources=head, retry=3),
            cv.stage(f.payload_on_node, executor="ray", workers=2, resources={"node2": 1}, retry=3),
            cv.stage(f.payload_value, executor="ray", workers=2, resources=head, retry=3),
        ],
        capacity=32,
    )
    results: list[tuple[float, str]] = []
    killed_at = None
    ledger = Ledger()
    with pipe.stream(range(n), instruments=[ledger]) as run:
        for r in run:
            results.append(r)
            if len(results) == n // 4 and killed_at is None:
                c.nodes[-1].kill()  # SIGKILL the worker node's every process
                killed_at = time.monotonic()
                c.add_worker()
    ended = time.monotonic()
    assert killed_at is not None
    values = sorted(v for v, _ in results)
    assert values == sorted(-float(i * 10) for i in range(n))  # none lost, none twice
    assert run.state == "succeeded"
    assert ledger.read == n and ledger.states == {"done": n}  # the ledger balances
    stats = run.statistics().stages
    remade = stats["payload_on_node"].remade
    print(
        f"kill to end: {ended - killed_at:.1f} s; made again: {ledger.remade}; "
        f"failures: {collections.Counter(ledger.errors)}"
    )
    assert remade >= 1  # lost with the node, made again on its successor
    assert {on for s, _, on in ledger.remade if s == "payload_on_node"} == {node}
    assert stats["payload_value"].dead_lettered == 0
    assert f"results lost with node {node} were made again" in run.report().render(width=300)
