"""A layer that fails while it is profiled, told as a TrainError that names it and says what to change.

The usual causes are a shape that does not fit (data with the wrong number of
features for the first layer, two layers that do not fit each other) and a layer
that does not take what the previous one returns. The message carries the layer's
index and type, the shapes it was given, the original exception's type and
message, the line of the user's code it came from, and a fix; the raw traceback
is left out, since it runs through torch's internals and the profiler's.

    layer 0 (Linear) failed in its forward on inputs of shape (32, 10):
    RuntimeError: mat1 and mat2 shapes cannot be multiplied (32x10 and 8x16).
    Linear(in_features=8) expects inputs whose last dimension is 8; it got 10.
    Layer 0 takes the data factory's inputs: ...
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from conveyor.train._errors import TrainError
from conveyor.train._trees import describe, leaves

__all__ = ["LayerFailure", "layer_error"]


class LayerFailure(Exception):
    """Internal: a layer raised ``error`` in its ``phase`` (forward or backward) while profiled."""

    def __init__(self, phase: str, error: BaseException) -> None:
        super().__init__(phase, error)
        self.phase, self.error = phase, error


def _library_dirs() -> tuple[str, ...]:
    dirs = [os.path.dirname(os.path.dirname(__file__))]  # conveyor
    torch_file = getattr(sys.modules.get("torch"), "__file__", None)
    if torch_file:
        dirs.append(os.path.dirname(torch_file))
    return tuple(dirs)


def _user_frame(exc: BaseException) -> str:
    """' (at file.py:12, in forward)' for the deepest frame outside torch and conveyor."""
    skip = _library_dirs()
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not frame.filename.startswith(skip) and not frame.filename.startswith("<"):
            return f" (at {frame.filename}:{frame.lineno}, in {frame.name})"
    return ""


def _expected_shape(layer: Any, x: Any) -> str:
    """What the layer's own attributes say it expects, when the input disagrees."""
    kind = type(layer).__name__
    tensors = leaves(x)
    first = tensors[0] if tensors else None
    shape = tuple(first.shape) if first is not None else ()
    want = getattr(layer, "in_features", None)
    if isinstance(want, int) and shape and shape[-1] != want:
        return (
            f"{kind}(in_features={want}) expects inputs whose last dimension is {want}; "
            f"it got {shape[-1]}. "
        )
    want = getattr(layer, "in_channels", None)
    if isinstance(want, int) and len(shape) >= 2 and shape[1] != want:
        return (
            f"{kind}(in_channels={want}) expects dimension 1 of its input to be {want}; "
            f"it got {shape[1]}. "
        )
    embeds = getattr(layer, "num_embeddings", None) is not None
    if embeds and first is not None and first.is_floating_point():
        return f"{kind} takes integer ids; it got {str(first.dtype).replace('torch.', '')}. "
    return ""


def layer_error(layers: list[Any], index: int, x: Any, failure: LayerFailure) -> TrainError:
    """The TrainError for ``layers[index]`` failing on input ``x``."""
    exc = failure.error
    kind = type(layers[index]).__name__
    message = " ".join(str(exc).split())
    if len(message) > 400:
        message = message[:400] + " ..."
    text = (
        f"layer {index} ({kind}) failed in its {failure.phase} on inputs of shape "
        f"{describe(x)}: {type(exc).__name__}: {message}{_user_frame(exc)}. "
    )
    text += _expected_shape(layers[index], x)
    if index == 0:
        text += (
            "Layer 0 takes the data factory's inputs: make the data's inputs match the "
            "model's first layer (or the first layer match the data)."
        )
    else:
        prev = type(layers[index - 1]).__name__
        if isinstance(x, (tuple, list, dict)) and isinstance(exc, (AttributeError, TypeError)):
            text += (
                f"Layer {index - 1} ({prev}) returns a {type(x).__name__}; an nn.Sequential "
                f"passes it whole, as one argument, so layer {index}'s forward must take it "
                f"that way (e.g. def forward(self, inputs): hidden, mask = inputs)."
            )
        else:
            text += (
                f"Layer {index} takes what layer {index - 1} ({prev}) returns: make the two "
                f"fit each other in the model factory."
            )
    return TrainError(text)
