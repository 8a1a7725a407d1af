"""Where a rank sits: its device, its place in the ``dp x pp`` mesh, the stages it holds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from conveyor.train._errors import TrainError
from conveyor.train._schedules import Schedule
from conveyor.train._spec import RunSpec
from conveyor.train._stages import StageModule

__all__ = ["Place", "rank_device", "to_device"]


def rank_device() -> torch.device:
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    if local >= torch.cuda.device_count():
        raise TrainError(
            f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; start "
            "at most one process per GPU (--nproc-per-node), or run on CPU with device='cpu'"
        )
    return torch.device("cuda", local)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class Place:
    """One rank's place in the ``dp x pp`` mesh and the pieces it trains."""

    spec: RunSpec
    device: torch.device
    replica: int
    pp_rank: int
    pp: int
    plan: Schedule
    mine: list[int]
    modules: dict[int, StageModule]
    pp_group: Any
    dp_group: Any | None

    @property
    def holds_first(self) -> bool:
        return 0 in self.mine

    @property
    def holds_last(self) -> bool:
        return self.plan.num_stages - 1 in self.mine

    def broadcast(self, value: Any, src: int = 0) -> Any:
        """``value`` as pipeline rank ``src`` of this replica has it, on every rank of the pipeline."""
        box = [value]
        dist.broadcast_object_list(box, group=self.pp_group, group_src=src)
        return box[0]

    def schedule_args(
        self,
        batch: tuple[torch.Tensor, torch.Tensor] | None,
        rows: slice,
        losses: list[torch.Tensor],
    ) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
        """The arguments of one schedule pass on ``rows`` of this replica's batch:
        the inputs for the first stage, the targets (and the loss list) for the last.

        torch's schedule clears the loss list it is given and fills it with this
        pass's losses: pass a fresh list each time and keep what it holds."""
        args: tuple[torch.Tensor, ...] = ()
        kwargs: dict[str, Any] = {}
        if self.holds_first or self.holds_last:
            assert batch is not None
            x, y = batch
            if self.holds_first:
                args = (to_device(x[rows], self.device),)
            if self.holds_last:
                kwargs = {"target": to_device(y[rows], self.device), "losses": losses}
        return args, kwargs
