"""The report's words on a cluster run: each Ray stage's workers grouped by node."""

from __future__ import annotations

from conveyor.analysis._measure import RunMeasure


def node_lines(m: RunMeasure) -> list[str]:
    """One line per stage whose workers ran on a cluster's nodes, e.g.::

    nodes of on_node: 127.0.0.3 1f2e3d4c: actors 0, 1 (150 units, busy 3.10 s);
        127.0.0.2 9a8b7c6d: actors 2, 3 (150 units, busy 3.02 s)
    """
    out = []
    for s in m.stages.values():
        if not s.nodes:
            continue
        groups = "; ".join(
            f"{g.node}: actor{'s' if len(g.workers) > 1 else ''} "
            f"{', '.join(map(str, g.workers))} ({g.units} units, busy {g.busy_s:.2f} s)"
            for g in s.nodes
        )
        out.append(f"nodes of {s.name}: {groups}")
    return out
