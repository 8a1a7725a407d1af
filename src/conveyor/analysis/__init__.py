"""Analysis: pure functions from a run's recording to figures, verdicts and advice.

Nothing here does I/O or touches a running pipeline: every figure is computed from
a :class:`~conveyor.Recording` (or from plain numbers), so predictions and
measurements can be held side by side and tested against literal expectations::

    from conveyor.analysis import build_report, measure, model_of, predict, balance

    rec = run.recording
    m = measure(rec)                                  # per stage and per run
    model = model_of(m)                               # demands and workers
    predict(model, workers={"embed": 3})              # what-if: more workers
    predict(model, faster={"parse": 2.0})             # what-if: a faster stage
    balance(model.demands, budget=8).workers          # the best allocation
    print(build_report(rec, budget=8).render())       # all of it, in words

Formulas and their definitions: ``docs/observability.md``.
"""

from conveyor.analysis._balance import Allocation, balance, equal_split, throughput_of
from conveyor.analysis._batching import BatchPoint, BatchSweep, sweep_batch_sizes
from conveyor.analysis._bottleneck import Bottleneck, WindowVerdict, find_bottleneck
from conveyor.analysis._measure import Distribution, RunMeasure, StageMeasure, measure, quantile
from conveyor.analysis._model import (
    Little,
    Model,
    Prediction,
    StageModel,
    little,
    model_of,
    predict,
)
from conveyor.analysis._report import Comparison, Report, build_report

__all__ = [
    "Allocation",
    "BatchPoint",
    "BatchSweep",
    "Bottleneck",
    "Comparison",
    "Distribution",
    "Little",
    "Model",
    "Prediction",
    "Report",
    "RunMeasure",
    "StageMeasure",
    "StageModel",
    "WindowVerdict",
    "balance",
    "build_report",
    "equal_split",
    "find_bottleneck",
    "little",
    "measure",
    "model_of",
    "predict",
    "quantile",
    "sweep_batch_sizes",
    "throughput_of",
]
