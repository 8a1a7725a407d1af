"""The train extra's errors, under conveyor's one hierarchy.

    ConveyorError
    └── TrainError             bad input to the train extra, caught before any rank starts
        └── MissingTorchError  a torch-backed part was used without PyTorch installed

Messages state the rule, show the values, and suggest the fix.
"""

from __future__ import annotations

from conveyor._errors import ConveyorError

TORCH_HINT = (
    "conveyor.train needs PyTorch: pip install torch==2.13.0 && pip install 'conveyor[train]'"
)


class TrainError(ConveyorError):
    """The train extra was given something it cannot use.

    More stages than layers, a schedule that needs more micro-batches, a memory cap
    no partition meets, a model that is not a sequence of layers. Raised by the
    pure planners before anything runs, and by the runtime when a rank fails.
    """


class MissingTorchError(TrainError, ImportError):
    """A part of conveyor.train that runs PyTorch was used where torch is not installed."""

    def __init__(self) -> None:
        super().__init__(TORCH_HINT)


def require_torch() -> None:
    """Raise :class:`MissingTorchError` (one line, with the install command) if torch is absent."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingTorchError() from exc
