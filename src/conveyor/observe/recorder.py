"""The recorder: every unit's times at every stage, and every queue's depth over time.

A :class:`Recorder` is an :class:`~conveyor.Instrument` that a run carries by default
(``Pipeline.run(record=False)`` turns it off). When the run ends (or at any moment,
for a snapshot) it yields a :class:`Recording`: a plain value that the analysis
(:mod:`conveyor.analysis`), the trace, the Gantt chart and ``conveyor analyze`` read.

Data model, per stage (:class:`StageRecording`), one entry per *unit* (one call of the
stage's function: an item for map and flat_map, a batch for batch and collect,
whose key is the batch's first item key)::

    keys[i]        the unit's key
    worker[i]      the worker index that ran it
    dispatched[i]  monotonic ns when its task left the input queue for a worker
    started[i]     monotonic ns when the function was called
    finished[i]    monotonic ns when it returned (or raised)
    enqueued_ns()  monotonic ns when the unit's (first) item entered the input queue

plus the enqueue log (which keys entered the queue, when, in what bursts), the
queue depth after every change (``depth_t``, ``depth``), the indices of units that
raised, and the stage's resize events. Per run: the source reads (item i read at
``read_ns()[i]``), the terminal time and state of every source item, the run's
start and end, its state, and the pipeline's shape (:class:`StageShape`).

Cost: hooks extend flat lists with C-level ``extend`` (a list of the engine's own
int and key objects copies pointers; an ``array('q')`` would convert every int),
so nothing loops over items inside a hook and the garbage collector sees a few
big lists, not a container per task. Neither ``items_read`` (the first stage's
enqueue carries the same keys at the same instant) nor ``items_emitted`` (called
once per result; an item's end is its ``roots_finished`` event) is recorded. Derived per-item arrays (enqueue time of a unit,
read time of a root) are built lazily by the analysis, after the run.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conveyor.core.events import Instrument, Key, RunInfo
from conveyor.errors import RecordingError

__all__ = [
    "FORMAT",
    "VERSION",
    "Recorder",
    "Recording",
    "RecordingError",
    "StageRecording",
    "StageShape",
]

FORMAT = "conveyor-recording"
VERSION = 1


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


@dataclasses.dataclass
class StageRecording:
    """One stage's recorded events; see the module docstring for the fields."""

    shape: StageShape
    keys: list[Key] = dataclasses.field(default_factory=list)
    worker: list[int] = dataclasses.field(default_factory=list)
    started: list[int] = dataclasses.field(default_factory=list)
    finished: list[int] = dataclasses.field(default_factory=list)
    dispatched: list[int] = dataclasses.field(default_factory=list)  # its task left the queue
    failed: list[int] = dataclasses.field(default_factory=list)  # indices of units that raised
    enq_keys: list[Key] = dataclasses.field(default_factory=list)
    enq_t: list[int] = dataclasses.field(default_factory=list)
    enq_n: list[int] = dataclasses.field(default_factory=list)
    depth_t: list[int] = dataclasses.field(default_factory=list)
    depth: list[int] = dataclasses.field(default_factory=list)
    resizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (t_ns, workers)
    items_in: int | None = None  # the engine's final counters, when the run reported them
    items_out: int | None = None
    errors: int = 0
    cache_hits: int = 0
    dead_letters: int = 0

    @property
    def name(self) -> str:
        return self.shape.name

    @property
    def units(self) -> int:
        return len(self.started)

    @property
    def items_enqueued(self) -> int:
        return len(self.enq_keys)

    def busy_ns(self) -> int:
        """Total time the stage's workers spent inside its function."""
        return sum(self.finished) - sum(self.started)

    def enqueued_ns(self) -> list[int]:
        """For each unit, when its (first) item entered this stage's input queue
        (its start time when the enqueue was not seen)."""
        when: dict[Key, int] = {}
        i = 0
        for t, n in zip(self.enq_t, self.enq_n, strict=True):
            for k in self.enq_keys[i : i + n]:
                when.setdefault(k, t)
            i += n
        return [when.get(k, s) for k, s in zip(self.keys, self.started, strict=True)]

    def workers_at(self, t_ns: int) -> int:
        """The pool size at ``t_ns`` (resize events applied in order)."""
        w = self.shape.workers
        for t, n in self.resizes:
            if t > t_ns:
                break
            w = n
        return w

    def worker_seconds(self, t0: int, t1: int) -> float:
        """∫ workers(t) dt over [t0, t1], in worker-seconds."""
        if t1 <= t0:
            return 0.0
        total, w, t = 0, self.workers_at(t0), t0
        for tr, n in self.resizes:
            if tr <= t0:
                continue
            if tr >= t1:
                break
            total += w * (tr - t)
            t, w = tr, n
        total += w * (t1 - t)
        return total / 1e9


@dataclasses.dataclass
class Recording:
    """Everything one run recorded: a value, saved and loaded with :meth:`save`/:meth:`load`.

    ``stages`` is in topological order. Times are monotonic nanoseconds; subtract
    ``started_ns`` for times since the run's start.
    """

    run_id: str
    pipeline: str
    ordered: bool
    started_ns: int
    stages: dict[str, StageRecording]
    ended_ns: int | None = None
    state: str = "running"
    read_first: list[int] = dataclasses.field(default_factory=list)
    read_t: list[int] = dataclasses.field(default_factory=list)
    read_n: list[int] = dataclasses.field(default_factory=list)
    done_roots: list[int] = dataclasses.field(default_factory=list)
    done_t: list[int] = dataclasses.field(default_factory=list)
    done_n: list[int] = dataclasses.field(default_factory=list)
    other_roots: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # filtered, ...
    cpus: int | None = None  # CPU cores of the machine that ran it

    @property
    def items_read(self) -> int:
        return sum(self.read_n)

    @property
    def items_done(self) -> int:
        return len(self.done_roots)

    @property
    def end_ns(self) -> int:
        """The run's end, or the last event seen for a run still going."""
        if self.ended_ns is not None:
            return self.ended_ns
        last = [self.started_ns, *(s.finished[-1] for s in self.stages.values() if s.finished)]
        return max(last)

    def read_ns(self) -> list[int]:
        """``read_ns()[i]``: when source item i was read (roots are numbered in order)."""
        out: list[int] = []
        for first, t, n in zip(self.read_first, self.read_t, self.read_n, strict=True):
            if first != len(out):  # roots are read in order; keep positions true anyway
                out.extend([t] * max(0, first - len(out)))
            out.extend([t] * n)
        return out

    def done_ns(self) -> list[int]:
        """For each entry of ``done_roots``, when that source item finished."""
        out: list[int] = []
        for t, n in zip(self.done_t, self.done_n, strict=True):
            out.extend([t] * n)
        return out

    # --- persistence --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (keys become lists); :meth:`from_dict` inverts it."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "ordered": self.ordered,
            "started_ns": self.started_ns,
            "ended_ns": self.ended_ns,
            "state": self.state,
            "read": [list(self.read_first), list(self.read_t), list(self.read_n)],
            "done": [list(self.done_roots), list(self.done_t), list(self.done_n)],
            "other_roots": self.other_roots,
            "cpus": self.cpus,
            "stages": [_stage_to_dict(s) for s in self.stages.values()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "the data") -> Recording:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RecordingError(
                f"{where} is not a conveyor recording (no format {FORMAT!r}); record one "
                "with `conveyor run TARGET --record PATH` or Recording.save(path)"
            )
        if data.get("version") != VERSION:
            raise RecordingError(
                f"{where} is a recording of version {data.get('version')!r}; this conveyor "
                f"reads version {VERSION}: record it again with this version"
            )
        try:
            stages = {s["shape"]["name"]: _stage_from_dict(s) for s in data["stages"]}
            rf, rt, rn = data["read"]
            dr, dt, dn = data["done"]
            return cls(
                run_id=data["run_id"],
                pipeline=data["pipeline"],
                ordered=data["ordered"],
                started_ns=data["started_ns"],
                ended_ns=data["ended_ns"],
                state=data["state"],
                stages=stages,
                read_first=list(rf),
                read_t=list(rt),
                read_n=list(rn),
                done_roots=list(dr),
                done_t=list(dt),
                done_n=list(dn),
                other_roots={k: list(v) for k, v in data["other_roots"].items()},
                cpus=data.get("cpus"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingError(
                f"{where} is a damaged conveyor recording ({type(exc).__name__}: {exc}); "
                "record the run again"
            ) from exc

    def save(self, path: str | Path) -> Path:
        """Write the recording as gzipped JSON (format ``conveyor-recording``, versioned)."""
        path = Path(path)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, separators=(",", ":"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        """Read a recording written by :meth:`save`; :class:`RecordingError` if it is not one."""
        path = Path(path)
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise RecordingError(f"recording {str(path)!r} not found; check the path") from None
        except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordingError(
                f"{str(path)!r} is not a conveyor recording (gzipped JSON): {exc}; "
                "record one with `conveyor run TARGET --record PATH`"
            ) from exc
        return cls.from_dict(data, where=repr(str(path)))


def _stage_to_dict(s: StageRecording) -> dict[str, Any]:
    return {
        "shape": dataclasses.asdict(s.shape),
        "keys": [list(k) for k in s.keys],
        "worker": list(s.worker),
        "started": list(s.started),
        "finished": list(s.finished),
        "dispatched": list(s.dispatched),
        "failed": s.failed,
        "enq_keys": [list(k) for k in s.enq_keys],
        "enq_t": list(s.enq_t),
        "enq_n": list(s.enq_n),
        "depth_t": list(s.depth_t),
        "depth": list(s.depth),
        "resizes": [list(r) for r in s.resizes],
        "items_in": s.items_in,
        "items_out": s.items_out,
        "errors": s.errors,
        "cache_hits": s.cache_hits,
        "dead_letters": s.dead_letters,
    }


def _stage_from_dict(d: dict[str, Any]) -> StageRecording:
    sh = d["shape"]
    shape = StageShape(
        name=sh["name"],
        kind=sh["kind"],
        executor=sh["executor"],
        workers=sh["workers"],
        capacity=sh["capacity"],
        predecessors=tuple(sh["predecessors"]),
        successors=tuple(sh["successors"]),
    )
    return StageRecording(
        shape=shape,
        keys=[_key(k) for k in d["keys"]],
        worker=list(d["worker"]),
        started=list(d["started"]),
        finished=list(d["finished"]),
        dispatched=list(d["dispatched"]),
        failed=list(d["failed"]),
        enq_keys=[_key(k) for k in d["enq_keys"]],
        enq_t=list(d["enq_t"]),
        enq_n=list(d["enq_n"]),
        depth_t=list(d["depth_t"]),
        depth=list(d["depth"]),
        resizes=[(int(t), int(w)) for t, w in d["resizes"]],
        items_in=d["items_in"],
        items_out=d["items_out"],
        errors=d["errors"],
        cache_hits=d["cache_hits"],
        dead_letters=d["dead_letters"],
    )


def _key(k: Any) -> Key:
    return tuple(_key(x) if isinstance(x, list) else x for x in k)


def _shape(info: Any) -> StageShape:
    return StageShape(
        name=info.name,
        kind=info.kind,
        executor=info.executor,
        workers=info.workers,
        capacity=info.capacity,
        predecessors=tuple(info.predecessors),
        successors=tuple(info.successors),
    )


class Recorder(Instrument):
    """Records a run's events into a :class:`Recording` (see the module docstring).

    Pass it in a run's ``instruments`` (``Pipeline.run`` adds one unless
    ``record=False``), then read :attr:`recording` (final once the run has ended)
    or call :meth:`snapshot` while the run goes on. One recorder records one run.

    Hooks extend flat lists of ints and key tuples (C-level ``extend``, a few calls
    per task): few container objects for the garbage collector to walk, and no
    Python loop over items inside a hook.
    """

    def __init__(self) -> None:
        self._info: RunInfo | None = None
        self._stages: dict[str, StageRecording] = {}
        self._dispatched: dict[int, int] = {}  # task id -> when it left its queue
        self._done_roots: list[int] = []
        self._done_t: list[int] = []
        self._done_n: list[int] = []
        self._other: dict[str, list[int]] = {}
        self._control: Any = None
        self._ended: tuple[int, str] | None = None
        self._rec: Recording | None = None
        self.finished = False

    @property
    def recording(self) -> Recording:
        """The run's recording (final once the run has ended); raises RuntimeError
        before the run has started. While the run goes on, a snapshot."""
        if not self.finished:
            return self.snapshot()
        if self._rec is None:
            self._rec = self._build(copy=False)
        return self._rec

    def snapshot(self) -> Recording:
        """What is recorded so far, as a new value, safe to analyse while the run goes
        on (call it from the thread that iterates the run)."""
        return self._build(copy=True)

    def _build(self, *, copy: bool) -> Recording:
        info = self._info
        if info is None:
            raise RuntimeError(
                "the run has not started, so nothing is recorded yet; iterate the run "
                "(or call run.wait()) first"
            )
        stages = {n: (_copy_stage(s) if copy else s) for n, s in self._stages.items()}
        rec = Recording(
            run_id=info.run_id,
            pipeline=info.pipeline,
            ordered=info.ordered,
            started_ns=info.started_ns,
            stages=stages,
            cpus=os.cpu_count(),
            ended_ns=self._ended[0] if self._ended else None,
            state=self._ended[1] if self._ended else "running",
            other_roots={k: list(v) for k, v in self._other.items()},
            done_roots=list(self._done_roots),
            done_t=list(self._done_t),
            done_n=list(self._done_n),
        )
        # Source reads: the first stage's enqueues of source keys, stamped with the
        # same instant as the read (the scheduler reads and enqueues in one step).
        entry = next((s for s in stages.values() if not s.shape.predecessors), None)
        if entry is not None:
            i = 0
            for t, n in zip(entry.enq_t, entry.enq_n, strict=True):
                if n:
                    rec.read_first.append(entry.enq_keys[i][0])
                    rec.read_t.append(t)
                    rec.read_n.append(n)
                i += n
        return rec

    # --- hooks ------------------------------------------------------------------

    def run_started(self, run: RunInfo) -> None:
        self._info = run
        self._stages = {s.name: StageRecording(_shape(s)) for s in run.stages}
        self._control = run.control

    def items_enqueued(self, stage: str, keys: Sequence[Key], depth: int, t_ns: int) -> None:
        s = self._stages.get(stage)
        if s is None:  # "<output>": the results buffer, not a stage
            return
        s.enq_keys.extend(keys)
        s.enq_t.append(t_ns)
        s.enq_n.append(len(keys))
        s.depth_t.append(t_ns)
        s.depth.append(depth)

    def task_started(
        self, stage: str, task: int, keys: Sequence[Key], depth: int, t_ns: int
    ) -> None:
        s = self._stages[stage]
        s.depth_t.append(t_ns)
        s.depth.append(depth)
        self._dispatched[task] = t_ns

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
        s = self._stages[stage]
        n = len(keys)
        dispatched = self._dispatched.pop(task, starts_ns[0] if n else 0)
        s.keys.extend(keys)
        s.started.extend(starts_ns)
        s.finished.extend(ends_ns)
        s.worker.extend([worker] * n)
        s.dispatched.extend([dispatched] * n)
        if error is not None:
            s.failed.append(len(s.keys) - 1)
            s.errors += 1

    def dead_lettered(
        self,
        stage: str,
        key: Key,
        value: Any,
        error: BaseException,
        traceback: str | None,
        t_ns: int,
    ) -> None:
        self._stages[stage].dead_letters += 1

    def cache_hits(self, stage: str, keys: Sequence[Key], t_ns: int) -> None:
        self._stages[stage].cache_hits += len(keys)

    def roots_finished(self, roots: Sequence[int], state: str, t_ns: int) -> None:
        if state == "done":
            self._done_roots.extend(roots)
            self._done_t.append(t_ns)
            self._done_n.append(len(roots))
        else:
            self._other.setdefault(state, []).extend(roots)

    def stage_resized(self, stage: str, workers: int, t_ns: int) -> None:
        self._stages[stage].resizes.append((t_ns, workers))

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        if self._info is None:
            return
        self._ended = (t_ns, state)
        control, self._control = self._control, None
        if control is not None:
            try:
                stats = control.statistics()
            except ReferenceError:  # the run object is gone: keep what the events say
                stats = None
            if stats is not None:
                for name, st in stats.stages.items():
                    s = self._stages.get(name)
                    if s is not None:
                        s.items_in, s.items_out = st.items_in, st.items_out
                        s.errors = max(s.errors, st.errors)
        self.finished = True


def _copy_stage(s: StageRecording) -> StageRecording:
    """A copy whose lists the recorder will not extend any more."""
    c = copy.copy(s)
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if isinstance(value, list):
            setattr(c, f.name, list(value))
    return c
