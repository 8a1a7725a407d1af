"""Finding the Ray cluster a run's Ray stages go to.

In order: a Ray session this process already opened (``ray.init(...)`` before the
run); the address in ``$CONVEYOR_RAY_ADDRESS`` (which ``conveyor run --ray ADDRESS``
sets); else a local Ray instance started for this process, and stopped when it exits.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from conveyor.errors import PipelineError

ADDRESS_VARIABLE = "CONVEYOR_RAY_ADDRESS"
_INSTALL = "the ray executor needs Ray: pip install 'conveyor[ray]'"
_lock = threading.Lock()


def import_ray() -> Any:
    """The ``ray`` module, or one clear line saying what to install."""
    try:
        import ray
    except ImportError:
        raise PipelineError(_INSTALL) from None
    return ray


def connect() -> Any:
    """The ``ray`` module, connected to a cluster (see the module docstring)."""
    ray = import_ray()
    with _lock:
        if ray.is_initialized():
            return ray
        # "local" when unset: never join a stale cluster by accident
        address = os.environ.get(ADDRESS_VARIABLE) or "local"
        ray.init(address=address, include_dashboard=False)
    return ray
