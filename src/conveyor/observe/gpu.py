"""GPU sampling: how busy the devices of a run's GPU stages were, into the recording.

When a run has stages with ``gpus`` > 0 and NVIDIA's management library is installed
(``pip install 'conveyor[gpu]'``, the ``nvidia-ml-py`` package, imported as
``pynvml``), the devices those stages use are read every ``period_s`` (half a
second) by a :class:`GpuSampler`, a daemon thread: each device's utilisation (the
share of the last sample period in which a kernel ran) and memory in use, until the
run stops. Without the library, or without a GPU, nothing is sampled and nothing
fails: one debug line on the ``conveyor.gpu`` logger says why (on the machine where
it happened).

Which devices a stage uses, and who samples them:

- process workers of this machine (``processes``): the devices each worker gets
  through ``CUDA_VISIBLE_DEVICES`` (:func:`conveyor.executors.gpus.gpu_devices`, the
  same packing), sampled by the recorder's sampler on the driver
  (:func:`stage_devices`, :func:`sampler_for`);
- workers in the driver's process (``threads``, ``sync``...): the first
  ``ceil(gpus × workers)`` devices the driver sees (CUDA's default device first),
  the same;
- Ray's actors (``ray``): the devices Ray gave each actor (``ray.get_gpu_ids()``),
  sampled on their node by a sampler inside the actor
  (:mod:`conveyor.executors.ray.sampling`); the stage's collector thread asks each
  actor for its series every second and once more at the end, moves them onto the
  driver's clock and puts them in the run's :class:`RemoteGpus`, which
  :func:`sampler_for` hands the recorder. Actors that share a device (``gpus=0.5``)
  sample it each; their series merge into one per node and device
  (:meth:`GpuSeries.merged`). An actor that dies keeps the series of its last answer.

Each device becomes a :class:`GpuSeries` in the recording (``node`` names a Ray
node, "" the driver's machine): at most ``POINTS`` points, each the mean
utilisation, the peak memory and how many of its samples found the device idle
(utilisation at most ``IDLE_PERCENT``); past ``POINTS``, neighbouring points merge,
halving the resolution, so a long run stays small. A run with no GPU stage starts
nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.executors.base import executor_traits
from conveyor.executors.gpus import gpu_devices, visible_gpus

if TYPE_CHECKING:
    from conveyor.core.events import StageInfo

__all__ = [
    "IDLE_PERCENT",
    "GpuSampler",
    "GpuSeries",
    "NoSampling",
    "RemoteGpus",
    "Sampling",
    "close_remote",
    "open_remote",
    "sampler_for",
    "stage_devices",
    "start_sampler",
]

IDLE_PERCENT = 5.0  # utilisation at or below this counts as idle
PERIOD_S = 0.5
POINTS = 512  # points kept per device before neighbours merge

log = logging.getLogger("conveyor.gpu")


@dataclasses.dataclass
class GpuSeries:
    """One device over a run: ``t_ns[i]`` (monotonic) starts point i, which holds
    ``samples[i]`` samples: their mean ``utilisation`` (%), peak ``memory`` used
    (bytes) and how many found the device ``idle``. ``stages`` use the device."""

    device: str  # as CUDA_VISIBLE_DEVICES names it: "0", or "GPU-<uuid>"
    stages: list[str]
    name: str = ""  # the device's model
    memory_total: int = 0  # bytes
    t_ns: list[int] = dataclasses.field(default_factory=list)
    utilisation: list[float] = dataclasses.field(default_factory=list)
    memory: list[int] = dataclasses.field(default_factory=list)
    idle: list[int] = dataclasses.field(default_factory=list)
    samples: list[int] = dataclasses.field(default_factory=list)
    node: str = ""  # a Ray node ("<IP> <node id's start>"); "" for the driver's machine

    def idle_share(self, t0_ns: int | None = None, t1_ns: int | None = None) -> float | None:
        """The share of samples in ``[t0_ns, t1_ns]`` that found the device idle; None
        when there is none."""
        n = idle = 0
        for t, k, i in zip(self.t_ns, self.samples, self.idle, strict=True):
            if (t0_ns is None or t >= t0_ns) and (t1_ns is None or t <= t1_ns):
                n += k
                idle += i
        return idle / n if n else None

    def add(self, t_ns: int, utilisation: float, memory: int) -> None:
        """One sample; neighbouring points merge once there are ``POINTS``."""
        self.t_ns.append(t_ns)
        self.utilisation.append(float(utilisation))
        self.memory.append(int(memory))
        self.idle.append(1 if utilisation <= IDLE_PERCENT else 0)
        self.samples.append(1)
        if len(self.t_ns) >= POINTS:
            self._halve()

    @classmethod
    def merged(cls, parts: Sequence[GpuSeries]) -> GpuSeries:
        """One device sampled by several samplers (Ray actors sharing it): every point
        in time order, the stages of all; neighbouring points merge past ``POINTS``."""
        first = parts[0]
        out = cls(first.device, [], first.name, first.memory_total, node=first.node)
        for g in parts:
            out.stages.extend(s for s in g.stages if s not in out.stages)
        columns = ("t_ns", "utilisation", "memory", "idle", "samples")
        points = [p for g in parts for p in zip(*(getattr(g, c) for c in columns), strict=True)]
        for p in sorted(points, key=lambda p: p[0]):
            for c, v in zip(columns, p, strict=True):
                getattr(out, c).append(v)
        while len(out.t_ns) >= POINTS:
            out._halve()
        return out

    def shifted(self, ns: int) -> GpuSeries:
        """A copy with its times moved by ``ns`` (an actor's clock onto the driver's)."""
        out = self.copy()
        out.t_ns = [t + ns for t in self.t_ns]
        return out

    def _halve(self) -> None:
        t, u, m, i, k = [], [], [], [], []
        for j in range(0, len(self.t_ns) - 1, 2):
            a, b = self.samples[j], self.samples[j + 1]
            t.append(self.t_ns[j])
            u.append((self.utilisation[j] * a + self.utilisation[j + 1] * b) / (a + b))
            m.append(max(self.memory[j], self.memory[j + 1]))
            i.append(self.idle[j] + self.idle[j + 1])
            k.append(a + b)
        if len(self.t_ns) % 2:  # the odd last point stays as it is
            t.append(self.t_ns[-1])
            u.append(self.utilisation[-1])
            m.append(self.memory[-1])
            i.append(self.idle[-1])
            k.append(self.samples[-1])
        self.t_ns, self.utilisation, self.memory, self.idle, self.samples = t, u, m, i, k

    def copy(self) -> GpuSeries:
        return dataclasses.replace(
            self,
            stages=list(self.stages),
            t_ns=list(self.t_ns),
            utilisation=list(self.utilisation),
            memory=list(self.memory),
            idle=list(self.idle),
            samples=list(self.samples),
        )


def stage_devices(stages: Sequence[StageInfo], visible: Sequence[str]) -> dict[str, list[str]]:
    """Device → the GPU stages that use it (see the module docstring), in device order.

    >>> from conveyor.core.events import StageInfo
    >>> s = StageInfo("embed", "map", "processes", 4, 8, (), (), gpus=0.5)
    >>> stage_devices([s], ["0", "1"])
    {'0': ['embed'], '1': ['embed']}
    """
    used: dict[str, list[str]] = {}
    for s in stages:
        gpus = getattr(s, "gpus", 0.0) or 0.0
        traits = executor_traits(s.executor)
        if not gpus or not visible or traits is None:
            continue
        if traits.shares_memory:  # workers in the driver's process
            devices = list(visible[: max(1, math.ceil(gpus * max(1, s.workers) - 1e-9))])
        elif traits.host_cores:  # process workers of this machine: CUDA_VISIBLE_DEVICES
            devices = [d for w in range(s.workers) for d in gpu_devices(gpus, w, visible)]
        else:  # workers elsewhere (Ray's actors): their devices are on their nodes
            continue
        for d in devices:
            names = used.setdefault(d, [])
            if s.name not in names:
                names.append(s.name)
    return {d: used[d] for d in visible if d in used}


class NoSampling:
    """What a run without GPU sampling holds: nothing to stop, no series."""

    def stop(self) -> None:
        pass

    def series(self) -> list[GpuSeries]:
        return []


class GpuSampler(NoSampling):
    """Samples ``devices`` (device → stages) through ``nvml`` (the ``pynvml`` module)
    on a daemon thread from :meth:`start` to :meth:`stop`."""

    def __init__(
        self,
        nvml: Any,
        devices: dict[str, list[str]],
        *,
        period_s: float = PERIOD_S,
        clock: Callable[[], int] = time.monotonic_ns,
        node: str = "",
    ) -> None:
        self.nvml = nvml
        self.period_s = period_s
        self.clock = clock
        self._handles: dict[str, Any] = {}
        self._series: dict[str, GpuSeries] = {}
        for device, stages in devices.items():
            handle = _handle(nvml, device)
            self._handles[device] = handle
            name = _text(nvml.nvmlDeviceGetName(handle))
            self._series[device] = GpuSeries(
                device, list(stages), name, _total(nvml, handle), node=node
            )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, owner: object | None = None) -> None:
        """Sample now, then every ``period_s`` until :meth:`stop` (or until ``owner``,
        the recorder, is garbage: a run abandoned without its end event)."""
        alive = weakref.ref(owner) if owner is not None else (lambda: True)
        self.sample()
        self._thread = threading.Thread(
            target=self._loop, args=(alive,), name="conveyor-gpu-sampler", daemon=True
        )
        self._thread.start()

    def _loop(self, alive: Callable[[], object]) -> None:
        while not self._stop.wait(self.period_s) and alive() is not None:
            try:
                self.sample()
            except Exception as exc:  # a device lost mid-run: stop sampling, keep the run
                log.debug("GPU sampling stopped: %s: %s", type(exc).__name__, exc)
                return

    def sample(self) -> None:
        """Read every device once."""
        t = self.clock()
        readings = []
        for device, handle in self._handles.items():
            util = self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu
            used = self.nvml.nvmlDeviceGetMemoryInfo(handle).used
            readings.append((device, util, used))
        with self._lock:
            for device, util, used in readings:
                self._series[device].add(t, util, used)

    def stop(self) -> None:
        """Stop the thread (waiting for it), sample once more and release the library;
        safe to repeat."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
            try:
                self.sample()  # the run's last stretch, however short the run was
            except Exception as exc:
                log.debug("GPU sampling at the end: %s: %s", type(exc).__name__, exc)
            try:
                self.nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown: %s", exc)

    def series(self) -> list[GpuSeries]:
        with self._lock:
            return [s.copy() for s in self._series.values()]


class RemoteGpus:
    """The series of a run's Ray actors, as the driver last collected them: one list per
    actor (its devices, on the driver's clock), merged per node and device on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_actor: dict[tuple[str, int], list[GpuSeries]] = {}

    def put(self, actor: tuple[str, int], series: list[GpuSeries]) -> None:
        """``actor`` (stage, index) has sampled ``series`` so far: they replace its last."""
        with self._lock:
            self._by_actor[actor] = series

    def series(self) -> list[GpuSeries]:
        """One series per node and device, whichever actors sampled it."""
        by_device: dict[tuple[str, str], list[GpuSeries]] = {}
        with self._lock:
            for series in self._by_actor.values():
                for g in series:
                    by_device.setdefault((g.node, g.device), []).append(g)
        return [GpuSeries.merged(by_device[k]) for k in sorted(by_device)]


_remote: dict[str, RemoteGpus] = {}  # run id -> its actors' series, while the run lasts
_remote_lock = threading.Lock()


def open_remote(run_id: str) -> RemoteGpus:
    """Where the Ray stages of run ``run_id`` put their actors' series (one per run)."""
    with _remote_lock:
        return _remote.setdefault(run_id, RemoteGpus())


def close_remote(run_id: str) -> None:
    """The run's executors have stopped: a sampler made since finds nothing."""
    with _remote_lock:
        _remote.pop(run_id, None)


class Sampling(NoSampling):
    """A run's sampling: the driver's devices (``local``) and its Ray actors' (``remote``)."""

    def __init__(self, local: NoSampling, remote: RemoteGpus) -> None:
        self.local, self.remote = local, remote

    def stop(self) -> None:
        self.local.stop()

    def series(self) -> list[GpuSeries]:
        return self.local.series() + self.remote.series()


def sampler_for(
    stages: Sequence[StageInfo], owner: object | None = None, run_id: str | None = None
) -> NoSampling:
    """The run's sampling: a started :class:`GpuSampler` for the GPU stages of this
    machine (:class:`NoSampling` when there is none, or ``pynvml`` is missing or finds
    no GPU: a debug line), with the series that Ray stages collect from their actors
    when run ``run_id`` has any."""
    with _remote_lock:
        remote = _remote.get(run_id) if run_id is not None else None
    local = _local_sampler(stages, owner)
    return local if remote is None else Sampling(local, remote)


def _local_sampler(stages: Sequence[StageInfo], owner: object | None) -> NoSampling:
    here = [s for s in stages if getattr(s, "gpus", 0) and not _elsewhere(s.executor)]
    if not here:
        return NoSampling()
    devices = stage_devices(here, visible_gpus())
    if not devices:
        log.debug("no GPU sampled: the GPU stages' devices are not visible here")
        return NoSampling()
    return start_sampler(devices, owner)


def _elsewhere(executor: str) -> bool:
    """Workers of ``executor`` run on other machines (Ray's actors)."""
    traits = executor_traits(executor)
    return traits is not None and not traits.shares_memory and not traits.host_cores


def start_sampler(
    devices: dict[str, list[str]], owner: object | None, node: str = ""
) -> NoSampling:
    """A started :class:`GpuSampler` of ``devices`` (device → stages) of this machine,
    or :class:`NoSampling` and a debug line saying why not."""
    try:
        import pynvml
    except ImportError:
        log.debug("no GPU sampled: pip install 'conveyor[gpu]' (nvidia-ml-py) to sample them")
        return NoSampling()
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no device: NVMLError_LibraryNotFound and kin
        log.debug("no GPU sampled: NVML did not start (%s)", exc)
        return NoSampling()
    try:
        sampler = GpuSampler(pynvml, devices, node=node)
        sampler.start(owner)
    except Exception as exc:
        log.debug("no GPU sampled: %s: %s", type(exc).__name__, exc)
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
        return NoSampling()
    return sampler


def _handle(nvml: Any, device: str) -> Any:
    if device.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(device))
    return nvml.nvmlDeviceGetHandleByUUID(device)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _total(nvml: Any, handle: Any) -> int:
    return int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
