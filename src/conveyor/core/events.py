"""Hooks: how the recorder, progress display, metrics and run store see a run.

The scheduler calls every registered :class:`Instrument` at the events below; the
core itself never prints. Subclass :class:`Instrument` and override what you need;
every method is a no-op by default. Calls come from the thread that iterates the
run (the scheduler's thread), in event order, so an instrument needs no lock of
its own unless it shares state with another thread (a metrics server, say).

Times are ``time.monotonic_ns()`` values; on Linux and macOS the monotonic clock is
shared by every process of the machine, so process workers' times line up with
the driver's. Keys are tuples: ``(i,)`` for the i-th source item, ``k + (j,)`` for
the j-th result of a flat_map on key ``k``. Events are per task (a chunk of items),
not per item, so recording stays cheap.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from conveyor.errors import InstrumentError, InstrumentWarning

if TYPE_CHECKING:
    from conveyor.core.statistics import RunStatistics

Key = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class StageInfo:
    name: str
    kind: str
    executor: str
    workers: int
    capacity: int | None  # most its input queue may hold; None for collect
    predecessors: tuple[str, ...]
    successors: tuple[str, ...]
    concurrency: int = 1  # calls in flight per worker (async def stages)
    fused: tuple[str, ...] = ()  # the fused chain it runs in, sharing its workers
    gpus: float = 0.0  # GPUs per worker (resources)


class RunControl(Protocol):
    """What an instrument may do to the run it observes (a :class:`~conveyor.Run`)."""

    def resize(self, stage: str, workers: int) -> None: ...

    def statistics(self) -> RunStatistics: ...


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What an instrument needs to know about the run it observes.

    ``control`` lets an instrument act on the run from inside a hook, e.g. a
    rebalancer that resizes the bottleneck stage's pool.
    """

    run_id: str
    pipeline: str
    stages: tuple[StageInfo, ...]  # topological order
    ordered: bool
    started_ns: int
    control: RunControl | None = dataclasses.field(default=None, compare=False, repr=False)


class Instrument:
    """Receives a run's events. Override any subset; all are no-ops here.

    A hook that raises is detached with an :class:`~conveyor.InstrumentWarning` and
    the run goes on; set ``critical = True`` on an instrument the run must not go on
    without (it then stops with :class:`~conveyor.InstrumentError`).
    """

    critical: ClassVar[bool] = False

    def run_started(self, run: RunInfo) -> None:
        """The run starts: workers are being started, no item has been read."""

    def items_read(self, keys: Sequence[Key], t_ns: int) -> None:
        """Items were taken from the source (before entering the first queues)."""

    def items_enqueued(self, stage: str, keys: Sequence[Key], depth: int, t_ns: int) -> None:
        """Items entered ``stage``'s input queue; ``depth`` is its depth afterwards.
        (Results entering the run's output buffer are not reported: it is no stage.)"""

    def task_started(
        self, stage: str, task: int, keys: Sequence[Key], depth: int, t_ns: int
    ) -> None:
        """A task (a chunk of items) left ``stage``'s queue for a worker; ``depth`` after."""

    def task_finished(
        self,
        stage: str,
        task: int,
        worker: int,
        keys: Sequence[Key],
        starts_ns: Sequence[int],
        ends_ns: Sequence[int],
        error: BaseException | None,
    ) -> None:
        """A task came back. ``keys[i]`` ran on ``worker`` from ``starts_ns[i]`` to
        ``ends_ns[i]``. For a batch stage each entry is one batch and its key is the
        batch's first key. On error the lists cover the items that ran, the failing
        one last."""

    def items_emitted(self, keys: Sequence[Key], t_ns: int) -> None:
        """Results were handed to the consumer."""

    def unit_failed(
        self,
        stage: str,
        key: Key,
        error: BaseException,
        traceback: str | None,
        attempt: int,
        retrying: bool,
        t_ns: int,
    ) -> None:
        """A call of ``stage``'s function raised on ``key`` (``attempt`` counts from 1);
        ``retrying`` says whether the stage's retry policy will run it again."""

    def dead_lettered(
        self,
        stage: str,
        key: Key,
        value: Any,
        error: BaseException,
        traceback: str | None,
        t_ns: int,
    ) -> None:
        """``stage`` gave up on ``key`` under its skip policy; ``value`` is its input."""

    def cache_hits(self, stage: str, keys: Sequence[Key], t_ns: int) -> None:
        """``stage`` served these keys from its cache instead of calling its function."""

    def roots_finished(self, roots: Sequence[int], state: str, t_ns: int) -> None:
        """Source items reached a terminal state: ``done`` (a result of theirs reached
        the output), ``filtered`` (no result: a flat_map dropped them) or
        ``dead_lettered``. Items never finished are still pending."""

    def worker_placed(self, stage: str, worker: int, place: str, t_ns: int) -> None:
        """Worker ``worker`` of ``stage`` runs on ``place``, a node of a cluster (an IP
        and a node id): said once per worker, before its first ``task_finished``.
        Workers on the driver's machine (threads, processes) are never placed."""

    def results_remade(self, stage: str, count: int, lost_on: str, t_ns: int) -> None:
        """``count`` results of ``stage`` kept on a cluster's node were made again by
        re-running the units that made them, for a consumer that needed them: lost
        with node ``lost_on``, or freed (``lost_on`` is ``""``) and needed again to
        make a lost result of a later stage. The items go on; nothing is counted twice."""

    def stage_resized(self, stage: str, workers: int, t_ns: int) -> None:
        """``stage``'s pool now has ``workers`` workers (see ``Run.resize``)."""

    def results_dropped(self, keys: Sequence[Key], t_ns: int) -> None:
        """A failed or cancelled run ended with these results at the output (their
        roots reported ``done``) but never handed to the consumer; called just before
        ``run_finished``. Resume runs their roots again."""

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        """The run ended: ``state`` is succeeded, failed or cancelled."""


EVENTS: tuple[str, ...] = tuple(
    name for name, value in vars(Instrument).items() if callable(value) and not name.startswith("_")
)


class Instruments(Instrument):
    """Fans every event out to several instruments, in order, each one isolated.

    Built once per run: for each event it keeps only the instruments that override
    it, so an event nobody listens to costs one call to a no-op, and ``active`` and
    ``wants(event)`` let the scheduler skip building an event's arguments at all.

    An observer never kills a run: a hook that raises is reported once, as an
    :class:`~conveyor.InstrumentWarning` naming the instrument and the exception,
    and its instrument is detached for the rest of the run. An instrument whose
    class sets ``critical = True`` stops the run instead, with
    :class:`~conveyor.InstrumentError`.
    """

    def __init__(self, instruments: Sequence[Instrument]) -> None:
        self.instruments = tuple(instruments)
        self.active = bool(self.instruments)
        self.detached: list[tuple[Instrument, BaseException]] = []
        self._listening: set[str] = set()
        self._bind()

    def _bind(self) -> None:
        self._listening.clear()
        for name in EVENTS:
            hooks = tuple(
                self._guarded(i, name)
                for i in self.instruments
                if getattr(type(i), name) is not getattr(Instrument, name)
            )
            if hooks:
                self._listening.add(name)
            setattr(self, name, hooks[0] if len(hooks) == 1 else _fan_out(hooks))

    def _guarded(self, instrument: Instrument, event: str) -> Any:
        hook = getattr(instrument, event)
        if getattr(instrument, "critical", False):

            def critical(*args: Any) -> None:
                try:
                    hook(*args)
                except Exception as exc:
                    name = type(instrument).__name__
                    raise InstrumentError(
                        f"instrument {name} (critical) raised {type(exc).__name__} in "
                        f"{event}: {exc}; the run stopped",
                        stage=f"<instrument {name}>",
                    ) from exc

            return critical

        def isolated(*args: Any) -> None:
            try:
                hook(*args)
            except Exception as exc:
                self._detach(instrument, event, exc)

        return isolated

    def _detach(self, instrument: Instrument, event: str, exc: Exception) -> None:
        if instrument not in self.instruments:
            return  # already detached (a fan-out was under way)
        self.instruments = tuple(i for i in self.instruments if i is not instrument)
        self.detached.append((instrument, exc))
        self._bind()
        warnings.warn(
            f"instrument {type(instrument).__name__} raised {type(exc).__name__} in {event}: "
            f"{exc}; it was detached and the run goes on without it",
            InstrumentWarning,
            stacklevel=3,
        )

    def __bool__(self) -> bool:
        return self.active

    def wants(self, event: str) -> bool:
        """Whether any instrument overrides ``event``."""
        return event in self._listening


def _fan_out(hooks: tuple[Any, ...]) -> Any:
    def call(*args: Any) -> None:
        for hook in hooks:
            hook(*args)

    return call
