"""Executors: where a stage's workers run. Built in: ``sync``, ``threads``, ``processes``,
``ray`` (the ``ray`` extra).

One scheduler drives them all through the contract in :mod:`conveyor.executors.base`
(every task answered exactly once, ``submit`` never blocks, a target count for
``resize``, ``alive()`` for stall detection). An executor of your own subclasses
:class:`Executor`, runs tasks with :func:`run_task` and registers itself::

    from conveyor.executors import Executor, Traits, register, run_task

    class MyExecutor(Executor):
        traits = Traits(target_task_ns=5_000_000)
        def submit(self, task): ...

    register("mine", MyExecutor)       # then Stage(fn, executor="mine")

or, from a package of its own, declares it as an entry point, found when conveyor
first looks an executor up::

    [project.entry-points."conveyor.executors"]
    mine = "mypackage.executor:MyExecutor"

``tests/test_executor_contract.py`` is the suite every executor must pass unchanged.
"""

from conveyor.executors.base import (
    CacheSpec,
    Executor,
    Failure,
    LostWorker,
    Outcome,
    Post,
    RunContext,
    Task,
    Traits,
    executor_class,
    executor_names,
    not_run,
    register,
)
from conveyor.executors.task import run_task

__all__ = [
    "CacheSpec",
    "Executor",
    "Failure",
    "LostWorker",
    "Outcome",
    "Post",
    "RunContext",
    "Task",
    "Traits",
    "executor_class",
    "executor_names",
    "not_run",
    "register",
    "run_task",
]
