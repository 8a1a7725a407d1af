"""Measure each layer of a sequential model: forward, input-gradient and weight-gradient time, memory.

:class:`ModelProfile` is plain data (the planner needs no torch), saved and loaded
as JSON; :func:`profile_model` fills it with PyTorch, which it imports only when called.

Each layer runs alone on the output the previous layers gave the sample, so its
time is its own. What passes between layers may be a tensor or nested tuples,
lists and dicts of tensors (see ``_trees.py``): every floating-point tensor in
the input gets a gradient, and bytes are summed over all of them. Backward is
timed twice per layer: gradients for the layer's input only (I, what the
previous stage waits for), then for input and weights together (B); W = B - I.

Sizes: a layer's time is not proportional to its rows (dispatch and small
kernels cost the same at 4 rows as at 400), so the profile measures every layer
at each row count in ``rows``, the micro-batch sizes the plan will consider, and
:meth:`ModelProfile.scaled` reads those measurements, interpolating linearly
between measured sizes for any other.

Statistic: each time is the median of the fastest half of ``repeats`` runs,
after ``warmup`` runs. Other processes on a shared machine only ever add time,
so the slow half is dropped; but the single fastest run is one extreme draw
(a boosted clock, a lucky cache) that moves from call to call more than the
runs next to it do, so the middle of the fast half is kept: one outlier on
either side cannot move it. The profile cache (``_profile_cache.py``) then
makes a measurement reproducible outright: the same model is timed once.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conveyor.train._errors import TrainError, require_torch
from conveyor.train._layer_errors import LayerFailure, layer_error
from conveyor.train._trees import (
    crosses_a_cut,
    leaves,
    map_tensors,
    nbytes,
    rows_of,
    take_rows,
)

__all__ = ["LayerProfile", "ModelProfile", "SizeTimes", "as_layers", "profile_model"]

FORMAT = "conveyor.train.ModelProfile/1"


@dataclass(frozen=True)
class LayerProfile:
    """One layer at the profile's largest batch: seconds, and bytes.

    ``forward``/``backward``/``weight`` are F, I and W times; the ``*_fixed`` parts
    do not shrink with the batch (the straight line through the smallest and
    largest sizes measured, at 0 rows). ``activation_bytes`` is what autograd keeps
    for the backward pass, ``output_bytes`` what a stage boundary after it would
    send, ``input_bytes`` what a stage starting at it keeps per micro-batch when it
    recomputes its activations. ``output_crosses`` is False when the layer returns
    something a stage boundary cannot pass (anything but a tensor, or a tuple, list or
    dict of tensors): the planner puts no stage boundary after it.
    """

    name: str
    forward: float
    backward: float
    weight: float
    forward_fixed: float
    backward_fixed: float
    weight_fixed: float
    params: int
    param_bytes: int
    activation_bytes: int
    output_bytes: int
    input_bytes: int = 0
    output_crosses: bool = True


@dataclass(frozen=True)
class SizeTimes:
    """Every layer's measured (F, I, W) seconds at a micro-batch of ``rows`` rows."""

    rows: int
    times: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class ModelProfile:
    """Per-layer measurements of a model; bytes and ``layers`` times at ``batch`` rows.

    ``sizes`` holds the times at every row count measured (empty for a profile
    written by hand: then times scale as fixed + per-row parts). ``key`` is the
    cache key it was measured under, ``repeats`` the runs per time.
    """

    layers: tuple[LayerProfile, ...]
    batch: int
    sizes: tuple[SizeTimes, ...] = ()
    repeats: int = 0
    key: str = ""

    def scaled(self, rows: int) -> list[tuple[float, float, float]]:
        """(F, I, W) seconds of each layer for a micro-batch of ``rows`` rows.

        Measured sizes are returned as measured; between two, linear interpolation;
        outside them, the line through the nearest two (never below zero).
        """
        points = sorted(self.sizes, key=lambda s: s.rows)
        for s in points:
            if s.rows == rows:
                return list(s.times)
        if len(points) >= 2:
            hi = next((k for k, s in enumerate(points) if s.rows > rows), len(points) - 1)
            a, b = points[max(hi, 1) - 1], points[max(hi, 1)]
            k = (rows - a.rows) / (b.rows - a.rows)
            return [
                (
                    max(0.0, fa + (fb - fa) * k),
                    max(0.0, ia + (ib - ia) * k),
                    max(0.0, wa + (wb - wa) * k),
                )
                for (fa, ia, wa), (fb, ib, wb) in zip(a.times, b.times, strict=True)
            ]
        k = rows / self.batch
        return [
            (
                lp.forward_fixed + (lp.forward - lp.forward_fixed) * k,
                lp.backward_fixed + (lp.backward - lp.backward_fixed) * k,
                lp.weight_fixed + (lp.weight - lp.weight_fixed) * k,
            )
            for lp in self.layers
        ]

    def step_compute(self, rows: int) -> float:
        """Seconds of one forward and backward of the whole model on ``rows`` rows."""
        return sum(f + i + w for f, i, w in self.scaled(rows))

    @property
    def fit_error(self) -> tuple[float, int]:
        """How far a fixed + per-row line is from the measurements: (relative error, at rows).

        The line runs through the smallest and largest sizes measured; the error is
        the largest, over the sizes between, of |line - measured| / measured for the
        whole model's F + I + W. (0.0, 0) with fewer than three sizes.
        """
        points = sorted(self.sizes, key=lambda s: s.rows)
        if len(points) < 3:
            return 0.0, 0

        def total(s: SizeTimes) -> float:
            return sum(sum(t) for t in s.times)

        a, b = points[0], points[-1]
        worst = (0.0, 0)
        for s in points[1:-1]:
            line = total(a) + (total(b) - total(a)) * (s.rows - a.rows) / (b.rows - a.rows)
            if total(s) > 0:
                worst = max(worst, (abs(line - total(s)) / total(s), s.rows))
        return worst

    def describe(self) -> str:
        rows = ", ".join(str(s.rows) for s in sorted(self.sizes, key=lambda s: s.rows))
        lines = [f"profile at batch {self.batch}:  F / I / W ms, params, activations"]
        if rows:
            error, at = self.fit_error
            fit = f"; a straight line misses by {error:.0%} at {at} rows" if at else ""
            lines[0] += f"  (measured at rows {rows}{fit})"
        for i, lp in enumerate(self.layers):
            lines.append(
                f"  {i:>3} {lp.name:<24} {lp.forward * 1e3:7.3f} {lp.backward * 1e3:7.3f} "
                f"{lp.weight * 1e3:7.3f}  {lp.params:>9,}  {lp.activation_bytes / 2**10:9.1f} KiB"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``json.dumps(profile.to_dict())``; floats round-trip exactly."""
        return {
            "format": FORMAT,
            "batch": self.batch,
            "repeats": self.repeats,
            "key": self.key,
            "layers": [asdict(lp) for lp in self.layers],
            "sizes": [{"rows": s.rows, "times": [list(t) for t in s.times]} for s in self.sizes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelProfile:
        """The profile :meth:`to_dict` wrote; TrainError for anything else."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise TrainError(f"not a conveyor model profile: format {found!r}, expected {FORMAT!r}")
        try:
            return cls(
                layers=tuple(LayerProfile(**lp) for lp in data["layers"]),
                batch=int(data["batch"]),
                sizes=tuple(
                    SizeTimes(int(s["rows"]), tuple((t[0], t[1], t[2]) for t in s["times"]))
                    for s in data["sizes"]
                ),
                repeats=int(data.get("repeats", 0)),
                key=str(data.get("key", "")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise TrainError(f"a damaged model profile ({type(exc).__name__}: {exc})") from None

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON to ``path`` (to pin it: ``train(..., profile=path)``)."""
        import json

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=1))
        return out

    @classmethod
    def load(cls, path: str | Path) -> ModelProfile:
        """The profile saved at ``path``; TrainError when it is missing or not a profile."""
        import json

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise TrainError(f"cannot read the model profile {path}: {exc}") from None
        return cls.from_dict(data)


def as_layers(model: Any, *, rows: int | None = None) -> list[Any]:
    """The layers of ``model``: an ``nn.Sequential``'s children, a list of modules, or
    the pieces of a :class:`~conveyor.train.Traced` model (traced for inputs of
    ``rows`` rows when given: the runtime's micro-batch).

    Raises TrainError for anything else, since pipeline stages cut a chain.
    """
    require_torch()
    from torch import nn

    from conveyor.train._traced import Traced

    if isinstance(model, Traced):
        layers = model.layers(rows)
    elif isinstance(model, nn.Sequential):
        layers = list(model.children())
    elif isinstance(model, (list, tuple, nn.ModuleList)) and all(
        isinstance(m, nn.Module) for m in model
    ):
        layers = list(model)
    else:
        raise TrainError(
            f"conveyor.train cuts a model given as a sequence of layers, got "
            f"{type(model).__name__}. Return an nn.Sequential (or a list of nn.Module) "
            f"from your model factory, e.g. nn.Sequential(embed, *blocks, head), or "
            f"conveyor.train.Traced(model, split_points=[...], sample=...) for a model with its own forward."
        )
    if not layers:
        raise TrainError("the model has no layers: the nn.Sequential is empty")
    return layers


Clock = Callable[[], float]


def robust_time(samples: Sequence[float]) -> float:
    """The median of the fastest half of ``samples`` (see the module's docstring for why)."""
    fastest = sorted(samples)[: (len(samples) + 1) // 2]
    return float(statistics.median(fastest))


def _measure(fn: Callable[[], Any], repeats: int, warmup: int, clock: Clock) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return robust_time(samples)


def _with_grad(x: Any) -> Any:
    """A fresh leaf for every tensor in ``x``; floating-point ones require grad."""
    return map_tensors(lambda t: t.detach().requires_grad_(t.is_floating_point()), x)


def _differentiable(out: Any) -> list[Any]:
    return [t for t in leaves(out) if t.requires_grad]


def _time_layer(
    layer: Any, x: Any, repeats: int, warmup: int, clock: Clock
) -> tuple[float, float, float, Any]:
    import torch

    params = [p for p in layer.parameters() if p.requires_grad]
    inp = _with_grad(x)
    try:
        out = layer(inp)
    except Exception as exc:
        raise LayerFailure("forward", exc) from exc
    grads = [torch.ones_like(t) for t in _differentiable(out)]
    inputs_i = [t for t in leaves(inp) if t.requires_grad]

    def forward() -> None:
        with torch.no_grad():
            layer(inp)

    def fwd_bwd(targets: Sequence[Any]) -> Callable[[], None]:
        def run() -> None:
            outs = _differentiable(layer(inp))
            if targets and outs:
                torch.autograd.grad(outs, list(targets), grads, allow_unused=True)

        return run

    try:
        f = _measure(forward, repeats, warmup, clock)
        # backward alone = (forward with graph + backward) - forward with graph
        with_graph = _measure(fwd_bwd([]), repeats, warmup, clock)
        t_input = max(0.0, _measure(fwd_bwd(inputs_i), repeats, warmup, clock) - with_graph)
        t_full = max(
            t_input, _measure(fwd_bwd(inputs_i + params), repeats, warmup, clock) - with_graph
        )
    except Exception as exc:
        raise LayerFailure("backward", exc) from exc
    return f, t_input, t_full - t_input, map_tensors(lambda t: t.detach(), out)


def _saved_bytes(layer: Any, x: Any) -> int:
    """Bytes autograd saves for backward when ``layer`` runs on ``x``."""
    import torch

    total = 0
    # parameters (and views of them, like a Linear's transposed weight) are not activations
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    seen: set[tuple[int, tuple[int, ...]]] = set()

    def pack(t: Any) -> Any:
        nonlocal total
        key = (t.data_ptr(), tuple(t.shape))
        if t.untyped_storage().data_ptr() not in params and key not in seen:
            seen.add(key)
            # the tensor's own bytes: a slice of a larger batch keeps only its rows
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(_with_grad(x))
    return total


def _fixed(small: float, large: float, k: float) -> float:
    # t(r) = a + c·r through (k·n, small) and (n, large): a = (small - k·large) / (1 - k),
    # kept within [0, large]
    return min(large, max(0.0, (small - k * large) / (1 - k)))


def profile_model(
    model: Any,
    sample: Any,
    *,
    rows: Sequence[int] | None = None,
    repeats: int = 5,
    warmup: int = 2,
    clock: Clock = time.perf_counter,
) -> ModelProfile:
    """Profile every layer of ``model`` on ``sample`` at each micro-batch size in ``rows``.

    ``sample`` is the model's input for at least ``max(rows)`` rows: a tensor, or
    nested tuples, lists or dicts of tensors; ``rows`` defaults to the sample's rows
    and half of them. ``clock`` returns seconds; tests pass a fake one that the
    layers advance (see :func:`~conveyor.train._emulate.sleep_layer`'s ``sleep``).
    A layer that raises is reported as a TrainError naming it, what it was given,
    and what to change.

    >>> prof = profile_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), torch.randn(4, 8))
    >>> prof.layers[0].params
    72
    """
    layers = as_layers(model)
    try:
        n = rows_of(sample)
    except ValueError:
        raise TrainError(
            "the sample has no tensor with a batch dimension; pass the model's inputs for "
            "one batch (a tensor, or tuples, lists or dicts of tensors)"
        ) from None
    sizes = sorted(set(rows)) if rows else sorted({n, max(1, n // 2)})
    if sizes[0] < 1 or sizes[-1] > n:
        raise TrainError(f"cannot profile at rows {sizes}: the sample has {n} rows")
    if repeats < 1:
        raise TrainError(f"repeats must be at least 1, got {repeats}")
    top = sizes[-1]
    xs = {r: take_rows(sample, r) for r in sizes}
    times: dict[int, list[tuple[float, float, float]]] = {r: [] for r in sizes}
    results = []
    for i, layer in enumerate(layers):
        outs = {}
        for r in reversed(sizes):  # the whole sample first: an error shows the data's shape
            try:
                f, b, w, outs[r] = _time_layer(layer, xs[r], repeats, warmup, clock)
            except LayerFailure as failure:
                raise layer_error(layers, i, xs[r], failure) from None
            times[r].append((f, b, w))
        f, b, w = times[top][-1]
        fixed = (0.0, 0.0, 0.0)
        if len(sizes) >= 2:
            k = sizes[0] / top
            fs, bs, ws = times[sizes[0]][-1]
            fixed = (_fixed(fs, f, k), _fixed(bs, b, k), _fixed(ws, w, k))
        results.append(
            LayerProfile(
                name=f"{i}:{type(layer).__name__}",
                forward=f,
                backward=b,
                weight=w,
                forward_fixed=fixed[0],
                backward_fixed=fixed[1],
                weight_fixed=fixed[2],
                params=sum(p.numel() for p in layer.parameters()),
                param_bytes=sum(p.numel() * p.element_size() for p in layer.parameters()),
                activation_bytes=_saved_bytes(layer, xs[top]),
                output_bytes=nbytes(outs[top]),
                input_bytes=nbytes(xs[top]),
                output_crosses=crosses_a_cut(outs[top]),
            )
        )
        xs = outs
    measured = tuple(SizeTimes(r, tuple(times[r])) for r in sizes)
    return ModelProfile(tuple(results), top, measured, repeats)
