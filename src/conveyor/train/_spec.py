"""What every rank of a pipelined run is told: :class:`RunSpec`, plain JSON-friendly data."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.train._errors import TrainError

__all__ = ["RunSpec", "load_object"]


@dataclass
class RunSpec:
    """Everything a rank needs to train, as JSON-friendly values.

    ``model`` and ``data`` are ``"path/to/file.py:name"`` or ``"module:name"``
    specs of factories (the model's called with ``model_kwargs``); ``bounds`` the
    partition's layer cut points (p·v + 1 values).

    A step is one optimizer step on ``batch_size`` rows. ``dp`` data-parallel
    replicas each take ``batch_size / dp`` of them; ``accumulate`` runs the
    schedule that many times per step on equal parts of a replica's rows; each
    run cuts its part into ``microbatches``. ``recompute`` (one flag per stage)
    drops a stage's activations after its forward and recomputes them in the
    backward. ``precision`` "bf16" runs the forward under bfloat16 autocast.
    ``checkpoint_dir`` with ``checkpoint_every`` saves every rank's state that
    often (and after the last step); ``resume`` starts from the newest complete
    checkpoint there; ``until`` stops after that many steps of the ``steps`` the
    learning-rate schedule plans for, to be resumed later. ``eval_data`` names a factory of held-out ``(inputs,
    targets)``, evaluated every ``eval_every`` steps and after the last.
    """

    model: str
    data: str
    schedule: str
    microbatches: int
    bounds: list[int]
    stages_per_rank: int = 1
    batch_size: int = 64
    steps: int = 20
    lr: float = 0.05
    optimizer: str = "sgd"
    loss: str = "cross_entropy"
    seed: int = 0
    threads: int = 1
    record_parameters: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dp: int = 1
    accumulate: int = 1
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    clip_grad: float | None = None
    precision: str = "fp32"
    recompute: list[bool] | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    until: int | None = None
    eval_data: str | None = None
    eval_every: int = 0
    log_every: int = 0

    def check(self, world: int) -> None:
        """Raise TrainError for values that cannot work on ``world`` ranks, naming the fix."""
        if self.dp < 1 or world % self.dp:
            raise TrainError(
                f"dp={self.dp} replicas do not divide the {world} ranks; use a dp that "
                f"divides the number of processes (ranks = dp x pipeline stages)"
            )
        rows = self.dp * self.accumulate * self.microbatches
        if self.batch_size % rows:
            raise TrainError(
                f"batch size {self.batch_size} does not split into {self.dp} replicas x "
                f"{self.accumulate} accumulated parts x {self.microbatches} micro-batches "
                f"of equal rows; use a batch size that is a multiple of {rows}"
            )
        if self.precision not in ("fp32", "bf16"):
            raise TrainError(f"unknown precision {self.precision!r}; use fp32 or bf16")
        stages = (world // self.dp) * self.stages_per_rank
        if self.recompute is not None and len(self.recompute) != stages:
            raise TrainError(
                f"recompute has {len(self.recompute)} flags for {stages} stages; give one per stage"
            )


def load_object(spec: str) -> Any:
    """The object named by ``"file.py:name"`` or ``"package.module:name"``."""
    if ":" not in spec:
        raise TrainError(f"expected 'path/to/file.py:name' or 'module:name', got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.exists():
            raise TrainError(f"no file {path} (from {spec!r})")
        mod_name = f"_conveyor_user_{abs(hash(str(path)))}"
        module = sys.modules.get(mod_name)
        if module is None:
            s = importlib.util.spec_from_file_location(mod_name, path)
            assert s is not None and s.loader is not None
            module = importlib.util.module_from_spec(s)
            sys.modules[mod_name] = module
            s.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    try:
        return getattr(module, name)
    except AttributeError:
        raise TrainError(f"{where} has no attribute {name!r} (from {spec!r})") from None
