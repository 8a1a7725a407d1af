"""The train extra's errors live in conveyor's one tree (:mod:`conveyor.errors`)."""

from __future__ import annotations

from conveyor.errors import TORCH_HINT, MissingTorchError, TrainError

__all__ = ["TORCH_HINT", "MissingTorchError", "TrainError", "require_torch"]


def require_torch() -> None:
    """Raise :class:`MissingTorchError` (one line, with the install command) if torch is absent."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingTorchError() from exc
