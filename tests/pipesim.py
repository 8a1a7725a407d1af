"""A chain of map stages simulated in virtual time, calling an instrument's hooks.

The simulator plays the scheduler's part with a fake clock: a source read into the
first stage's bounded queue whenever it has room, tasks dispatched to free workers
when the next queue has room for their results (the scheduler's reservations), units
run back to back inside a task, results routed to the next queue or finished. Every
hook gets the timestamps the simulation chose, so a test controls every figure and
the machine's speed changes nothing. ``SimLog`` keeps the ground truth (every unit,
every item's enqueue and dispatch, every read and finish, every depth change) for
tests that compute the figures exactly and compare.

    rec = simulate([SimStage("a", 5), SimStage("b", 10, workers=2)], items=100)
    build_report(rec)

Times are integers in nanoseconds; ``ms`` and ``service`` give a unit's service time.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import deque
from collections.abc import Callable

from conveyor.core.events import Instrument, RunInfo, StageInfo
from conveyor.observe.recorder import Recorder
from conveyor.observe.recording import Recording

MS = 1_000_000


@dataclasses.dataclass
class SimStage:
    name: str
    ms: float = 1.0  # service time of every unit, unless ``service`` is given
    workers: int = 1
    capacity: int = 8
    service: Callable[[int], int] | None = None  # root -> ns
    units_per_task: int = 1
    executor: str = "threads"  # as recorded: "processes" workers count against the cores
    concurrency: int = 1  # an async stage's calls in flight per worker

    def service_ns(self, root: int) -> int:
        return self.service(root) if self.service is not None else int(self.ms * MS)


@dataclasses.dataclass
class SimLog:
    """Ground truth of a simulated run."""

    starts: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    ends: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    waits: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # dispatch - enqueue
    depth: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    inflight: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    dispatch_to_end: dict[str, int] = dataclasses.field(default_factory=dict)  # Σ per item
    read: dict[int, int] = dataclasses.field(default_factory=dict)
    done: dict[int, int] = dataclasses.field(default_factory=dict)
    started_ns: int = 0
    ended_ns: int = 0


def run_info(stages: list[SimStage], start: int = 0) -> RunInfo:
    names = [s.name for s in stages]
    return RunInfo(
        run_id="sim",
        pipeline="sim",
        stages=tuple(
            StageInfo(
                name=s.name,
                kind="map",
                executor=s.executor,
                workers=s.workers,
                capacity=s.capacity,
                predecessors=tuple(names[i - 1 : i]),
                successors=tuple(names[i + 1 : i + 2]),
                concurrency=s.concurrency,
            )
            for i, s in enumerate(stages)
        ),
        ordered=False,
        started_ns=start,
    )


def simulate(
    stages: list[SimStage],
    items: int,
    *,
    instrument: Instrument | None = None,
    log: SimLog | None = None,
    start: int = 0,
    startup_ns: int = 0,
    dispatch_ns: int = 0,
    read_burst: int | None = None,
    arrival_ns: int = 0,
) -> Recording:
    """Run ``items`` source items through the chain; return the recorder's recording
    (``instrument`` receives the hooks instead when given, and the result is then
    that instrument's ``recording`` if it has one). ``startup_ns`` delays every
    unit of the first tasks (workers starting); ``dispatch_ns`` separates a task's
    dispatch from its first unit's start; ``read_burst`` caps the items read at once;
    ``arrival_ns`` paces the source: item r can be read from ``start + r * arrival_ns``."""
    ins: Instrument = instrument if instrument is not None else Recorder()
    if log is not None:
        log.started_ns = start
        for s in stages:
            for d in (log.starts, log.ends, log.waits, log.depth, log.inflight):
                d[s.name] = []
            log.dispatch_to_end[s.name] = 0
    ins.run_started(run_info(stages, start))
    n = len(stages)
    queues: list[deque[tuple[int, int]]] = [deque() for _ in stages]  # (root, enqueued)
    reserved = [0] * n
    # Places for a call: an async stage's worker has `concurrency` of them.
    free = [list(range(s.workers * s.concurrency)) for s in stages]
    inflight = [0] * n
    running: list[tuple[int, int, int, int, list[int], list[int], list[int], int, int]] = []
    task_ids = 0
    next_root = 0
    now = start

    def note_depth(i: int, t: int) -> None:
        if log is not None:
            log.depth[stages[i].name].append((t, len(queues[i])))

    def note_inflight(i: int, t: int) -> None:
        if log is not None:
            log.inflight[stages[i].name].append((t, inflight[i]))

    def read(t: int) -> None:
        nonlocal next_root
        room = stages[0].capacity - len(queues[0]) - reserved[0]
        k = min(room, items - next_root, read_burst or room)
        if arrival_ns:
            k = min(k, (t - start) // arrival_ns + 1 - next_root)
        if k <= 0:
            return
        roots = list(range(next_root, next_root + k))
        next_root += k
        queues[0].extend((r, t) for r in roots)
        if log is not None:
            log.read.update(dict.fromkeys(roots, t))
        ins.items_read([(r,) for r in roots], t)
        ins.items_enqueued(stages[0].name, [(r,) for r in roots], len(queues[0]), t)
        note_depth(0, t)

    def dispatch(t: int) -> None:
        nonlocal task_ids
        for i in reversed(range(n)):
            s = stages[i]
            while free[i] and queues[i]:
                k = min(s.units_per_task, len(queues[i]))
                if i + 1 < n:
                    nxt = stages[i + 1]
                    k = min(k, nxt.capacity - len(queues[i + 1]) - reserved[i + 1])
                    if k <= 0:
                        break
                    reserved[i + 1] += k
                taken = [queues[i].popleft() for _ in range(k)]
                task_ids += 1
                worker = free[i].pop(0)
                inflight[i] += 1
                roots = [r for r, _ in taken]
                ins.task_started(s.name, task_ids, [(r,) for r in roots], len(queues[i]), t)
                note_depth(i, t)
                note_inflight(i, t)
                begin = t + dispatch_ns + (startup_ns if t < start + startup_ns else 0)
                starts, ends = [], []
                for r in roots:
                    starts.append(begin)
                    begin += s.service_ns(r)
                    ends.append(begin)
                if log is not None:
                    log.waits[s.name].extend(t - e for _, e in taken)
                    log.starts[s.name].extend(starts)
                    log.ends[s.name].extend(ends)
                    log.dispatch_to_end[s.name] += k * (ends[-1] - t)  # routed at task end
                heapq.heappush(running, (ends[-1], task_ids, i, worker, roots, starts, ends, k, t))

    read(now)
    dispatch(now)
    read(now)
    while running or (arrival_ns and next_root < items):
        arrives = start + next_root * arrival_ns
        room = stages[0].capacity - len(queues[0]) - reserved[0]
        if (
            arrival_ns
            and next_root < items
            and room > 0
            and (not running or arrives < running[0][0])
        ):
            now = max(now, arrives)  # the next item arrives before any task ends
            read(now)
            dispatch(now)
            continue
        end, task, i, worker, roots, starts, ends, k, _ = heapq.heappop(running)
        now = end
        s = stages[i]
        keys = [(r,) for r in roots]
        ins.task_finished(s.name, task, worker // s.concurrency, keys, starts, ends, None)
        inflight[i] -= 1
        note_inflight(i, now)
        free[i].append(worker)
        free[i].sort()
        if i + 1 < n:
            reserved[i + 1] -= k
            queues[i + 1].extend((r, now) for r in roots)
            ins.items_enqueued(stages[i + 1].name, [(r,) for r in roots], len(queues[i + 1]), now)
            note_depth(i + 1, now)
        else:
            ins.roots_finished(roots, "done", now)
            if log is not None:
                log.done.update(dict.fromkeys(roots, now))
        read(now)
        dispatch(now)
        read(now)
    ins.run_finished("succeeded", None, now)
    if log is not None:
        log.ended_ns = now
    rec = getattr(ins, "recording", None)
    assert rec is None or isinstance(rec, Recording)
    return rec  # type: ignore[return-value]
