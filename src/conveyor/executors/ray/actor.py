"""A Ray worker's side: one actor per stage worker, running tasks as process workers do.

The actor receives the stage's function pickled as for a process worker, makes it
once (a class stage's instance lives as long as the actor), and answers each task
with the same reply a process worker writes to its pipe (:mod:`..processes.messages`):
a value that cannot cross fails only its own unit. Ray is imported by the driver
that defines the actor class (:func:`actor_class`), never at import time here.
"""

from __future__ import annotations

import os
import sys
import traceback
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

from conveyor.executors.base import CacheSpec, Outcome
from conveyor.executors.calls import close_quietly, worker_function
from conveyor.executors.processes.functions import dump_function, load_function
from conveyor.executors.processes.messages import decode_task, encode_reply
from conveyor.executors.processes.remote import Packed, pack
from conveyor.executors.processes.shm import SegmentRegistry
from conveyor.executors.ray.handles import decode_kept_task, keep_results, worth_little
from conveyor.executors.task import run_task
from conveyor.observe.gpu import GpuSampler, GpuSeries, NoSampling, log, start_sampler

if TYPE_CHECKING:
    from conveyor.core.stage import Stage

# Values travel inside Ray's own messages and object store, never through conveyor's
# shared-memory segments: a threshold no array reaches.
NEVER = 1 << 62


def plain_registry() -> SegmentRegistry:
    """A registry that never puts an array in shared memory (Ray moves the bytes)."""
    return SegmentRegistry("cvray", owner=False, threshold=NEVER)


def actor_args(s: Stage, cache: CacheSpec | None) -> tuple[Any, ...]:
    """What each of stage ``s``'s actors is made with (:class:`StageWorker`'s arguments)."""
    # Ray's workers do not inherit the driver's environment: conveyor's own settings
    # (CONVEYOR_*) follow the run; others go through Ray's runtime_env.
    env = {k: v for k, v in os.environ.items() if k.startswith("CONVEYOR_")}
    env["CONVEYOR_WORKER"] = "ray"
    init = b"" if s.init is None else dump_function(s.init)
    return (
        list(sys.path),
        dump_function(s.fn),
        init,
        s.kind,
        s.initial,
        s.is_async,
        s.concurrency,
        s.timeout,
        cache,
        s.name,
        env,
        s.split,
        bool(s.needs.gpus),
    )


class StageWorker:
    """The body of one Ray actor (wrapped by ``ray.remote`` in :func:`actor_class`)."""

    def __init__(
        self,
        paths: list[str],
        fn_bytes: bytes,
        init_bytes: bytes,
        kind: str,
        initial: Any,
        is_async: bool,
        concurrency: int,
        timeout: float | None,
        cache: CacheSpec | None,
        stage: str,
        env: dict[str, str],
        split: bool = False,
        sample_gpus: bool = False,
    ) -> None:
        os.environ.update(env)
        # The driver's import path, where it exists here: the stage's module is found
        # as a spawned process finds it.
        for p in reversed(paths):
            if p not in sys.path and os.path.isdir(p):
                sys.path.insert(0, p)
        self.kind, self.initial = kind, initial
        self.is_async, self.concurrency, self.timeout = is_async, concurrency, timeout
        self.cache, self.stage, self.split = cache, stage, split
        self.registry = plain_registry()
        self.error: tuple[Packed, str] | None = None
        self.unit, self.unit_started = -1, 0  # the unit running now (for current())
        self.close: Any = None
        try:
            init = load_function(init_bytes) if init_bytes else None
            self.fn, self.close = worker_function(load_function(fn_bytes), kind, initial, init)
        except BaseException as exc:
            self.error = (pack(exc), traceback.format_exc())
        self.gpus = own_gpus(stage, self) if sample_gpus else NoSampling()

    def ready(self) -> tuple[int, str, tuple[Packed, str] | None]:
        """``(pid, node: its IP and the start of its id, error loading the function or None)``."""
        return os.getpid(), node_label(), self.error

    def gpu_series(self, final: bool = False) -> tuple[int, list[GpuSeries] | None]:
        """``(now on this actor's clock, its devices' series so far)``, None for the series
        when it samples none; ``final`` stops the sampling first (the run ends)."""
        if not isinstance(self.gpus, GpuSampler):
            return monotonic_ns(), None
        if final:
            self.gpus.stop()
        return monotonic_ns(), self.gpus.series()

    def run(self, data: bytes, refs: list[Any] | None = None) -> bytes:
        """Run one task (``(task_id, units)`` pickled, or units over handles to the
        objects ``refs``: :mod:`.handles`); the reply a process worker sends."""
        return encode_reply(self._run(data, refs), self.registry)

    def run_kept(
        self, data: bytes, refs: list[Any] | None = None, force: bool = False
    ) -> tuple[tuple[bool, bytes], list[Any] | None]:
        """Run one task and keep its results in the object store: ``((True, reply),
        outputs)``, the reply carrying each result's size instead of its value (two
        returns: the caller owns both objects, so they outlive this actor). Results
        too small to be worth it come back as values: ``((False, reply), None)``,
        unless ``force`` (a task run again to make lost results: :mod:`.lineage`)."""
        out = self._run(data, refs)
        if not force and worth_little(out.results):
            return (False, encode_reply(out, self.registry)), None
        failed = {f.unit for f in out.failures}
        outputs, shapes, bad = keep_results(out.results, self.kind, failed, split=self.split)
        out.results = shapes
        out.failures.extend(bad)
        return (True, encode_reply(out, self.registry)), outputs

    def _run(self, data: bytes, refs: list[Any] | None) -> Outcome:
        task_id: int | None
        if refs:
            import ray

            task_id, units, bad = decode_kept_task(ray, data, refs, self.stage)
        else:
            task_id, units, bad = decode_task(data, self.registry)
        out = run_task(
            self.fn,
            self.kind,
            units,
            worker=0,
            task_id=-1 if task_id is None else task_id,
            is_async=self.is_async,
            concurrency=self.concurrency,
            timeout=self.timeout if self.is_async else None,
            cache=self.cache,
            on_unit=None if self.is_async else self._on_unit,
        )
        self.unit = -1
        if bad is not None:
            out.failures.append(bad)
        return out

    def _on_unit(self, i: int) -> None:
        self.unit_started = monotonic_ns()
        self.unit = i

    def current(self) -> tuple[int, int]:
        """``(unit index, ns it has run)`` of the unit running now, ``(-1, 0)`` if none;
        answered while ``run`` goes on (its own concurrency group)."""
        unit = self.unit
        return (unit, monotonic_ns() - self.unit_started) if unit >= 0 else (-1, 0)

    def stop(self) -> None:
        """Close a class stage's instance (and stop sampling) before the actor goes."""
        self.gpus.stop()
        if self.close is not None:
            close_quietly(self.close, self.stage)
            self.close = None


def node_label() -> str:
    """This process's Ray node: its IP and the start of its id ("" outside Ray)."""
    try:
        import ray

        return f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()[:8]}"
    except Exception:
        return ""


def own_gpus(stage: str, owner: object) -> NoSampling:
    """A sampler of the devices Ray gave this actor, on its node (a debug line and none
    without a device, nvidia-ml-py or a driver)."""
    try:
        import ray

        devices = [str(d) for d in ray.get_gpu_ids()]
    except Exception as exc:
        devices = []
        log.debug("stage %r: Ray did not say which GPUs: %s", stage, exc)
    if not devices:
        log.debug("no GPU sampled: Ray gave stage %r's actor none", stage)
        return NoSampling()
    return start_sampler({d: [stage] for d in devices}, owner, node_label())


_actor: Any = None


def actor_class() -> Any:
    """:class:`StageWorker` as a Ray actor class (made once, on first use)."""
    global _actor
    if _actor is None:
        import ray

        method: Any = ray.method
        remote: Any = ray.remote

        class Probed(StageWorker):
            @method(num_returns=2)
            def run_kept(
                self, data: bytes, refs: list[Any] | None = None, force: bool = False
            ) -> tuple[tuple[bool, bytes], list[Any] | None]:
                return StageWorker.run_kept(self, data, refs, force)

            @method(concurrency_group="probe")
            def current(self) -> tuple[int, int]:
                return StageWorker.current(self)

            @method(concurrency_group="probe")
            def gpu_series(self, final: bool = False) -> tuple[int, list[GpuSeries] | None]:
                return StageWorker.gpu_series(self, final)

        Probed.__name__ = Probed.__qualname__ = "StageWorker"
        _actor = remote(max_restarts=0, max_task_retries=0, concurrency_groups={"probe": 1})(Probed)
    return _actor
