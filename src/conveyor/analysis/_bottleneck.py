"""The bottleneck: the stage that limits throughput, with the evidence for it.

Decision: the stage with the largest d_i / w_i (its busy seconds per source item
over its mean workers), the model's period P. The measurements that should agree,
reported as evidence beside it:

- its utilisation is near 100% (busy / worker-seconds);
- its input queue is full much of the time (work waits for it);
- the stages after it are starved (input queue empty, a worker idle);
- the stages before it are blocked (their output, its input, is full).

Drift: the run is cut into ``windows`` equal spans of time; in each, a stage's
load is the service time of its units that started there, per source item, over
its pool at that time, and the window's bottleneck is the largest. Where another
stage's load beats the run's bottleneck by ``DRIFT_MARGIN`` (15%) in a window, the
report says the bottleneck moved there.
"""

from __future__ import annotations

import dataclasses

from conveyor.analysis._measure import RunMeasure
from conveyor.observe.recording import Recording

__all__ = ["Bottleneck", "WindowVerdict", "find_bottleneck", "windows_of"]

DRIFT_MARGIN = 1.15  # another stage's load over the bottleneck's, to call a window moved
TIE_MARGIN = 1.1  # the bottleneck's load over the next stage's, below which they are tied


@dataclasses.dataclass(frozen=True)
class WindowVerdict:
    """One span of the run: its bottleneck and each stage's load (s per item / worker)."""

    start_s: float  # since the run's start
    end_s: float
    bottleneck: str | None  # None: nothing ran in the window
    load: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Bottleneck:
    """The limiting stage, its margin over the next, and the evidence."""

    stage: str
    load_s: float  # d_i / w_i: seconds of period per item
    runner_up: str | None
    margin: float  # load / runner-up's load (1.0: a tie)
    utilisation: float
    input_full_share: float
    downstream_starved: dict[str, float]
    upstream_blocked: dict[str, float]
    windows: tuple[WindowVerdict, ...]

    @property
    def moves(self) -> list[WindowVerdict]:
        """The windows where another stage clearly limited: its load at least
        ``DRIFT_MARGIN`` times this stage's in that window (windows where this stage
        ran no unit, the pipeline's fill or drain, do not count)."""
        return [
            w
            for w in self.windows
            if w.bottleneck is not None
            and w.bottleneck != self.stage
            and self.stage in w.load  # it ran there: not the pipeline's fill or drain
            and w.load[w.bottleneck] >= DRIFT_MARGIN * w.load[self.stage]
        ]

    @property
    def drifted(self) -> bool:
        """Whether the bottleneck was clearly another stage in some window of the run."""
        return bool(self.moves)

    def evidence(self) -> list[str]:
        """The evidence in words, one clause each."""
        lines = [f"busy {self.utilisation:.0%} of its workers' time"]
        if self.input_full_share >= 0.05:
            lines.append(f"its input queue full {self.input_full_share:.0%} of the time")
        starved = [f"{n} {v:.0%}" for n, v in self.downstream_starved.items()]
        if starved:
            lines.append(f"stages after it starved ({', '.join(starved)} of the time)")
        blocked = [f"{n} {v:.0%}" for n, v in self.upstream_blocked.items() if v >= 0.05]
        if blocked:
            lines.append(f"stages before it blocked ({', '.join(blocked)})")
        if self.runner_up is not None and self.margin < TIE_MARGIN:
            lines.append(
                f"nearly tied with {self.runner_up} ({self.margin:.2f}x its load): speeding up "
                "one alone gains little"
            )
        elif self.runner_up is not None:
            lines.append(f"{self.margin:.2f}x the load of the next stage, {self.runner_up}")
        return lines


def _loads(m: RunMeasure) -> dict[str, float]:
    return {
        n: (s.demand_s or 0.0) / max(s.mean_workers, 1e-9) for n, s in m.stages.items() if s.units
    }


def windows_of(rec: Recording, m: RunMeasure, count: int = 4) -> tuple[WindowVerdict, ...]:
    """The run cut into ``count`` equal spans of time, each with its own bottleneck.

    A span's units are those that started in the recording's time buckets whose
    middle falls in the span, so its edges are as sharp as a bucket
    (``rec.bucket_ns``, at most 1/256 of the run's whole length)."""
    t0, t1 = m.t0_ns, m.t1_ns
    if t1 <= t0 or count < 1 or not m.items:
        return ()
    step = (t1 - t0) / count
    width = rec.bucket_ns
    spans: list[list[int]] = [[] for _ in range(count)]  # bucket indices of each span
    first = max(0, (t0 - rec.started_ns) // width)
    last = (t1 - rec.started_ns) // width
    for b in range(first, last + 1):
        mid = rec.started_ns + b * width + width / 2
        k = min(count - 1, max(0, int((mid - t0) // step)))
        spans[k].append(b)
    out = []
    for k in range(count):
        a, z = t0 + k * step, t0 + (k + 1) * step
        load: dict[str, float] = {}
        for name, s in rec.stages.items():
            busy = sum(s.series.busy_ns[b] for b in spans[k] if b < len(s.series.busy_ns))
            units = sum(s.series.units[b] for b in spans[k] if b < len(s.series.units))
            if not units or not s.units:
                continue
            per_unit = busy / units / 1e9
            units_per_item = s.units / m.items
            places = s.workers_at(int((a + z) / 2)) * s.shape.concurrency
            load[name] = per_unit * units_per_item / places
        best = max(load, key=lambda n: load[n]) if load else None
        out.append(WindowVerdict((a - t0) / 1e9, (z - t0) / 1e9, best, load))
    return tuple(out)


def find_bottleneck(rec: Recording, m: RunMeasure, *, windows: int = 4) -> Bottleneck | None:
    """The stage limiting throughput in ``m`` (module docstring); ``None`` when no
    stage ran a unit."""
    loads = _loads(m)
    if not loads:
        return None
    ranked = sorted(loads, key=lambda n: loads[n], reverse=True)
    name = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    s = m.stages[name]
    after = _reachable(rec, name, "successors")
    before = _reachable(rec, name, "predecessors")
    return Bottleneck(
        stage=name,
        load_s=loads[name],
        runner_up=runner,
        margin=loads[name] / loads[runner] if runner and loads[runner] > 0 else float("inf"),
        utilisation=s.utilisation,
        input_full_share=s.full_share,
        downstream_starved={n: m.stages[n].starved_share for n in after},
        upstream_blocked={n: m.stages[n].blocked_share for n in before},
        windows=windows_of(rec, m, windows),
    )


def _reachable(rec: Recording, name: str, direction: str) -> list[str]:
    seen: list[str] = []
    todo = list(getattr(rec.stages[name].shape, direction))
    while todo:
        n = todo.pop(0)
        if n not in seen and n in rec.stages:
            seen.append(n)
            todo.extend(getattr(rec.stages[n].shape, direction))
    return [n for n in rec.stages if n in seen]
