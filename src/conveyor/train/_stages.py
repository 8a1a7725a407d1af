"""A rank's pipeline stages: the layers they hold, what crosses each cut, tied parameters.

Three things torch's ``PipelineStage`` leaves to its caller, done here so a model
trains pipelined exactly as it would in one process:

- **What crosses a cut.** torch sends a tensor or a tuple of tensors between
  stages and passes a tuple's items to the next stage as arguments. A layer may
  return a tensor, a tuple (or list) of tensors, or a dict of tensors;
  :class:`StageModule` flattens a dict to its values in key order and packs them
  back on the other side, so each layer sees exactly what it would in one process.
- **Shapes without side effects.** Left to itself, ``PipelineStage`` infers the
  shapes it sends by running a train-mode forward on uninitialised memory, which
  updates BatchNorm's running statistics with garbage. :func:`infer_boundaries`
  runs the model once on the first real micro-batch under ``no_grad`` with every
  buffer and the random state restored afterwards, and each stage is then given
  its input and output shapes (torch's static mode), so it never runs a forward of
  its own.
- **Tied parameters.** A parameter used by layers on two stages (an embedding
  tied to the output layer) is one tensor in one process; across ranks each rank
  holds a copy. :func:`tied_parameters` finds them; the runtime sums their
  gradients over the ranks holding a copy, so the copies stay equal.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from conveyor.train._errors import TrainError

__all__ = [
    "Boundary",
    "StageModule",
    "TiedParameter",
    "flatten",
    "global_state",
    "infer_boundaries",
    "tied_parameters",
    "unflatten",
]

# A value between layers: ("tensor",), ("tuple", n) or ("dict", keys)
Structure = tuple[Any, ...]
TENSOR: Structure = ("tensor",)


def flatten(value: Any, where: str) -> tuple[tuple[torch.Tensor, ...], Structure]:
    """The tensors in ``value`` (a tensor, a tuple or list of tensors, a dict of tensors)."""
    if isinstance(value, torch.Tensor):
        return (value,), TENSOR
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, torch.Tensor) for v in value)
    ):
        return tuple(value), ("tuple", len(value))
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(v, torch.Tensor) for v in value.values())
    ):
        keys = tuple(sorted(value))
        return tuple(value[k] for k in keys), ("dict", keys)
    raise TrainError(
        f"{where} returned {_describe(value)}; between layers conveyor.train passes a tensor, "
        "a tuple of tensors or a dict of tensors. Return one of those (keep other values "
        "as module attributes)"
    )


def unflatten(tensors: Sequence[torch.Tensor], structure: Structure) -> Any:
    """The value :func:`flatten` took apart."""
    if structure[0] == "tensor":
        return tensors[0]
    if structure[0] == "tuple":
        return tuple(tensors)
    return dict(zip(structure[1], tensors, strict=True))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of [{', '.join(_describe(v) for v in value)}]"
    if isinstance(value, dict):
        return "dict of {" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


@dataclass(frozen=True)
class Boundary:
    """What crosses one cut: its structure and each tensor's shape, dtype and need for a gradient."""

    structure: Structure
    tensors: tuple[tuple[tuple[int, ...], str, bool], ...]

    def examples(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Uninitialised tensors of these shapes, for ``PipelineStage``'s static metadata."""
        return tuple(
            torch.empty(shape, dtype=getattr(torch, dtype), device=device).requires_grad_(grad)
            for shape, dtype, grad in self.tensors
        )


class StageModule(nn.Module):
    """Layers ``[first, first + len(layers))`` of the model as one pipeline stage.

    Takes what the previous stage sent (torch passes a tuple's items as arguments),
    packs it as the first layer expects, runs the layers in order, and returns a
    tensor or a tuple. An error in a layer becomes a :class:`TrainError` that names
    the stage, the layer and the shapes it was given. ``recompute`` drops the
    stage's activations after the forward and recomputes them in the backward
    (``torch.utils.checkpoint``, random state preserved).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        *,
        stage: int,
        first: int,
        inputs: Structure = TENSOR,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.stage, self.first, self.inputs = stage, first, inputs
        self.autocast = autocast
        self.recompute = recompute

    def forward(self, *args: torch.Tensor) -> Any:
        if self.recompute and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            # the recomputation in the backward runs the forward again: it must not
            # update BatchNorm's running statistics a second time
            return checkpoint(
                self._run, *args, use_reentrant=False, context_fn=self._recompute_contexts
            )
        return self._run(*args)

    def _recompute_contexts(self) -> tuple[Any, Any]:
        return contextlib.nullcontext(), buffers_kept([self.layers])

    def _run(self, *args: torch.Tensor) -> Any:
        value = unflatten(args, self.inputs)
        with self.autocast() if self.autocast is not None else contextlib.nullcontext():
            for i, layer in enumerate(self.layers):
                value = self.call(layer, self.first + i, value)
        tensors, structure = flatten(value, self.where(self.first + len(self.layers) - 1))
        return tensors[0] if structure == TENSOR else tensors

    def where(self, index: int) -> str:
        return (
            f"stage {self.stage}, layer {index} ({type(self.layers[index - self.first]).__name__})"
        )

    def call(self, layer: nn.Module, index: int, value: Any) -> Any:
        try:
            return layer(value)
        except Exception as exc:
            if isinstance(exc, TrainError) or type(exc).__module__.startswith("torch"):
                raise  # already clear, or torch's own control flow (checkpoint's early stop)
            raise TrainError(
                f"{self.where(index)} failed on input {_describe(value)}: "
                f"{type(exc).__name__}: {exc}. Check that the data's shape matches what the "
                "model expects and that each layer's output fits the next layer"
            ) from exc


@contextlib.contextmanager
def buffers_kept(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run the body with every buffer (BatchNorm's running statistics, counters) put back
    as it was afterwards, by name: moving a module between devices replaces its buffers."""
    saved = [{n: b.detach().clone() for n, b in m.named_buffers()} for m in modules]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in zip(modules, saved, strict=True):
                for name, value in buffers.items():
                    module.get_buffer(name).copy_(value)


@contextlib.contextmanager
def _unchanged(modules: Sequence[nn.Module], device: torch.device) -> Iterator[None]:
    """Run the body under ``no_grad`` with every buffer and the random state restored."""
    devices = [device] if device.type == "cuda" else []
    with buffers_kept(modules), torch.random.fork_rng(devices=devices), torch.no_grad():
        yield


def infer_boundaries(
    layers: Sequence[nn.Module],
    bounds: Sequence[int],
    sample: torch.Tensor,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> list[Boundary]:
    """What enters each stage (index s) and leaves the last (index n), from one micro-batch.

    Runs the whole model once on ``sample``, changing nothing (buffers, random state).
    Each layer visits ``device`` only while it runs, so a model too large for one
    device still fits.
    """
    starts = set(bounds[:-1])
    boundaries: list[Boundary] = []
    probe = StageModule(list(layers), stage=0, first=0)
    with _unchanged(layers, device), autocast() if autocast else contextlib.nullcontext():
        value: Any = sample.to(device)
        for i, layer in enumerate(layers):
            if i in starts:
                boundaries.append(_boundary(value, first=i == 0, where=f"the input of layer {i}"))
            probe.stage = bisect.bisect_right(bounds, i) - 1
            layer.to(device)
            value = probe.call(layer, i, value)
            if device.type != "cpu":
                layer.to("cpu")
        boundaries.append(_boundary(value, first=False, where=probe.where(len(layers) - 1)))
    return boundaries


def _boundary(value: Any, *, first: bool, where: str) -> Boundary:
    tensors, structure = flatten(value, where)
    return Boundary(
        structure,
        tuple(
            (
                tuple(t.shape),
                str(t.dtype).removeprefix("torch."),
                not first and t.is_floating_point(),
            )
            for t in tensors
        ),
    )


@dataclass(frozen=True)
class TiedParameter:
    """A parameter that layers on several stages share, by its name on each of them.

    ``names`` maps each stage holding it to the parameter's global name
    (``"layer.rest"``) on that stage's first layer using it.
    """

    names: dict[int, str]


def tied_parameters(layers: Sequence[nn.Module], bounds: Sequence[int]) -> list[TiedParameter]:
    """Parameters shared by layers on more than one stage, in layer order."""
    seen: dict[int, dict[int, str]] = {}
    for s in range(len(bounds) - 1):
        for i in range(bounds[s], bounds[s + 1]):
            for local, param in layers[i].named_parameters(remove_duplicate=False):
                seen.setdefault(id(param), {}).setdefault(s, f"{i}.{local}")
    return [TiedParameter(names) for names in seen.values() if len(names) > 1]


def parameter_by_name(module: StageModule, name: str) -> nn.Parameter | None:
    """The parameter ``name`` (global ``"layer.rest"``) if this stage holds that layer."""
    index, rest = name.split(".", 1)
    local = int(index) - module.first
    if not 0 <= local < len(module.layers):
        return None
    found = module.layers[local].get_parameter(rest)
    assert isinstance(found, nn.Parameter)
    return found


def global_state(modules: dict[int, StageModule]) -> dict[str, torch.Tensor]:
    """The stages' parameters and buffers keyed as in the whole model's state dict."""
    out = {}
    for module in modules.values():
        for name, value in module.layers.state_dict().items():
            local, rest = name.split(".", 1)
            out[f"{module.first + int(local)}.{rest}"] = value.detach().cpu().clone()
    return out
