"""The processes executor: spawned worker processes (see :mod:`.pool`, :mod:`.worker`,
and :mod:`.shm` for NumPy arrays in shared memory)."""

from conveyor.executors.processes.pool import ProcessExecutor

__all__ = ["ProcessExecutor"]
