"""Where to cut a chain of layers into pipeline stages: pure functions, no torch.

The problem (contiguous chain partitioning): layers 0..n-1 with costs c_0..c_{n-1}
go, in order, onto p stages; stage j gets a contiguous run [b_j, b_{j+1}) and runs
on a device of relative speed s_j, so its time is sum(c[b_j:b_{j+1}]) / s_j. Find the
cut points b_1 < ... < b_{p-1} that minimise the slowest stage, optionally with
each stage's memory sum(m[b_j:b_{j+1}]) at most a cap.

    layers   c0 c1 c2 | c3 c4 | c5 c6 c7
    stages   ---- 0 --- -- 1 -- ---- 2 ---        bounds = (0, 3, 5, 8)

:func:`partition_optimal` solves it exactly by dynamic programming over prefixes:

    best[j][i] = min over k < i of max(best[j-1][k], cost(k, i) / s_j)
                 where the run [k, i) fits stage j's memory cap

best[p][n] is optimal because every partition of the first i layers into j stages
is an optimal-or-worse partition of a prefix into j-1 stages followed by one last
run, and the max of the two is monotone in the first term (the principle of
optimality holds for the bottleneck objective). O(p·n²) time, fine for the
hundreds of layers a model has; the tests check it against brute force.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from conveyor.train._errors import TrainError

__all__ = ["Partition", "partition_by_params", "partition_optimal", "partition_uniform"]


@dataclass(frozen=True)
class Partition:
    """Contiguous stages over a chain of layers: stage j holds layers bounds[j]..bounds[j+1]-1.

    ``stage_costs`` are the stage times (layer costs summed, divided by the stage's
    device speed); ``stage_memory`` the summed layer memory, when memory was given.
    """

    bounds: tuple[int, ...]
    stage_costs: tuple[float, ...]
    stage_memory: tuple[float, ...] | None
    method: str

    @property
    def num_stages(self) -> int:
        return len(self.bounds) - 1

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of layers on each stage."""
        return tuple(b - a for a, b in pairwise(self.bounds))

    @property
    def bottleneck(self) -> float:
        """The slowest stage's time: what the pipeline's period is bound by."""
        return max(self.stage_costs)

    @property
    def bottleneck_stage(self) -> int:
        return self.stage_costs.index(self.bottleneck)

    def layers(self, stage: int) -> range:
        """Indices of the layers on ``stage``."""
        return range(self.bounds[stage], self.bounds[stage + 1])

    def describe(self, unit: str = "ms", scale: float = 1e3) -> str:
        """One line per stage: layers, time, memory; the bottleneck marked."""
        lines = [f"partition ({self.method}), bottleneck stage {self.bottleneck_stage}:"]
        for j in range(self.num_stages):
            a, b = self.bounds[j], self.bounds[j + 1]
            mem = ""
            if self.stage_memory is not None:
                mem = f"  memory {self.stage_memory[j] / 2**20:8.2f} MiB"
            mark = "  <- bottleneck" if j == self.bottleneck_stage else ""
            lines.append(
                f"  stage {j}: layers {a:>3}..{b - 1:<3} ({b - a:>2})  "
                f"time {self.stage_costs[j] * scale:8.3f} {unit}{mem}{mark}"
            )
        return "\n".join(lines)


def _check_inputs(costs: Sequence[float], stages: int) -> None:
    if stages < 1:
        raise TrainError(f"stages must be at least 1, got {stages}")
    if len(costs) < stages:
        raise TrainError(
            f"cannot cut {len(costs)} layers into {stages} stages: every stage needs at "
            f"least one layer. Use --stages {len(costs)} or fewer, or split the model "
            f"into more layers (an nn.Sequential with more children)."
        )
    bad = [(i, c) for i, c in enumerate(costs) if not (c >= 0 and math.isfinite(c))]
    if bad:
        raise TrainError(f"layer costs must be finite and >= 0; bad (layer, cost): {bad[:5]}")


def _per_stage(value: float | Sequence[float] | None, stages: int, name: str) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return [float(value)] * stages
    values = [float(v) for v in value]
    if len(values) != stages:
        raise TrainError(
            f"{name} gives {len(values)} values for {stages} stages; give one per stage"
        )
    return values


def _evaluate(
    bounds: Sequence[int],
    costs: Sequence[float],
    memory: Sequence[float] | None,
    speeds: Sequence[float] | None,
    method: str,
) -> Partition:
    p = len(bounds) - 1
    sp = speeds or [1.0] * p
    stage_costs = tuple(sum(costs[bounds[j] : bounds[j + 1]]) / sp[j] for j in range(p))
    stage_memory = None
    if memory is not None:
        stage_memory = tuple(float(sum(memory[bounds[j] : bounds[j + 1]])) for j in range(p))
    return Partition(tuple(bounds), stage_costs, stage_memory, method)


def partition_optimal(
    costs: Sequence[float],
    stages: int,
    *,
    memory: Sequence[float] | None = None,
    memory_cap: float | Sequence[float] | None = None,
    activations: Sequence[float] | None = None,
    live: Sequence[int] | None = None,
    speeds: Sequence[float] | None = None,
) -> Partition:
    """The contiguous partition of ``costs`` into ``stages`` runs with the smallest slowest stage.

    ``memory`` (one value per layer) and ``memory_cap`` (one value, or one per stage)
    bound each stage's memory: the sum of its layers' ``memory``, plus, when given,
    ``live[j]`` times the sum of its layers' ``activations`` (stage j holds that many
    micro-batches' activations at its peak). ``speeds`` (one per stage, in pipeline
    order) divide a stage's cost, for devices of unequal speed. Exact, by dynamic
    programming.

    >>> partition_optimal([1, 1, 1, 3], 2).bounds
    (0, 3, 4)
    """
    _check_inputs(costs, stages)
    n, p = len(costs), stages
    caps = _per_stage(memory_cap, p, "memory_cap")
    sp = _per_stage(speeds, p, "speeds")
    if sp is not None and any(s <= 0 for s in sp):
        raise TrainError(f"device speeds must be > 0, got {sp}")
    if caps is not None and memory is None:
        raise TrainError("memory_cap needs memory: one value per layer (bytes)")
    if memory is not None and len(memory) != n:
        raise TrainError(f"memory has {len(memory)} values for {n} layers; give one per layer")
    if activations is not None and (memory is None or live is None or len(activations) != n):
        raise TrainError(
            "activations needs memory, and live (one count per stage), and one value per layer"
        )
    copies = [int(c) for c in live] if live is not None else [0] * p
    if len(copies) != p:
        raise TrainError(f"live gives {len(copies)} counts for {p} stages; give one per stage")

    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    mprefix = [0.0]
    for m in memory or []:
        mprefix.append(mprefix[-1] + m)
    aprefix = [0.0]
    for a in activations or [0.0] * n:
        aprefix.append(aprefix[-1] + a)

    inf = math.inf
    # best[j][i]: smallest bottleneck placing layers [0, i) on stages 0..j-1
    best = [[inf] * (n + 1) for _ in range(p + 1)]
    cut = [[-1] * (n + 1) for _ in range(p + 1)]
    best[0][0] = 0.0
    for j in range(1, p + 1):
        speed = sp[j - 1] if sp else 1.0
        cap = caps[j - 1] if caps else None
        held = copies[j - 1]
        # stage j-1 ends at i; the p-j later stages need at least one layer each
        for i in range(j, n - (p - j) + 1):
            for k in range(j - 1, i):
                if best[j - 1][k] == inf:
                    continue
                if cap is not None and (
                    mprefix[i] - mprefix[k] + held * (aprefix[i] - aprefix[k]) > cap
                ):
                    continue
                value = max(best[j - 1][k], (prefix[i] - prefix[k]) / speed)
                if value < best[j][i]:
                    best[j][i], cut[j][i] = value, k
    if best[p][n] == inf:
        assert memory is not None and caps is not None
        largest = max(memory)
        raise TrainError(
            f"no way to cut {n} layers into {p} stages with each stage's memory within "
            f"its cap {caps} (total memory {sum(memory):.4g}, largest layer {largest:.4g}). "
            f"Raise the memory cap, use more stages, or give the model smaller layers."
        )
    bounds = [n]
    for j in range(p, 0, -1):
        bounds.append(cut[j][bounds[-1]])
    part = _evaluate(bounds[::-1], costs, memory, sp, "optimal")
    if activations is not None and part.stage_memory is not None:
        b = part.bounds
        mem = tuple(
            part.stage_memory[j] + copies[j] * float(sum(activations[b[j] : b[j + 1]]))
            for j in range(p)
        )
        part = Partition(part.bounds, part.stage_costs, mem, part.method)
    return part


def partition_uniform(
    costs: Sequence[float],
    stages: int,
    *,
    memory: Sequence[float] | None = None,
    speeds: Sequence[float] | None = None,
) -> Partition:
    """The same number of layers on every stage (the first ``n % stages`` get one more)."""
    _check_inputs(costs, stages)
    n = len(costs)
    q, r = divmod(n, stages)
    bounds = [0]
    for j in range(stages):
        bounds.append(bounds[-1] + q + (1 if j < r else 0))
    return _evaluate(bounds, costs, memory, _per_stage(speeds, stages, "speeds"), "uniform")


def partition_by_params(
    costs: Sequence[float],
    params: Sequence[float],
    stages: int,
    *,
    memory: Sequence[float] | None = None,
    speeds: Sequence[float] | None = None,
) -> Partition:
    """Balance parameter counts (as DeepSpeed's ``partition_method="parameters"``), then time it.

    The cut minimises the largest per-stage parameter count; ``stage_costs`` are
    the resulting stage *times* from ``costs``, for comparison with the optimum.
    """
    if len(params) != len(costs):
        raise TrainError(f"params has {len(params)} values for {len(costs)} layers")
    by_params = partition_optimal(params, stages)
    return _evaluate(
        by_params.bounds, costs, memory, _per_stage(speeds, stages, "speeds"), "parameters"
    )
