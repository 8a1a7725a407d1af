"""Measure each layer of a sequential model: forward, input-gradient and weight-gradient time, memory.

:class:`ModelProfile` is plain data (the planner needs no torch); :func:`profile_model`
fills it with PyTorch, which it imports only when called.

Each layer runs alone on the output the previous layers gave the sample, so its
time is its own. Backward is timed twice per layer: gradients for the layer's
input only (I, what the previous stage waits for), then for input and weights
together (B); W = B - I. Every time is the fastest of ``repeats`` runs after
``warmup`` runs (other processes only ever add time). Timing at the sample's batch n and at n/2 splits each time into
a part that scales with the micro-batch and a fixed part (dispatch, small
kernels), so the planner can predict smaller micro-batches honestly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.train._errors import TrainError, require_torch

__all__ = ["LayerProfile", "ModelProfile", "as_layers", "profile_model"]


@dataclass(frozen=True)
class LayerProfile:
    """One layer at the profiled batch: seconds, and bytes.

    ``forward``/``backward``/``weight`` are F, I and W times; the ``*_fixed`` parts
    do not shrink with the batch. ``activation_bytes`` is what autograd keeps for
    the backward pass, ``output_bytes`` what a stage boundary after it would send.
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


@dataclass(frozen=True)
class ModelProfile:
    """Per-layer measurements of a model on a sample micro-batch of ``batch`` rows."""

    layers: tuple[LayerProfile, ...]
    batch: int

    def scaled(self, rows: int) -> list[tuple[float, float, float]]:
        """(F, I, W) seconds of each layer for a micro-batch of ``rows`` rows."""
        k = rows / self.batch
        return [
            (
                lp.forward_fixed + (lp.forward - lp.forward_fixed) * k,
                lp.backward_fixed + (lp.backward - lp.backward_fixed) * k,
                lp.weight_fixed + (lp.weight - lp.weight_fixed) * k,
            )
            for lp in self.layers
        ]

    def describe(self) -> str:
        lines = [f"profile at batch {self.batch}:  F / I / W ms, params, activations"]
        for i, lp in enumerate(self.layers):
            lines.append(
                f"  {i:>3} {lp.name:<24} {lp.forward * 1e3:7.3f} {lp.backward * 1e3:7.3f} "
                f"{lp.weight * 1e3:7.3f}  {lp.params:>9,}  {lp.activation_bytes / 2**10:9.1f} KiB"
            )
        return "\n".join(lines)


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


def _min_time(fn: Callable[[], Any], repeats: int, warmup: int, clock: Clock) -> float:
    # the fastest run: other processes on the machine only ever add time
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return min(samples)


def _time_layer(
    layer: Any, x: Any, repeats: int, warmup: int, clock: Clock
) -> tuple[float, float, float, Any]:
    import torch

    params = [p for p in layer.parameters() if p.requires_grad]
    inp = x.detach().requires_grad_(x.is_floating_point())
    out = layer(inp)
    grad_out = torch.ones_like(out) if out.is_floating_point() else None
    inputs_i = [inp] if inp.requires_grad else []

    def forward() -> None:
        with torch.no_grad():
            layer(inp)

    def fwd_bwd(targets: Sequence[Any]) -> Callable[[], None]:
        def run() -> None:
            o = layer(inp)
            if targets and o.requires_grad:
                torch.autograd.grad(o, list(targets), grad_out, allow_unused=True)

        return run

    f = _min_time(forward, repeats, warmup, clock)
    # backward alone = (forward with graph + backward) - forward with graph
    with_graph = _min_time(fwd_bwd([]), repeats, warmup, clock)
    t_input = max(0.0, _min_time(fwd_bwd(inputs_i), repeats, warmup, clock) - with_graph)
    t_full = max(
        t_input, _min_time(fwd_bwd(inputs_i + params), repeats, warmup, clock) - with_graph
    )
    return f, t_input, t_full - t_input, out.detach()


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

    inp = x.detach().requires_grad_(x.is_floating_point())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(inp)
    return total


def profile_model(
    model: Any,
    sample: Any,
    *,
    repeats: int = 5,
    warmup: int = 2,
    clock: Clock = time.perf_counter,
) -> ModelProfile:
    """Profile every layer of ``model`` on ``sample`` (one micro-batch of inputs).

    ``clock`` returns seconds; tests pass a fake one that the layers advance (see
    :func:`~conveyor.train._emulate.sleep_layer`'s ``sleep``).

    >>> prof = profile_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), torch.randn(4, 8))
    >>> prof.layers[0].params
    72
    """
    layers = as_layers(model)
    n = int(sample.shape[0])
    half = sample[: max(1, n // 2)]
    results = []
    x_full, x_half = sample, half
    for i, layer in enumerate(layers):
        f, b, w, out = _time_layer(layer, x_full, repeats, warmup, clock)
        if n >= 2:
            fh, bh, wh, out_half = _time_layer(layer, x_half, repeats, warmup, clock)
            k = x_half.shape[0] / n

            def fixed(full: float, part: float, k: float = k) -> float:
                # t(n) = a + c·n; a = (t(kn) - k·t(n)) / (1 - k), kept within [0, t(n)]
                return min(full, max(0.0, (part - k * full) / (1 - k)))

            fixed_parts = (fixed(f, fh), fixed(b, bh), fixed(w, wh))
        else:
            fixed_parts, out_half = (0.0, 0.0, 0.0), out
        params = sum(p.numel() for p in layer.parameters())
        results.append(
            LayerProfile(
                name=f"{i}:{type(layer).__name__}",
                forward=f,
                backward=b,
                weight=w,
                forward_fixed=fixed_parts[0],
                backward_fixed=fixed_parts[1],
                weight_fixed=fixed_parts[2],
                params=params,
                param_bytes=sum(p.numel() * p.element_size() for p in layer.parameters()),
                activation_bytes=_saved_bytes(layer, x_full),
                output_bytes=out.numel() * out.element_size(),
            )
        )
        x_full, x_half = out, out_half
    return ModelProfile(tuple(results), n)
