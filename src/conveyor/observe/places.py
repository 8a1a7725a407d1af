"""Where a run's workers ran: the nodes of a cluster, for lanes per node and actor.

A Ray worker's outcomes carry its node (its IP and the start of its node id); the
run says so once per worker (``Instrument.worker_placed``), the recorder keeps it
(``Recording.places``: stage -> worker -> node), and the report, the Gantt chart and
the dashboard's timeline group a stage's workers by node. Workers on the driver's
machine (threads, processes) have no place: one node, this machine.

Results kept on a node and lost with it are made again by re-running their stage
(``Instrument.results_remade``); the recorder counts them (``Recording.remade``:
stage -> the node they were lost with, "" for results freed and needed again ->
count), and the report says so next to the nodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from conveyor.observe.recording import StageRecording

__all__ = ["NodeGroup", "PlacesNoted", "lane_label", "lanes", "node_groups"]


class PlacesNoted:
    """The recorder's part that notes where each worker runs (``worker_placed``) and
    the results made again (``results_remade``)."""

    _nodes: dict[str, dict[int, str]] | None = None
    _remade: dict[str, dict[str, int]] | None = None

    def results_remade(self, stage: str, count: int, lost_on: str, t_ns: int) -> None:
        if self._remade is None:
            self._remade = {}
        per = self._remade.setdefault(stage, {})
        per[lost_on] = per.get(lost_on, 0) + count

    def remade(self) -> dict[str, dict[str, int]]:
        """stage -> node the results were lost with ("": freed) -> results made again."""
        return {stage: dict(m) for stage, m in (self._remade or {}).items()}

    def worker_placed(self, stage: str, worker: int, place: str, t_ns: int) -> None:
        if self._nodes is None:
            self._nodes = {}
        self._nodes.setdefault(stage, {})[worker] = place

    def places(self) -> dict[str, dict[int, str]]:
        """stage -> worker -> node, for the workers that ran on a cluster's node."""
        return {stage: dict(m) for stage, m in (self._nodes or {}).items()}


@dataclasses.dataclass(frozen=True)
class NodeGroup:
    """A stage's workers on one node, with what they did in the detail window."""

    node: str
    workers: tuple[int, ...]
    units: int
    busy_s: float


def lanes(s: StageRecording, places: Mapping[int, str]) -> list[int]:
    """A stage's workers in lane order: by node, then worker (by worker alone when
    none was placed)."""
    workers = sorted(set(s.detail.worker) | set(places)) or [0]
    return sorted(workers, key=lambda w: (places.get(w, ""), w))


def lane_label(worker: int, places: Mapping[int, str]) -> str:
    """``"127.0.0.3 a1b2c3d4 · actor 4"`` for a placed worker, else ``"worker 4"``."""
    node = places.get(worker)
    return f"worker {worker}" if node is None else f"{node} · actor {worker}"


def node_groups(s: StageRecording, places: Mapping[int, str]) -> tuple[NodeGroup, ...]:
    """A stage's workers grouped by node (empty when none was placed), the busiest
    node first; units and busy time from the recording's per-unit detail."""
    if not places:
        return ()
    units: dict[int, int] = {}
    busy: dict[int, int] = {}
    d = s.detail
    for w, a, b in zip(d.worker, d.started, d.finished, strict=True):
        units[w] = units.get(w, 0) + 1
        busy[w] = busy.get(w, 0) + (b - a)
    by_node: dict[str, list[int]] = {}
    for w, node in places.items():
        by_node.setdefault(node, []).append(w)
    groups = [
        NodeGroup(
            node,
            tuple(sorted(ws)),
            sum(units.get(w, 0) for w in ws),
            sum(busy.get(w, 0) for w in ws) / 1e9,
        )
        for node, ws in by_node.items()
    ]
    return tuple(sorted(groups, key=lambda g: (-g.busy_s, g.node)))
