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

__all__ = [
    "Partition",
    "evaluate_partition",
    "partition_by_params",
    "partition_optimal",
    "partition_uniform",
]


@dataclass(frozen=True)
class Partition:
    """Contiguous stages over a chain of layers: stage j holds layers bounds[j]..bounds[j+1]-1.

    ``stage_costs`` are the stage times (layer costs summed, divided by the stage's
    device speed); ``stage_memory`` the summed layer memory, when memory was given.
    ``checkpoint[j]`` is True when stage j recomputes its activations in the backward
    (activation checkpointing) to fit its memory cap; empty means none does.
    """

    bounds: tuple[int, ...]
    stage_costs: tuple[float, ...]
    stage_memory: tuple[float, ...] | None
    method: str
    checkpoint: tuple[bool, ...] = ()

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
            if self.checkpoint and self.checkpoint[j]:
                mark = "  recomputes activations" + mark
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
    return Partition(tuple(bounds), stage_costs, stage_memory, method, (False,) * p)


def partition_optimal(
    costs: Sequence[float],
    stages: int,
    *,
    memory: Sequence[float] | None = None,
    memory_cap: float | Sequence[float] | None = None,
    activations: Sequence[float] | None = None,
    live: Sequence[int] | None = None,
    speeds: Sequence[float] | None = None,
    inputs: Sequence[float] | None = None,
    recompute: Sequence[float] | None = None,
    cuttable: Sequence[bool] | None = None,
) -> Partition:
    """The contiguous partition of ``costs`` into ``stages`` runs with the smallest slowest stage.

    ``memory`` (one value per layer) and ``memory_cap`` (one value, or one per stage)
    bound each stage's memory: the sum of its layers' ``memory``, plus, when given,
    ``live[j]`` times the sum of its layers' ``activations`` (stage j holds that many
    micro-batches' activations at its peak). ``speeds`` (one per stage, in pipeline
    order) divide a stage's cost, for devices of unequal speed. Exact, by dynamic
    programming.

    Activation checkpointing: with ``inputs`` (bytes of each layer's input, per
    micro-batch) and ``recompute`` (seconds each layer's forward takes again), a
    stage that does not fit its cap may keep only its first layer's input per live
    micro-batch and recompute the rest in its backward: memory ``memory + live[j] x
    inputs[first] + activations`` (one micro-batch recomputed at a time), time
    ``costs + recompute``. A stage checkpoints only when that is what makes it fit;
    ``Partition.checkpoint`` says which do.

    ``cuttable[i]`` False forbids a stage boundary after layer i (where layers pass
    something a boundary cannot pass).

    Ties: of the partitions whose slowest stage equals the optimum (within float
    rounding), the one whose cuts come earliest, so the answer never depends on the
    order in which sums were rounded; the earlier stages, which hold the most live
    micro-batches under 1F1B, get the least work.

    >>> partition_optimal([1, 1, 1, 3], 2).bounds
    (0, 3, 4)
    """
    _check_inputs(costs, stages)
    n, p = len(costs), stages
    caps = _per_stage(memory_cap, p, "memory_cap")
    sp = _per_stage(speeds, p, "speeds") or [1.0] * p
    if any(s <= 0 for s in sp):
        raise TrainError(f"device speeds must be > 0, got {sp}")
    if caps is not None and memory is None:
        raise TrainError("memory_cap needs memory: one value per layer (bytes)")
    if memory is not None and len(memory) != n:
        raise TrainError(f"memory has {len(memory)} values for {n} layers; give one per layer")
    if activations is not None and (memory is None or live is None or len(activations) != n):
        raise TrainError(
            "activations needs memory, and live (one count per stage), and one value per layer"
        )
    if (inputs is None) != (recompute is None) or (
        recompute is not None
        and (activations is None or len(recompute) != n or len(inputs or []) != n)
    ):
        raise TrainError(
            "checkpointing needs inputs and recompute, one value per layer each, and activations"
        )
    copies = [int(c) for c in live] if live is not None else [0] * p
    if len(copies) != p:
        raise TrainError(f"live gives {len(copies)} counts for {p} stages; give one per stage")
    cuts = _check_cuttable(cuttable, n, p)
    stage = _StageRule(costs, memory, activations, inputs, recompute, copies, caps, sp, cuts)

    inf = math.inf
    # best[j][i]: smallest bottleneck placing layers [0, i) on stages 0..j-1
    best = [[inf] * (n + 1) for _ in range(p + 1)]
    best[0][0] = 0.0
    for j in range(1, p + 1):
        # stage j-1 ends at i; the p-j later stages need at least one layer each
        for i in range(j, n - (p - j) + 1):
            for k in range(j - 1, i):
                if best[j - 1][k] == inf:
                    continue
                run = stage(j - 1, k, i)
                if run is not None and max(best[j - 1][k], run[0]) < best[j][i]:
                    best[j][i] = max(best[j - 1][k], run[0])
    if best[p][n] == inf:
        assert memory is not None and caps is not None
        more = f"use more stages (up to {n}), " if p < n else ""
        raise TrainError(
            f"no way to cut {n} layers into {p} stages with each stage's memory within "
            f"its cap {caps} (total memory {sum(memory):.4g}, largest layer {max(memory):.4g}). "
            f"Raise the memory cap, {more}or give the model smaller layers."
        )
    return stage.earliest(p, n, best[p][n] * (1 + 1e-9))


class _StageRule:
    """One stage's time and checkpointing for a run of layers, from prefix sums."""

    def __init__(
        self,
        costs: Sequence[float],
        memory: Sequence[float] | None,
        activations: Sequence[float] | None,
        inputs: Sequence[float] | None,
        recompute: Sequence[float] | None,
        live: Sequence[int],
        caps: Sequence[float] | None,
        speeds: Sequence[float],
        cuttable: Sequence[bool] | None = None,
    ) -> None:
        n = len(costs)
        self.cost = _prefix(costs)
        self.memory = _prefix(memory or [0.0] * n)
        self.acts = _prefix(activations or [0.0] * n)
        self.recompute = None if recompute is None else _prefix(recompute)
        self.inputs = list(inputs or [])
        self.live, self.caps, self.speeds = list(live), caps, list(speeds)
        self.has_memory = memory is not None
        self.cuttable = cuttable

    def __call__(self, s: int, k: int, i: int) -> tuple[float, bool, float] | None:
        """(time, checkpointed, memory) of layers [k, i) on stage s; None if over its cap."""
        if self.cuttable is not None and i < len(self.cuttable) and not self.cuttable[i - 1]:
            return None
        time = (self.cost[i] - self.cost[k]) / self.speeds[s]
        params = self.memory[i] - self.memory[k]
        acts = self.acts[i] - self.acts[k]
        kept = params + self.live[s] * acts
        cap = None if self.caps is None else self.caps[s]
        if cap is None or kept <= cap:
            return time, False, kept
        if self.recompute is not None:
            recomputing = params + self.live[s] * self.inputs[k] + acts
            if recomputing <= cap:
                extra = (self.recompute[i] - self.recompute[k]) / self.speeds[s]
                return time + extra, True, recomputing
        return None

    def earliest(self, p: int, n: int, limit: float) -> Partition:
        """The partition with the earliest cuts whose every stage fits and takes at most ``limit``."""
        # ok[s][k]: layers [k, n) fit on stages s..p-1 within the limit
        ok = [[False] * (n + 1) for _ in range(p + 1)]
        ok[p][n] = True

        def fits(s: int, k: int, i: int) -> bool:
            run = self(s, k, i)
            return run is not None and run[0] <= limit and ok[s + 1][i]

        for s in range(p - 1, -1, -1):
            for k in range(s, n - (p - s) + 1):
                ok[s][k] = any(fits(s, k, i) for i in range(k + 1, n - (p - 1 - s) + 1))
        assert ok[0][0], "the optimum's own partition is within the limit"
        bounds, times, mems, ckpt = [0], [], [], []
        for s in range(p):
            k = bounds[-1]
            i = next(i for i in range(k + 1, n - (p - 1 - s) + 1) if fits(s, k, i))
            run = self(s, k, i)
            assert run is not None
            bounds.append(i)
            times.append(run[0])
            ckpt.append(run[1])
            mems.append(run[2])
        return Partition(
            tuple(bounds),
            tuple(times),
            tuple(mems) if self.has_memory else None,
            "optimal",
            tuple(ckpt),
        )


def _check_cuttable(cuttable: Sequence[bool] | None, n: int, p: int) -> list[bool] | None:
    if cuttable is None:
        return None
    cuts = [bool(c) for c in cuttable]
    if len(cuts) != n:
        raise TrainError(f"cuttable has {len(cuts)} values for {n} layers; give one per layer")
    allowed = [i for i in range(n - 1) if cuts[i]]
    if len(allowed) < p - 1:
        raise TrainError(
            f"cannot cut {n} layers into {p} stages: a stage boundary must pass tensors, "
            f"and only {len(allowed)} places do (after layers {allowed}). Use --stages "
            f"{len(allowed) + 1} or fewer, or return tensors (a tensor, or a tuple or dict of them) from more layers."
        )
    return cuts


def _prefix(values: Sequence[float]) -> list[float]:
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out


def evaluate_partition(
    bounds: Sequence[int],
    costs: Sequence[float],
    *,
    memory: Sequence[float] | None = None,
    memory_cap: float | None = None,
    activations: Sequence[float] | None = None,
    live: Sequence[int] | None = None,
    speeds: Sequence[float] | None = None,
    inputs: Sequence[float] | None = None,
    recompute: Sequence[float] | None = None,
    cuttable: Sequence[bool] | None = None,
    method: str = "given",
) -> Partition:
    """Times, memory and checkpointing of given ``bounds``, by :func:`partition_optimal`'s rules.

    A stage over the cap that fits when it recomputes its activations checkpoints;
    one that fits neither way is kept as it is (its memory shows by how much it is over).
    """
    p = len(bounds) - 1
    bad = [b - 1 for b in bounds[1:-1] if cuttable is not None and not cuttable[b - 1]]
    if bad:
        raise TrainError(
            f"the {method} partition {tuple(bounds)} puts a stage boundary after layers {bad}, "
            f"which pass something other than tensors; a stage boundary must pass tensors. Use the "
            f"optimal partition, which cuts only where one does."
        )
    sp = _per_stage(speeds, p, "speeds") or [1.0] * p
    caps = None if memory_cap is None else [memory_cap] * p
    copies = [int(c) for c in live] if live is not None else [0] * p
    stage = _StageRule(costs, memory, activations, inputs, recompute, copies, caps, sp)
    free = _StageRule(costs, memory, activations, None, None, copies, None, sp)
    runs = [
        stage(s, bounds[s], bounds[s + 1]) or free(s, bounds[s], bounds[s + 1]) for s in range(p)
    ]
    assert all(r is not None for r in runs)
    return Partition(
        tuple(bounds),
        tuple(r[0] for r in runs if r),
        tuple(r[2] for r in runs if r) if memory is not None else None,
        method,
        tuple(r[1] for r in runs if r),
    )


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
