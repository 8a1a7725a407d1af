"""Checkpoints of a pipelined run: every rank's weights, optimizer, schedule, data position, RNG.

Layout, one folder per checkpoint::

    DIR/step-00000010/rank-00000.pt     one file per rank, written to a temporary name
    DIR/step-00000010/rank-00001.pt     and renamed, so a file is whole or absent
    DIR/step-00000010/layout.json       written by rank 0 once every rank has saved:
                                        the checkpoint is complete only with it

``layout.json`` records how the model was cut (bounds, schedule, ranks, replicas),
since a rank's optimizer state only fits the parameters it held. A resumed run
takes the newest complete checkpoint and refuses, naming both, one cut another way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from conveyor.train._errors import TrainError

__all__ = ["latest", "load", "save"]

LAYOUT = "layout.json"


def _folder(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def save(root: Path, step: int, rank: int, state: dict[str, Any]) -> None:
    """Write this rank's ``state`` for the checkpoint taken after ``step`` steps."""
    folder = _folder(root, step)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"rank-{rank:05d}.pt"
    tmp = final.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, final)


def complete(root: Path, step: int, layout: dict[str, Any]) -> None:
    """Mark the checkpoint after ``step`` steps complete (rank 0, once every rank saved)."""
    folder = _folder(root, step)
    tmp = folder / (LAYOUT + ".tmp")
    tmp.write_text(json.dumps(layout, sort_keys=True))
    os.replace(tmp, folder / LAYOUT)


def latest(root: Path) -> int | None:
    """The step of the newest complete checkpoint under ``root``, or None."""
    if not root.is_dir():
        return None
    steps = [
        int(p.name.removeprefix("step-"))
        for p in root.glob("step-*")
        if (p / LAYOUT).exists() and p.name.removeprefix("step-").isdigit()
    ]
    return max(steps, default=None)


def load(root: Path, step: int, rank: int, layout: dict[str, Any]) -> dict[str, Any]:
    """This rank's state from the checkpoint after ``step`` steps, checked against ``layout``."""
    folder = _folder(root, step)
    saved = json.loads((folder / LAYOUT).read_text())
    if saved != json.loads(json.dumps(layout, sort_keys=True)):
        raise TrainError(
            f"the checkpoint {folder} was taken with {_describe(saved)}, this run has "
            f"{_describe(layout)}; resume with the same stages, schedule and partition, "
            "or start afresh in another checkpoint folder"
        )
    state: dict[str, Any] = torch.load(folder / f"rank-{rank:05d}.pt", weights_only=False)
    return state


def _describe(layout: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(layout.items()))
