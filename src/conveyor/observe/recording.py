"""A run's recording: bounded aggregates per stage and per run, as a plain value.

A :class:`Recording` is what a :class:`~conveyor.observe.recorder.Recorder` yields
and what the analysis (:mod:`conveyor.analysis`), the Chrome trace, the Gantt chart
and ``conveyor analyze`` read. Its size does not grow with the number of items:

- per stage (:class:`StageRecording`): counters (units, tasks, items in and out,
  errors, cache hits, dead letters), busy time, histograms of the service time and
  the queue wait of every unit (:class:`~conveyor.observe.histogram.Histogram`),
  the first unit's start and service time, time integrals over the run's window
  (queue depth, starved, full, worker-time), the peak depth, the resizes, and a
  :class:`Series` of fixed-width time buckets (depth, busy time per bucket);
- per run: items read and finished, a histogram of the items' latency (read to
  finish), the first item's read and finish, the window ``[t0_ns, t1_ns]``;
- a bounded window of per-unit detail (:class:`UnitDetail`: the first
  ``detail_limit`` units of the run) for the trace and the Gantt chart.

Times are monotonic nanoseconds; subtract ``started_ns`` for times since the run's
start. ``save``/``load`` write and read gzipped JSON with a format and a version
(3: the detail window in compact binary columns, decoded only when read,
:mod:`conveyor.observe.columns`; files of version 2 still load, to the same values).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conveyor.core.events import Key
from conveyor.errors import RecordingError
from conveyor.observe.columns import encode_detail, numbers, unit_keys
from conveyor.observe.gpu import GpuSeries
from conveyor.observe.histogram import Histogram

__all__ = [
    "FORMAT",
    "VERSION",
    "LazyDetail",
    "Recording",
    "RecordingError",
    "Series",
    "StageRecording",
    "StageShape",
    "UnitDetail",
    "full_depth",
]

FORMAT = "conveyor-recording"
VERSION = 3
READS = (2, 3)  # versions this conveyor loads
COMPRESSLEVEL = 3  # gzip: level 9 took four times as long for a file 10% smaller


def full_depth(capacity: int | None) -> int | None:
    """The depth from which a queue bounded at ``capacity`` counts as full: within a
    tenth of its bound (at least one place), ``capacity - max(1, ⌈capacity/10⌉)``;
    None for an unbounded queue, never full."""
    if capacity is None:
        return None
    return capacity - max(1, math.ceil(capacity / 10))


@dataclasses.dataclass(frozen=True)
class StageShape:
    """A stage as the run saw it when it started."""

    name: str
    kind: str
    executor: str
    workers: int
    capacity: int | None
    predecessors: tuple[str, ...]
    successors: tuple[str, ...]
    concurrency: int = 1  # calls in flight per worker (async def stages)
    fused: tuple[str, ...] = ()  # the fused chain it ran in, sharing its workers


@dataclasses.dataclass
class UnitDetail:
    """Per-unit detail of the units inside the recording's detail window.

    ``keys[i]`` (a batch: its first item's key) ran on worker ``worker[i]`` from
    ``started[i]`` to ``finished[i]``; ``failed`` holds the indices of units that raised.
    """

    keys: list[Key] = dataclasses.field(default_factory=list)
    worker: list[int] = dataclasses.field(default_factory=list)
    started: list[int] = dataclasses.field(default_factory=list)
    finished: list[int] = dataclasses.field(default_factory=list)
    failed: list[int] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.started)

    def keep(
        self,
        worker: int,
        keys: Sequence[Key],
        starts: Sequence[int],
        ends: Sequence[int],
        error: BaseException | None,
        room: int,
    ) -> int:
        """Keep at most ``room`` of a task's units; how many were kept."""
        m = min(len(keys), room)
        self.keys.extend(keys[:m])
        self.worker.extend([worker] * m)
        self.started.extend(starts[:m])
        self.finished.extend(ends[:m])
        if error is not None and m == len(keys):
            self.failed.append(len(self.started) - 1)
        return m


class LazyDetail(UnitDetail):
    """The detail window of a recording read from a file (version 3): each column is
    decoded from its compact form the first time something reads it, so a reader that
    needs no per-unit detail (the report) never makes an object per unit."""

    def __init__(self, columns: dict[str, Any], *, base: int) -> None:  # no dataclass init
        if not isinstance(columns.get("units"), int) or columns["units"] < 0:
            raise ValueError(f"detail of {columns.get('units')!r} units")
        self._columns = columns
        self._base = base
        self._units = int(columns["units"])
        self._decoded: dict[str, list[Any]] = {}

    def _column(self, name: str) -> list[Any]:
        got = self._decoded.get(name)
        if got is None:
            try:
                if name == "keys":
                    got = unit_keys(self._columns)
                else:
                    got = numbers(self._columns, name, self._base)
            except (KeyError, TypeError, ValueError) as exc:
                raise RecordingError(
                    f"the recording's per-unit detail is damaged ({type(exc).__name__}: "
                    f"{exc}); its report still holds, but record the run again for a trace "
                    "or a timeline"
                ) from exc
            self._decoded[name] = got
        return got

    def __len__(self) -> int:
        started = self._decoded.get("started")
        return self._units if started is None else len(started)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnitDetail):
            return NotImplemented
        names = ("keys", "worker", "started", "finished", "failed")
        return all(getattr(self, n) == getattr(other, n) for n in names)

    __hash__ = None  # type: ignore[assignment]  # mutable, as UnitDetail


def _lazy(name: str) -> property:
    def get(self: LazyDetail) -> list[Any]:
        return self._column(name)

    def put(self: LazyDetail, value: list[Any]) -> None:
        self._decoded[name] = value

    return property(get, put, doc=f"the units' {name} (decoded when first read)")


for _name in ("keys", "worker", "started", "finished", "failed"):
    setattr(LazyDetail, _name, _lazy(_name))


@dataclasses.dataclass
class Series:
    """One stage over time, in the recording's buckets (``Recording.bucket_ns`` wide,
    the first starting at ``Recording.started_ns``): per bucket, the time-integral of
    the input queue's depth (item·ns), its lowest and highest value, and the service
    time and count of the units that started in it."""

    depth_area: list[int] = dataclasses.field(default_factory=list)
    depth_low: list[int] = dataclasses.field(default_factory=list)
    depth_peak: list[int] = dataclasses.field(default_factory=list)
    busy_ns: list[int] = dataclasses.field(default_factory=list)
    units: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class StageRecording:
    """One stage's aggregates (see the module docstring). Window integrals cover the
    recording's window ``[t0_ns, t1_ns]``; ``run_depth_ns`` covers ``[started_ns, t1_ns]``."""

    shape: StageShape
    units: int = 0  # calls of the stage's function
    items_enqueued: int = 0
    items_in: int | None = None  # the engine's final counters, when the run reported them
    items_out: int | None = None
    errors: int = 0
    cache_hits: int = 0
    dead_letters: int = 0
    busy_ns: int = 0  # Σ service time of its units
    occupancy_ns: int = 0  # Σ over tasks of units × (last end - dispatch): in a worker's hands
    service: Histogram = dataclasses.field(default_factory=Histogram)  # per unit
    wait: Histogram = dataclasses.field(default_factory=Histogram)  # per unit, queue wait
    first_start_ns: int | None = None  # its first unit's start
    first_service_ns: int | None = None  # and service time (shows a warm-up)
    peak_depth: int = 0
    window_depth_ns: int = 0  # ∫ depth dt over the window (item·ns)
    window_starved_ns: int = 0  # time with the queue empty and a worker free
    window_full_ns: int = 0  # time with the queue full (see analysis.is_full)
    window_worker_ns: int = 0  # ∫ workers dt (worker·ns), resizes applied
    run_depth_ns: int = 0  # ∫ depth dt from the run's start to t1_ns (Little's law)
    final_workers: int | None = None  # the pool after the last resize
    resizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (t_ns, workers)
    series: Series = dataclasses.field(default_factory=Series)
    detail: UnitDetail = dataclasses.field(default_factory=UnitDetail)

    @property
    def name(self) -> str:
        return self.shape.name

    @property
    def workers(self) -> int:
        """The pool at the end (after the last resize)."""
        return self.shape.workers if self.final_workers is None else self.final_workers

    def workers_at(self, t_ns: int) -> int:
        """The pool size at ``t_ns`` (resize events applied in order)."""
        w = self.shape.workers
        for t, n in self.resizes:
            if t > t_ns:
                break
            w = n
        return w


@dataclasses.dataclass
class Recording:
    """Everything one run recorded, in bounded aggregates: a value, saved and loaded
    with :meth:`save`/:meth:`load`. ``stages`` is in topological order."""

    run_id: str
    pipeline: str
    ordered: bool
    started_ns: int
    stages: dict[str, StageRecording]
    ended_ns: int | None = None
    state: str = "running"
    cpus: int | None = None  # CPU cores of the machine that ran it
    items_read: int = 0
    items_done: int = 0  # source items finished with a result
    items_other: dict[str, int] = dataclasses.field(default_factory=dict)  # filtered, ...
    latency: Histogram = dataclasses.field(default_factory=Histogram)  # per finished item
    first_read_ns: int | None = None  # the first item to finish: when it was read
    first_done_ns: int | None = None  # and when it finished
    last_done_ns: int | None = None
    last_event_ns: int | None = None  # the last event seen
    t0_ns: int | None = None  # the window: the first unit's start
    t1_ns: int | None = None  # and the last unit's end or item's finish
    bucket_ns: int = 1  # width of the series' buckets
    detail_limit: int = 0  # units of per-unit detail the recorder kept at most
    detail_end_ns: int | None = None  # the detail window closed here (None: whole run)
    source_ns: int | None = None  # time spent inside the source, producing items
    driver_ns: int | None = None  # time conveyor's scheduler spent moving items
    places: dict[str, dict[int, str]] = dataclasses.field(default_factory=dict)  # cluster nodes
    # stage -> node its results were lost with ("": freed, needed again) -> results made again
    remade: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    gpus: list[GpuSeries] = dataclasses.field(default_factory=list)  # sampled devices

    @property
    def end_ns(self) -> int:
        """The run's end, or the last event seen for a run still going."""
        if self.ended_ns is not None:
            return self.ended_ns
        return max(self.started_ns, self.last_event_ns or self.started_ns)

    @property
    def source_seconds(self) -> float | None:
        """Time spent inside the source producing items, when it was measured."""
        return None if self.source_ns is None else self.source_ns / 1e9

    @property
    def units(self) -> int:
        return sum(s.units for s in self.stages.values())

    @property
    def detail_units(self) -> int:
        """How many units have per-unit detail (at most ``detail_limit``)."""
        return sum(len(s.detail) for s in self.stages.values())

    @property
    def detail_complete(self) -> bool:
        """Whether the per-unit detail covers every unit of the run."""
        return self.detail_units == self.units

    # --- persistence --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (keys become lists); :meth:`from_dict` inverts it."""
        out: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        for f in dataclasses.fields(self):
            if f.name not in ("stages", "latency", "gpus"):
                out[f.name] = getattr(self, f.name)
        out["gpus"] = [dataclasses.asdict(g) for g in self.gpus]
        out["latency"] = self.latency.to_dict()
        out["stages"] = [_stage_to_dict(s, self.started_ns) for s in self.stages.values()]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "the data") -> Recording:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RecordingError(
                f"{where} is not a conveyor recording (no format {FORMAT!r}); record one "
                "with `conveyor run TARGET --record PATH` or Recording.save(path)"
            )
        version = data.get("version")
        if version == 1:
            raise RecordingError(
                f"{where} is a recording of version 1, which kept every unit's times; this "
                f"conveyor reads version {VERSION} (bounded aggregates): record the run again "
                "with `conveyor run TARGET --record PATH`"
            )
        if version not in READS:
            raise RecordingError(
                f"{where} is a recording of version {version!r}; this conveyor "
                f"reads versions {' and '.join(map(str, READS))}: record it again with "
                "this version"
            )
        try:
            fields = {  # a field added since (it has a default) may be missing
                f.name: data[f.name]
                for f in dataclasses.fields(cls)
                if f.name not in ("stages", "latency", "gpus") and (f.name in data or _required(f))
            }
            base = data["started_ns"] if version >= 3 else None
            stages = {s["shape"]["name"]: _stage_from_dict(s, base) for s in data["stages"]}
            if "places" in fields:  # stage -> worker -> node (JSON made the workers strings)
                places = fields["places"].items()
                fields["places"] = {st: {int(w): n for w, n in m.items()} for st, m in places}
            gpus = [GpuSeries(**g) for g in data.get("gpus", [])]  # absent before sampling
            return cls(
                **fields, stages=stages, latency=Histogram.from_dict(data["latency"]), gpus=gpus
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingError(
                f"{where} is a damaged conveyor recording ({type(exc).__name__}: {exc}); "
                "record the run again"
            ) from exc

    def to_bytes(self) -> bytes:
        """The recording as gzipped JSON: what :meth:`save` writes and the run store keeps."""
        text = json.dumps(self.to_dict(), separators=(",", ":"))  # in one go, in C
        return gzip.compress(text.encode("utf-8"), compresslevel=COMPRESSLEVEL)

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "the data") -> Recording:
        """Read :meth:`to_bytes`' output (any version this conveyor reads)."""
        try:
            parsed = json.loads(gzip.decompress(data))
        except (OSError, EOFError, ValueError, zlib.error) as exc:  # JSON, Unicode errors too
            raise RecordingError(
                f"{where} is not a conveyor recording (gzipped JSON): {exc}; "
                "record one with `conveyor run TARGET --record PATH`"
            ) from exc
        return cls.from_dict(parsed, where=where)

    def save(self, path: str | Path) -> Path:
        """Write the recording as gzipped JSON (format ``conveyor-recording``, versioned)."""
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        """Read a recording written by :meth:`save`; :class:`RecordingError` if it is not one."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RecordingError(f"recording {str(path)!r} not found; check the path") from None
        except OSError as exc:
            raise RecordingError(f"cannot read the recording {str(path)!r}: {exc}") from exc
        return cls.from_bytes(data, where=repr(str(path)))


_STAGE_PLAIN = tuple(
    f.name
    for f in dataclasses.fields(StageRecording)
    if f.name not in ("shape", "service", "wait", "resizes", "series", "detail")
)


def _stage_to_dict(s: StageRecording, base: int) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(s, name) for name in _STAGE_PLAIN}
    out["shape"] = dataclasses.asdict(s.shape)
    out["service"] = s.service.to_dict()
    out["wait"] = s.wait.to_dict()
    out["resizes"] = [list(r) for r in s.resizes]
    # Not dataclasses.asdict: it deep-copies every number, most of the time of a save.
    out["series"] = {f.name: getattr(s.series, f.name) for f in dataclasses.fields(Series)}
    d = s.detail
    if isinstance(d, LazyDetail) and not d._decoded and d._base == base:
        out["detail"] = d._columns  # as read, never decoded: written back as it was
    else:
        out["detail"] = encode_detail(d.keys, d.worker, d.started, d.finished, d.failed, base=base)
    return out


def _stage_from_dict(d: dict[str, Any], base: int | None) -> StageRecording:
    """A stage of a recording of version 3 (``base``: its ``started_ns``) or 2 (None)."""
    sh = d["shape"]
    shape = StageShape(
        name=sh["name"],
        kind=sh["kind"],
        executor=sh["executor"],
        workers=sh["workers"],
        capacity=sh["capacity"],
        predecessors=tuple(sh["predecessors"]),
        successors=tuple(sh["successors"]),
        concurrency=sh.get("concurrency", 1),
        fused=tuple(sh.get("fused", ())),
    )
    det = d["detail"]
    if base is None:  # version 2: a list per column, absolute stamps
        keys = [_key(k) for k in det["keys"]]
        detail = UnitDetail(
            keys, list(det["worker"]), list(det["started"]), list(det["finished"]),
            list(det["failed"]),
        )  # fmt: skip
    else:
        detail = LazyDetail(det, base=base)
    return StageRecording(
        shape=shape,
        **{name: d[name] for name in _STAGE_PLAIN},
        service=Histogram.from_dict(d["service"]),
        wait=Histogram.from_dict(d["wait"]),
        resizes=[(int(t), int(w)) for t, w in d["resizes"]],
        series=Series(**{f.name: list(d["series"][f.name]) for f in dataclasses.fields(Series)}),
        detail=detail,
    )


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _key(k: Any) -> Key:
    return tuple(_key(x) if isinstance(x, list) else x for x in k)
