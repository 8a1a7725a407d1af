"""Pipeline-parallel training on torch.distributed: profile, cut, plan, run, explain.

Pure parts (partition, schedules, simulator, planner, drawing) import no torch;
:func:`profile_model` and :func:`train` import it when called. See docs/train.md.
"""

from conveyor.train._api import TrainReport, train
from conveyor.train._draw import draw_svg
from conveyor.train._errors import MissingTorchError, TrainError
from conveyor.train._partition import (
    Partition,
    partition_by_params,
    partition_optimal,
    partition_uniform,
)
from conveyor.train._plan import Candidate, Plan, plan, predict
from conveyor.train._profile import LayerProfile, ModelProfile, profile_model
from conveyor.train._schedules import (
    SCHEDULES,
    Action,
    Schedule,
    build_schedule,
    gpipe,
    interleaved_1f1b,
    one_f_one_b,
    validate,
    zb_h1,
)
from conveyor.train._simulate import Interval, Simulation, StageCosts, simulate
from conveyor.train._traced import Traced

__all__ = [
    "SCHEDULES",
    "Action",
    "Candidate",
    "Interval",
    "LayerProfile",
    "MissingTorchError",
    "ModelProfile",
    "Partition",
    "Plan",
    "Schedule",
    "Simulation",
    "StageCosts",
    "Traced",
    "TrainError",
    "TrainReport",
    "build_schedule",
    "draw_svg",
    "gpipe",
    "interleaved_1f1b",
    "one_f_one_b",
    "partition_by_params",
    "partition_optimal",
    "partition_uniform",
    "plan",
    "predict",
    "profile_model",
    "simulate",
    "train",
    "validate",
    "zb_h1",
]
