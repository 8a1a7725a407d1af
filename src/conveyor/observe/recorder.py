"""The recorder: a run's events folded into bounded aggregates as they happen.

A :class:`Recorder` is an :class:`~conveyor.Instrument` that a run carries by default
(``Pipeline.run(record=False)`` turns it off). When the run ends (or at any moment,
for a snapshot) it yields a :class:`~conveyor.observe.recording.Recording`, whose
size does not depend on the number of items: memory stays flat on an endless source.

What each hook does (all per call, none per item, except C-speed list extends):

- ``items_enqueued``/``task_started``/``task_finished``/``stage_resized`` advance the
  stage's *integrator*: the time-integrals of its queue depth, of the time its queue
  was empty while a worker was free (starved), full, and of its pool size; and the
  fixed-width time buckets of the series (depth low/peak/area, busy time of the
  units started there). The buckets double in width (merging pairs) when the run
  outgrows them, so there are at most ``BUCKETS``.
- each stage keeps a FIFO of its queue's enqueue bursts ``(t, n)``, so a task that
  takes ``k`` items knows when each entered the queue (the queue is FIFO); only the
  items still queued are held.
- ``task_started`` takes the task's items out of that FIFO: each burst gives their
  queue wait (dispatch - enqueue), counted with its multiplicity.
- ``task_finished`` counts its units' service times exactly, in C
  (``collections``' counting helper over ``map(sub, ends, starts)``); a histogram
  moves its exact counts into log buckets once it holds ``EXACT_KEPT`` distinct
  values, so it stays small however many units it counts.
- the source's read bursts ``(first root, count, t)`` are kept while any of their roots
  is unfinished; ``roots_finished`` turns its roots into latencies (one bisect per
  burst touched) and forgets bursts whose roots have all finished.
- the first ``detail`` units of the run (10,000 by default) keep their key, worker,
  start and end, for the Chrome trace and the Gantt chart.

The window ``[t0, t1]`` of the report (first unit's start to last unit's end or item's
finish) is known only afterwards, so each integrator logs its state at every event
until the first unit has started (at most a few hundred events: the queues fill and
the first tasks leave) and the integrals over the window are differences.
"""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from operator import mul, sub
from typing import Any

from conveyor.core.events import Instrument, Key, RunInfo
from conveyor.observe.histogram import Histogram, add_exact, count_elements
from conveyor.observe.recording import (
    Recording,
    RecordingError,
    Series,
    StageRecording,
    StageShape,
    UnitDetail,
    full_depth,
)

__all__ = ["DETAIL_UNITS", "Recorder", "Recording", "RecordingError", "StageRecording"]

DETAIL_UNITS = 10_000  # units with per-unit detail, across the run
EXACT_KEPT = 2048  # distinct values a histogram counts exactly before bucketing them
BUCKETS = 512  # time buckets of the series
FIRST_BUCKET_NS = 1 << 14  # 16 µs: the series starts fine and coarsens as the run grows
HEAD_LOG = 4096  # integrator states logged before the first unit starts, at most
RESIZES_KEPT = 1000  # resize events kept per stage (the integrals count them all)
_NEVER = 1 << 62


def _full_at(capacity: int | None) -> int:
    level = full_depth(capacity)
    return _NEVER if level is None else level


class _Hist:
    """A histogram being filled. Values are first counted exactly (value -> count, in
    C for a task's worth at a time); past ``EXACT_KEPT`` distinct values they move
    into log buckets, so it stays small (see :mod:`conveyor.observe.histogram`)."""

    __slots__ = ("count", "counts", "exact", "high", "low", "total")

    def __init__(self) -> None:
        self.exact: dict[int, int] = {}
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.low: int | None = None
        self.high: int | None = None

    def settle(self) -> None:
        """Move the exactly counted values into the log buckets."""
        exact = self.exact
        if not exact:
            return
        self.count += sum(exact.values())
        self.total += sum(map(mul, exact, exact.values()))
        lo, hi = min(exact), max(exact)
        if self.low is None or lo < self.low:
            self.low = lo
        if self.high is None or hi > self.high:
            self.high = hi
        add_exact(self.counts, exact)
        exact.clear()

    def value(self) -> Histogram:
        self.settle()
        return Histogram(dict(self.counts), self.count, self.total, self.low, self.high)


class _Stage:
    """One stage's live state in the recorder."""

    __slots__ = (
        "area",
        "b_end",
        "busy",
        "cache_hits",
        "cur_area0",
        "cur_b",
        "cur_low",
        "cur_peak",
        "d_area",
        "d_low",
        "d_peak",
        "dead_letters",
        "depth",
        "detail",
        "enqueued",
        "entry",
        "errors",
        "fifo",
        "first_service",
        "first_start",
        "full",
        "full_at",
        "head",
        "inflight",
        "items_in",
        "items_out",
        "occupancy",
        "peak",
        "resizes",
        "service",
        "shape",
        "starved",
        "t",
        "taken",
        "u_busy",
        "u_units",
        "units",
        "w_t",
        "wait",
        "workers",
        "wtime",
    )

    def __init__(self, shape: StageShape, t: int, bucket_end: int) -> None:
        self.shape = shape
        self.entry = False
        self.units = self.errors = self.cache_hits = self.dead_letters = 0
        self.enqueued = self.taken = 0
        self.items_in: int | None = None
        self.items_out: int | None = None
        self.busy = self.occupancy = 0
        self.first_start = _NEVER
        self.first_service: int | None = None
        self.fifo: deque[list[int]] = deque()  # [t, n] bursts still in the queue
        self.service = _Hist()
        self.wait = _Hist()
        # The integrator: the state since ``t``, and integrals from the run's start.
        self.t = t
        self.depth = self.inflight = self.peak = 0
        self.workers = shape.workers
        self.full_at = _full_at(shape.capacity)
        self.area = self.starved = self.full = 0
        self.wtime, self.w_t = 0, t  # ∫ workers dt up to w_t, the last resize
        self.head: list[tuple[int, ...]] = []  # states logged until the window starts
        self.resizes: list[tuple[int, int]] = []
        # The series: closed buckets, and the bucket being filled (it ends at b_end).
        self.d_area: list[int] = []
        self.d_low: list[int] = []
        self.d_peak: list[int] = []
        self.u_busy: list[int] = [0] * BUCKETS
        self.u_units: list[int] = [0] * BUCKETS
        self.cur_b = 0
        self.b_end = bucket_end
        self.cur_area0 = 0  # ``area`` when the current bucket began
        self.cur_low = self.cur_peak = 0
        self.detail = UnitDetail()

    def wtime_at(self, t: int) -> int:
        """∫ workers dt from the run's start to ``t`` (not before the last resize)."""
        return self.wtime + self.workers * (t - self.w_t)

    def rate(self, state: tuple[int, ...]) -> tuple[int, int, int, int]:
        """d/dt of (area, starved, full, wtime) in ``state`` = (depth, inflight, workers)."""
        d, inflight, workers = state
        return (d, int(d == 0 and inflight < workers), int(d >= self.full_at), workers)

    def cumulative(self, t: int, logged_to: int) -> tuple[int, int, int, int]:
        """(area, starved, full, wtime) from the run's start to ``t``: exact from the
        current state for ``t`` after the last event, or from the logged states for ``t``
        up to ``logged_to``; between the two, the current state taken back (exact unless
        the state changed after ``t``: the last moments of a failed or cancelled run)."""
        if t >= self.t or t > logged_to or not self.head:
            snap: tuple[int, ...] = (
                self.t,
                self.area,
                self.starved,
                self.full,
                self.wtime_at(self.t),
            )
            rate = self.rate((self.depth, self.inflight, self.workers))
        else:
            i = bisect_right(self.head, (t, _NEVER)) - 1
            if i < 0:
                return (0, 0, 0, 0)
            snap = self.head[i]
            rate = self.rate(snap[5:])
        dt = t - snap[0]
        return (
            max(0, snap[1] + rate[0] * dt),
            max(0, snap[2] + rate[1] * dt),
            max(0, snap[3] + rate[2] * dt),
            max(0, snap[4] + rate[3] * dt),
        )


class Recorder(Instrument):
    """Records a run's events into bounded aggregates (see the module docstring).

    Pass it in a run's ``instruments`` (``Pipeline.run`` adds one unless
    ``record=False``), then read :attr:`recording` (final once the run has ended)
    or call :meth:`snapshot` while the run goes on. One recorder records one run.
    ``detail`` is the number of units, across the run, whose own key, worker and
    times are kept for the trace and the Gantt chart (the run's first units).
    """

    def __init__(self, *, detail: int = DETAIL_UNITS) -> None:
        if not isinstance(detail, int) or detail < 0:
            raise ValueError(f"detail={detail!r}; give a number of units, 0 or more")
        self.detail = detail
        self._info: RunInfo | None = None
        self._stages: dict[str, _Stage] = {}
        self._pending: dict[int, int] = {}  # task -> when it left its queue
        self._control: Any = None
        self._ended: tuple[int, str] | None = None
        self._rec: Recording | None = None
        self.finished = False
        # The source's read bursts that still hold an unfinished root.
        self._rb_first: list[int] = []
        self._rb_end: list[int] = []
        self._rb_t: list[int] = []
        self._rb_left: list[int] = []
        self._rb_dead = 0
        self._read = self._done = 0
        self._other: dict[str, int] = {}
        self._latency = _Hist()
        self._first: tuple[int, int] | None = None  # (read, done) of the first item done
        self._last_done: int | None = None
        self._last_end = -1
        self._t0 = _NEVER  # the first unit's start, once known; states are logged up to it
        self._detail_left = detail
        self._detail_end: int | None = None
        self._origin = 0
        self._width = FIRST_BUCKET_NS
        self._grid_end = 0

    @property
    def recording(self) -> Recording:
        """The run's recording (final once the run has ended); raises RuntimeError
        before the run has started. While the run goes on, a snapshot."""
        if not self.finished:
            return self.snapshot()
        if self._rec is None:
            self._rec = self._build()
        return self._rec

    def snapshot(self) -> Recording:
        """What is recorded so far, as a new value, safe to analyse while the run goes
        on (call it from the thread that iterates the run)."""
        return self._build()

    # --- hooks ------------------------------------------------------------------

    def run_started(self, run: RunInfo) -> None:
        self._info = run
        self._origin = run.started_ns
        self._grid_end = run.started_ns + BUCKETS * self._width
        self._stages = {
            s.name: _Stage(
                StageShape(
                    s.name,
                    s.kind,
                    s.executor,
                    s.workers,
                    s.capacity,
                    tuple(s.predecessors),
                    tuple(s.successors),
                ),
                run.started_ns,
                run.started_ns + self._width,
            )
            for s in run.stages
        }
        entry = next((s for s in self._stages.values() if not s.shape.predecessors), None)
        if entry is not None:  # the first entry's enqueues are the source's reads
            entry.entry = True
        self._control = run.control

    def items_enqueued(self, stage: str, keys: Sequence[Key], depth: int, t_ns: int) -> None:
        s = self._stages.get(stage)
        if s is None:  # "<output>": the results buffer, not a stage
            return
        if t_ns > s.t:
            self._advance(s, t_ns)
        n = len(keys)
        s.enqueued += n
        s.fifo.append([t_ns, n])
        s.depth = depth
        if depth > s.cur_peak:
            s.cur_peak = depth
            if depth > s.peak:
                s.peak = depth
        if s.entry and n:
            first = keys[0][0]
            self._rb_first.append(first)
            self._rb_end.append(first + n)
            self._rb_t.append(t_ns)
            self._rb_left.append(n)
            self._read += n

    def task_started(
        self, stage: str, task: int, keys: Sequence[Key], depth: int, t_ns: int
    ) -> None:
        s = self._stages[stage]
        if t_ns > s.t:
            self._advance(s, t_ns)
        taken = s.enqueued - depth
        k = taken - s.taken  # items it took from the queue (0: a retry, from the heap)
        s.taken = taken
        s.inflight += 1
        s.depth = depth
        if depth < s.cur_low:
            s.cur_low = depth
        self._pending[task] = t_ns
        if k <= 0:
            return
        # The queue is FIFO: the task's items are the oldest bursts' (queue wait).
        exact = s.wait.exact
        fifo = s.fifo
        while k > 0 and fifo:
            burst = fifo[0]
            c = burst[1]
            if c <= k:
                fifo.popleft()
            else:
                burst[1] = c - k
                c = k
            k -= c
            v = t_ns - burst[0]
            exact[v] = exact.get(v, 0) + c
        if len(exact) > EXACT_KEPT:
            s.wait.settle()

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
        dispatched = self._pending.pop(task, None)
        n = len(keys)
        if n:
            end = ends_ns[-1]
            if end > s.t and not s.depth:  # a worker freed now may mean starved from ``end``
                self._advance(s, end)
        if dispatched is not None:
            s.inflight -= 1
        if error is not None:
            s.errors += 1
        if not n:
            return
        start = starts_ns[0]
        sum_ends = sum(ends_ns)
        busy = sum_ends - sum(starts_ns)
        s.units += n
        s.busy += busy
        s.occupancy += sum_ends - n * (start if dispatched is None else dispatched)
        exact = s.service.exact
        count_elements(exact, map(sub, ends_ns, starts_ns))  # in C: no Python per unit
        if len(exact) > EXACT_KEPT:
            s.service.settle()
        if start < s.first_start:
            s.first_start = start
            s.first_service = ends_ns[0] - start
            if start < self._t0:
                self._t0 = start
        if end > self._last_end:
            self._last_end = end
        if start >= self._grid_end:
            self._coarsen(start)
        b = (start - self._origin) // self._width
        s.u_busy[b] += busy
        s.u_units[b] += n
        if self._detail_left:
            self._keep_detail(s, worker, keys, starts_ns, ends_ns, error)

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
        n = len(roots)
        done = state == "done"
        if done:
            self._done += n
            self._last_done = t_ns
        else:
            self._other[state] = self._other.get(state, 0) + n
        firsts = self._rb_first
        if not n or not firsts:
            return
        rs = sorted(roots)
        ends, times, left = self._rb_end, self._rb_t, self._rb_left
        exact = self._latency.exact
        j = 0
        while j < n:  # one step per read burst: its roots share their read time
            i = bisect_right(firsts, rs[j]) - 1
            if i < 0 or rs[j] >= ends[i]:  # not a root this recorder saw read
                j += 1
                continue
            k = bisect_left(rs, ends[i], j)
            c = k - j
            left[i] -= c
            if left[i] <= 0:
                self._rb_dead += 1
            if done:
                v = t_ns - times[i]
                exact[v] = exact.get(v, 0) + c
                if self._first is None:
                    self._first = (times[i], t_ns)
            j = k
        if len(exact) > EXACT_KEPT:
            self._latency.settle()
        if self._rb_dead > 64 and self._rb_dead * 2 > len(firsts):
            self._forget_finished_bursts()

    def stage_resized(self, stage: str, workers: int, t_ns: int) -> None:
        s = self._stages[stage]
        if t_ns > s.t:
            self._advance(s, t_ns)
        s.wtime = s.wtime_at(t_ns)
        s.w_t = t_ns
        s.workers = workers
        if len(s.resizes) < RESIZES_KEPT:
            s.resizes.append((t_ns, workers))

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
        self._pending.clear()  # tasks that never came back (a lost worker's)
        self.finished = True

    # --- the integrator and the series --------------------------------------------

    def _advance(self, s: _Stage, t: int) -> None:
        """Integrate stage ``s``'s state from ``s.t`` to ``t`` (> ``s.t``)."""
        t_prev = s.t
        d = s.depth
        if t_prev <= self._t0:  # the window's start is not known yet: log the state
            self._log_state(s)
        dt = t - t_prev
        s.area += d * dt
        if not d and s.inflight < s.workers:
            s.starved += dt
        if d >= s.full_at:
            s.full += dt
        s.t = t
        if t >= s.b_end:
            self._close_buckets(s, t)

    def _log_state(self, s: _Stage) -> None:
        head = s.head
        t = s.t
        head.append((t, s.area, s.starved, s.full, s.wtime_at(t), s.depth, s.inflight, s.workers))
        if len(head) > HEAD_LOG:
            del head[1::2]  # thin out: the window's start is then approximate

    def _close_buckets(self, s: _Stage, t: int) -> None:
        """The stage's state moved on past its bucket: close the buckets before ``t``'s."""
        if t >= self._grid_end:
            self._coarsen(t)
        width, d = self._width, s.depth
        b = (t - self._origin) // width
        start_b = self._origin + b * width
        area_at_b = s.area - d * (t - start_b)  # the depth was d since before start_b
        gap = b - s.cur_b - 1  # whole buckets spent at depth d
        s.d_area.append(area_at_b - s.cur_area0 - d * width * gap)
        s.d_low.append(min(s.cur_low, d))
        s.d_peak.append(s.cur_peak)
        if gap:
            s.d_area.extend([d * width] * gap)
            s.d_low.extend([d] * gap)
            s.d_peak.extend([d] * gap)
        s.cur_b = b
        s.b_end = start_b + width
        s.cur_area0 = area_at_b
        s.cur_low = s.cur_peak = d

    def _coarsen(self, t: int) -> None:
        """Double the buckets' width (merging pairs) until ``t`` is inside the grid."""
        while t >= self._grid_end:
            self._width *= 2
            self._grid_end = self._origin + BUCKETS * self._width
            for s in self._stages.values():
                _merge_pairs(s)
                s.b_end = self._origin + (s.cur_b + 1) * self._width

    def _keep_detail(
        self,
        s: _Stage,
        worker: int,
        keys: Sequence[Key],
        starts: Sequence[int],
        ends: Sequence[int],
        error: BaseException | None,
    ) -> None:
        n = len(keys)
        m = min(n, self._detail_left)
        d = s.detail
        d.keys.extend(keys[:m])
        d.worker.extend([worker] * m)
        d.started.extend(starts[:m])
        d.finished.extend(ends[:m])
        if error is not None and m == n:
            d.failed.append(len(d.started) - 1)
        self._detail_left -= m
        if not self._detail_left:
            self._detail_end = ends[m - 1]

    def _forget_finished_bursts(self) -> None:
        live = [i for i, c in enumerate(self._rb_left) if c > 0]
        self._rb_first = [self._rb_first[i] for i in live]
        self._rb_end = [self._rb_end[i] for i in live]
        self._rb_t = [self._rb_t[i] for i in live]
        self._rb_left = [self._rb_left[i] for i in live]
        self._rb_dead = 0

    # --- the recording --------------------------------------------------------------

    def _build(self) -> Recording:
        info = self._info
        if info is None:
            raise RuntimeError(
                "the run has not started, so nothing is recorded yet; iterate the run "
                "(or call run.wait()) first"
            )
        last = max([info.started_ns, self._last_done or 0, *(s.t for s in self._stages.values())])
        if self._ended is not None:
            last = max(last, self._ended[0])
        t0 = info.started_ns if self._t0 == _NEVER else self._t0
        ends = [x for x in (self._last_end, self._last_done) if x is not None and x >= 0]
        t1 = max(max(ends) if ends else last, t0)
        stages = {}
        for name, s in self._stages.items():
            if last > s.t:
                self._advance(s, last)
            stages[name] = self._stage_recording(s, t0, t1, last)
        first_read, first_done = self._first if self._first is not None else (None, None)
        return Recording(
            run_id=info.run_id,
            pipeline=info.pipeline,
            ordered=info.ordered,
            started_ns=info.started_ns,
            stages=stages,
            ended_ns=self._ended[0] if self._ended else None,
            state=self._ended[1] if self._ended else "running",
            cpus=os.cpu_count(),
            items_read=self._read,
            items_done=self._done,
            items_other=dict(self._other),
            latency=self._latency.value(),
            first_read_ns=first_read,
            first_done_ns=first_done,
            last_done_ns=self._last_done,
            last_event_ns=last,
            t0_ns=t0,
            t1_ns=t1,
            bucket_ns=self._width,
            detail_limit=self.detail,
            detail_end_ns=self._detail_end,
        )

    def _stage_recording(self, s: _Stage, t0: int, t1: int, last: int) -> StageRecording:
        c0, c1 = s.cumulative(t0, self._t0), s.cumulative(t1, self._t0)
        window = [max(0, b - a) for a, b in zip(c0, c1, strict=True)]
        used = (last - self._origin) // self._width + 1
        # The series so far, with the bucket being filled closed at ``last``.
        series = Series(
            depth_area=[*s.d_area, s.area - s.cur_area0][:used],
            depth_low=[*s.d_low, s.cur_low][:used],
            depth_peak=[*s.d_peak, s.cur_peak][:used],
            busy_ns=s.u_busy[:used],
            units=s.u_units[:used],
        )
        d = s.detail
        return StageRecording(
            shape=s.shape,
            units=s.units,
            items_enqueued=s.enqueued,
            items_in=s.items_in,
            items_out=s.items_out,
            errors=s.errors,
            cache_hits=s.cache_hits,
            dead_letters=s.dead_letters,
            busy_ns=s.busy,
            occupancy_ns=s.occupancy,
            service=s.service.value(),
            wait=s.wait.value(),
            first_start_ns=None if s.first_start == _NEVER else s.first_start,
            first_service_ns=s.first_service,
            peak_depth=s.peak,
            window_depth_ns=window[0],
            window_starved_ns=window[1],
            window_full_ns=window[2],
            window_worker_ns=window[3],
            run_depth_ns=c1[0],
            final_workers=s.workers,
            resizes=list(s.resizes),
            series=series,
            detail=UnitDetail(
                list(d.keys), list(d.worker), list(d.started), list(d.finished), list(d.failed)
            ),
        )


def _merge_pairs(s: _Stage) -> None:
    """Halve the stage's series resolution: bucket i becomes buckets 2i and 2i+1."""
    area, low, peak = s.d_area, s.d_low, s.d_peak
    if len(area) % 2:  # the current bucket's partner is closed: fold it into the current
        s.cur_area0 -= area.pop()
        s.cur_low = min(s.cur_low, low.pop())
        s.cur_peak = max(s.cur_peak, peak.pop())
    s.d_area = [a + b for a, b in zip(area[::2], area[1::2], strict=True)]
    s.d_low = [min(a, b) for a, b in zip(low[::2], low[1::2], strict=True)]
    s.d_peak = [max(a, b) for a, b in zip(peak[::2], peak[1::2], strict=True)]
    s.cur_b //= 2
    half = BUCKETS // 2
    u, c = s.u_busy, s.u_units
    s.u_busy = [u[2 * i] + u[2 * i + 1] for i in range(half)] + [0] * half
    s.u_units = [c[2 * i] + c[2 * i + 1] for i in range(half)] + [0] * half
