"""Models that are not a sequence of layers, cut by torch's tracer at named submodules.

A model whose ``forward`` is its own (a GPT class, a network with skip connections)
has no list of layers to cut. :class:`Traced` names where the cuts may go instead:

    def make_model():
        return Traced(GPT(), split_points=["blocks.2"], sample=torch.zeros(1, 64, dtype=torch.long))

Each split point is a submodule's name, as ``model.named_modules()`` gives it; a
cut goes just before that submodule runs (torch's ``SplitPoint.BEGINNING``), so
k split points make k + 1 *pieces*. ``torch.distributed.pipelining.pipeline``
traces the whole forward with ``torch.export`` and ``pipe.get_stage_module(i)``
gives each piece as a graph module whose inputs are the values that cross the
cut, as positional arguments. To the rest of conveyor a piece is one layer
(:class:`TracedPiece` spreads a tuple over its arguments), so the profiler, the
partitioner and the runtime treat it like any layer: with as many pieces as
stages each piece is one stage, with more the partitioner groups neighbours.

Three things the tracer leaves to its caller:

- **Shapes are fixed at tracing.** ``torch.export`` records every ``view`` with
  the sample's sizes, so a graph runs only on inputs of the rows it was traced
  at. The runtime traces at its micro-batch's rows (``rows``), taking the
  sample's first row repeated; elsewhere (the profiler's two batch sizes) a piece
  traces again the first time it meets new rows, on the same parameters.
- **Tied parameters.** ``pipeline()`` copies a parameter that several pieces use
  into each of them (its ``MultiUseParameterConfig.REPLICATE``), and the copies
  would then train apart. Every piece's parameters and buffers are replaced by
  the model's own tensors of the same name, so a tied weight is one tensor again,
  which the runtime's tied-parameter handling keeps equal across ranks.
- **The model is left as it was.** ``pipeline()`` replaces each split point's
  ``forward`` to mark the cut; the original is put back after tracing.

The graph is traced in the mode the model is in (training): layers that behave
differently under ``model.eval()`` (dropout, batch norm) keep their training
behaviour in evaluation too. The pipelined run's weights come back keyed by
piece (``"1.blocks.2.attn.qkv.weight"``); :meth:`Traced.model_state` turns them
into the model's own state dict.
"""

from __future__ import annotations

import difflib
import functools
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.train._errors import TrainError, require_torch

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Traced"]

_ABSENT = object()


class Traced:
    """An ``nn.Module`` with its own ``forward``, to be cut at ``split_points``.

    ``sample`` is one example input (a tensor of any number of rows; only its
    first row, shape and dtype are used). Return a ``Traced`` from a model
    factory where an ``nn.Sequential`` would go. Raises :class:`TrainError`
    when a split point names no submodule.
    """

    def __init__(self, model: Any, *, split_points: Sequence[str], sample: Any) -> None:
        require_torch()
        import torch
        from torch import nn

        if not isinstance(model, nn.Module):
            raise TrainError(f"Traced takes an nn.Module, got {type(model).__name__}")
        if isinstance(split_points, str) or not all(isinstance(p, str) for p in split_points):
            raise TrainError(
                f"split_points must be a list of submodule names, got {split_points!r}; "
                "e.g. split_points=['blocks.2']"
            )
        if not isinstance(sample, torch.Tensor) or sample.dim() == 0 or len(sample) == 0:
            raise TrainError(
                "sample must be a tensor with at least one row, shaped like one batch of "
                f"the model's input, got {_describe(sample)}"
            )
        names = [name for name, _ in model.named_modules() if name]
        for point in split_points:
            if point not in names:
                raise TrainError(
                    f"split point {point!r} is not a submodule of {type(model).__name__}"
                    f"{_suggest(point, names)}. Name the submodule a cut goes before as "
                    f"model.named_modules() spells it; the outer ones are {_outer(names)}"
                )
        if len(set(split_points)) != len(split_points):
            raise TrainError(f"split_points {list(split_points)} name a submodule twice")
        self.model = model
        self.split_points = list(split_points)
        self.sample = sample
        self._graphs: dict[int, list[nn.Module]] = {}

    def __repr__(self) -> str:
        return f"Traced({type(self.model).__name__}, split_points={self.split_points})"

    def layers(self, rows: int | None = None) -> list[nn.Module]:
        """The pieces, traced for inputs of ``rows`` rows (default: the sample's).

        With ``rows`` given a piece runs only on that many rows and keeps no
        reference to the whole model (the runtime's case: each rank keeps only its
        own pieces); without, a piece traces again when it meets other rows.
        """
        at = int(self.sample.shape[0]) if rows is None else rows
        piece = _piece_class()
        return [
            piece(graph, index=i, rows=at, retrace=None if rows is not None else self)
            for i, graph in enumerate(self.graphs(at))
        ]

    def graphs(self, rows: int) -> list[nn.Module]:
        """The pieces' graph modules for inputs of ``rows`` rows, on the model's own tensors."""
        if rows not in self._graphs:
            self._graphs[rows] = self._trace(rows)
        return self._graphs[rows]

    def _trace(self, rows: int) -> list[nn.Module]:
        from torch.distributed.pipelining import SplitPoint, pipeline

        example = self.sample[:1].expand(rows, *self.sample.shape[1:]).clone()
        points = [self.model.get_submodule(p) for p in self.split_points]
        # pipeline() marks each cut by replacing the submodule's forward: put them back after
        saved = [
            (vars(m).get("forward", _ABSENT), vars(m).get("_orig_forward", _ABSENT)) for m in points
        ]
        try:
            with warnings.catch_warnings():
                # torch's own pytree deprecation notices, raised inside pipeline()
                warnings.simplefilter("ignore", FutureWarning)
                pipe = pipeline(
                    self.model,
                    mb_args=(example,),
                    split_spec={p: SplitPoint.BEGINNING for p in self.split_points},
                )
        except Exception as exc:
            # torch's own message is generic; the first line of its cause says what broke
            reason = (str(exc.__cause__ or exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TrainError(
                f"torch.export could not trace {type(self.model).__name__} on a sample of "
                f"shape {tuple(example.shape)}: {reason[:300]}. Tracing needs one graph for "
                "the whole forward (no control flow on tensor values); otherwise return "
                "the model as an nn.Sequential of layers"
            ) from exc
        finally:
            for module, (forward, original) in zip(points, saved, strict=True):
                _restore(module, "forward", forward)
                _restore(module, "_orig_forward", original)
        want = len(self.split_points) + 1
        try:
            if pipe.num_stages != want:
                raise ValueError(pipe.num_stages)
            graphs = [pipe.get_stage_module(i) for i in range(want)]
        except (AttributeError, ValueError):
            raise TrainError(
                f"tracing {type(self.model).__name__} with split points {self.split_points} "
                f"did not cut it into {want} pieces (torch made {pipe.num_stages}): each split "
                "point must name a submodule that forward runs exactly once, and not the "
                "first one it runs"
            ) from None
        for i, graph in enumerate(graphs):
            self._tie(graph, i)
        return graphs

    def _tie(self, graph: nn.Module, index: int) -> None:
        """Put the model's own parameters and buffers in place of ``pipeline()``'s copies."""
        own: dict[str, Any] = dict(self.model.named_parameters(remove_duplicate=False))
        own.update(self.model.named_buffers(remove_duplicate=False))
        for table, leaf, name, is_param in _slots(graph):
            # a submodule that forward calls twice is outlined twice, the second as "name@1"
            mine = own.get(re.sub(r"@\d+", "", name))
            if mine is not None and mine.shape == table[leaf].shape:
                table[leaf] = mine
            elif is_param:
                raise TrainError(
                    f"piece {index} of the traced {type(self.model).__name__} holds a "
                    f"parameter {name!r} that the model does not name, so it cannot be "
                    "kept equal to the model's; return the model as an nn.Sequential of layers"
                )

    def model_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's own state dict from a pipelined run's, keyed ``"piece.name"``.

        ``traced.model.load_state_dict(traced.model_state(report.state_dict))``.
        A tensor no piece holds (a submodule forward never uses) keeps the model's value.
        """
        by_name = {key.split(".", 1)[1]: value for key, value in state.items()}
        mine = self.model.state_dict(keep_vars=True)
        aliases: dict[int, list[str]] = {}
        for name, tensor in mine.items():
            aliases.setdefault(id(tensor), []).append(name)
        out = {}
        for name, tensor in mine.items():
            found = next((by_name[a] for a in aliases[id(tensor)] if a in by_name), None)
            out[name] = found if found is not None else tensor.detach().clone()
        return out


def _restore(module: Any, attribute: str, value: Any) -> None:
    if value is _ABSENT:
        module.__dict__.pop(attribute, None)
    else:
        module.__dict__[attribute] = value


def _slots(graph: nn.Module) -> list[tuple[dict[str, Any], str, str, bool]]:
    """Every parameter and buffer of ``graph``: (its table, its key, its full name, is a parameter)."""
    out = []
    for owner_name, owner in graph.named_modules(remove_duplicate=False):
        for table, is_param in ((owner._parameters, True), (owner._buffers, False)):
            for leaf, value in table.items():
                if value is not None:
                    name = f"{owner_name}.{leaf}" if owner_name else leaf
                    out.append((table, leaf, name, is_param))
    return out


def _suggest(point: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(point, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _outer(names: Sequence[str], limit: int = 16) -> str:
    outer = [n for n in names if n.count(".") <= 1]
    return ", ".join(outer[:limit]) + (" ..." if len(outer) > limit else "")


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else repr(value)


@functools.cache
def _piece_class() -> type[nn.Module]:
    # defined on first use, so that importing conveyor.train does not import torch
    from torch import nn

    class TracedPiece(nn.Module):
        """One piece of a traced model as one layer: a tuple input is spread over its arguments.

        Holds the piece's graph at ``rows`` rows; its parameters and buffers are
        the graph's, named as in the model. With ``retrace`` (the :class:`Traced`)
        it traces again for other rows, on the same tensors.
        """

        def __init__(
            self, graph: nn.Module, *, index: int, rows: int, retrace: Traced | None
        ) -> None:
            super().__init__()
            for name, child in graph.named_children():
                self.add_module(name, child)
            for name, param in graph._parameters.items():
                self.register_parameter(name, param)
            for name, buf in graph._buffers.items():
                self.register_buffer(name, buf)
            self.index, self.rows = index, rows
            self._retrace = retrace
            self._graphs: dict[int, nn.Module] = {}
            self._links: dict[int, list[tuple[dict[str, Any], str, dict[str, Any]]]] = {}
            self._devices: dict[int, Any] = {}
            self._add(rows, graph)

        def extra_repr(self) -> str:
            return f"piece {self.index}, traced at {self.rows} rows"

        def _add(self, rows: int, graph: nn.Module) -> None:
            links = []
            for table, leaf, name, is_param in _slots(graph):
                owner = self.get_submodule(name.rpartition(".")[0])
                links.append((table, leaf, owner._parameters if is_param else owner._buffers))
            self._graphs[rows], self._links[rows] = graph, links

        def forward(self, value: Any) -> Any:
            args = value if isinstance(value, tuple) else (value,)
            rows = int(args[0].shape[0])
            if rows not in self._graphs:
                if self._retrace is None:
                    raise TrainError(
                        f"piece {self.index} was traced for inputs of {self.rows} rows and got "
                        f"{rows}; every micro-batch must have the same rows"
                    )
                self._add(rows, self._retrace.graphs(rows)[self.index])
            graph = self._graphs[rows]
            # the graph runs on this module's tensors, wherever .to() has put them
            for table, leaf, own in self._links[rows]:
                table[leaf] = own[leaf]
            if self._devices.get(rows) != args[0].device:
                _move_graph_ops(graph, args[0].device)
                self._devices[rows] = args[0].device
            return graph(*args)

    return TracedPiece


def _move_graph_ops(graph: nn.Module, device: Any) -> None:
    """Point ops that create tensors (``arange``, ``zeros``) at ``device``: tracing fixed the sample's."""
    from torch.distributed.pipelining._IR import _modify_graph_op_device
    from torch.fx import GraphModule

    if isinstance(graph, GraphModule):
        _modify_graph_op_device(graph, device)
