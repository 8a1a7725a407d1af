"""The ``ray`` executor: a stage's workers as Ray actors (the ``ray`` extra).

``Stage(fn, executor="ray", workers=4, gpus=0.5)`` runs four actors with half a GPU
each on the cluster this process is connected to (:mod:`.connect`). Ray itself is
imported only when such a stage starts.
"""

from conveyor.executors.ray.pool import RayExecutor

__all__ = ["RayExecutor"]
