"""An idle GPU, explained: which stage starved it, from the run's own measurements.

The recording holds a :class:`~conveyor.observe.gpu.GpuSeries` per device a GPU
stage used (when nvidia-ml-py sampled them). A device idle at least
``IDLE_WORTH_SAYING`` of the run's window gets one line, by what its stage was doing
meanwhile:

- its input queue was empty (starved) at least ``STARVED_WORTH_SAYING`` of the
  window: the work did not reach it. The stage named is the bottleneck when it is
  upstream of the GPU stage, else the busiest stage upstream, else the source::

    GPU 0 (stage embed) was idle 62% of the run while embed's input queue was empty
    58% of it: starved by parse (busy 97%, the bottleneck)

- its successors' queues were full (blocked): the output could not leave, held back
  by the bottleneck downstream;
- neither: the stage's workers held the device without using it (work on the CPU
  between GPU calls, transfers, small batches).

A device busy most of the run gets no line, bottleneck or not. A device of a Ray
node is named with its node: ``GPU 0 on 10.0.0.5 1a2b3c4d (stage embed) ...``.
"""

from __future__ import annotations

from conveyor.analysis._bottleneck import Bottleneck
from conveyor.analysis._measure import RunMeasure, StageMeasure
from conveyor.observe.recording import Recording

__all__ = ["gpu_idle_lines"]

IDLE_WORTH_SAYING = 0.25  # a device idle at least this share of the window is reported
STARVED_WORTH_SAYING = 0.25  # an input queue empty this share counts as starving it
BLOCKED_WORTH_SAYING = 0.25


def gpu_idle_lines(rec: Recording, m: RunMeasure, bn: Bottleneck | None) -> list[str]:
    """One line per GPU that sat idle, saying which stage starved it (module docstring)."""
    out = []
    for g in rec.gpus:
        idle = g.idle_share(rec.t0_ns, rec.t1_ns)
        stages = [m.stages[s] for s in g.stages if s in m.stages]
        if idle is None or idle < IDLE_WORTH_SAYING or not stages:
            continue
        s = max(stages, key=lambda st: st.starved_share)
        where = f"GPU {g.device} on {g.node}" if g.node else f"GPU {g.device}"
        head = f"{where} (stage {', '.join(st.name for st in stages)}) was idle {idle:.0%}"
        if s.starved_share >= STARVED_WORTH_SAYING:
            out.append(
                f"{head} of the run while {s.name}'s input queue was empty "
                f"{s.starved_share:.0%} of it: starved by {_culprit(s, m, bn)}"
            )
        elif s.blocked_share >= BLOCKED_WORTH_SAYING:
            down = [n for n in m.stages if s.name in _upstream(n, m)]
            who = (
                f"{bn.stage} (busy {m.stages[bn.stage].utilisation:.0%}, the bottleneck)"
                if bn is not None and bn.stage in down
                else "a stage after it"
            )
            out.append(
                f"{head} of the run while {s.name} was blocked {s.blocked_share:.0%} of it "
                f"by a full queue after it: {who} holds it back"
            )
        else:
            out.append(
                f"{head} of the run while {s.name}'s workers were busy {s.utilisation:.0%} of "
                "theirs: the time goes to work off the GPU inside the stage (CPU work, "
                "transfers, small batches); larger batches or moving that work to a stage "
                "before it would feed the GPU"
            )
    return out


def _culprit(s: StageMeasure, m: RunMeasure, bn: Bottleneck | None) -> str:
    """The stage upstream of ``s`` that kept its input queue empty, in words."""
    up = _upstream(s.name, m)
    if bn is not None and bn.stage in up:
        u = m.stages[bn.stage].utilisation
        return f"{bn.stage} (busy {u:.0%}, the bottleneck)"
    if up:
        busiest = max((m.stages[n] for n in up), key=lambda st: st.utilisation)
        return f"{busiest.name} (busy {busiest.utilisation:.0%}, the busiest stage before it)"
    rate = m.items / m.makespan_s if m.makespan_s > 0 else 0.0
    return f"the source (it delivered {rate:.3g} items/s)"


def _upstream(name: str, m: RunMeasure) -> list[str]:
    """Every stage before ``name``, nearest first."""
    seen: list[str] = []
    todo = list(m.stages[name].predecessors)
    while todo:
        n = todo.pop(0)
        if n in seen or n not in m.stages:
            continue
        seen.append(n)
        todo.extend(m.stages[n].predecessors)
    return seen
