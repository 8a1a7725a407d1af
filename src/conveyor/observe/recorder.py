"""The recorder: a run's events folded into bounded aggregates as they happen.

A :class:`Recorder` is an :class:`~conveyor.Instrument` that a run carries by default
(``Pipeline.run(record=False)`` turns it off). When the run ends (or at any moment,
for a snapshot) it yields a :class:`~conveyor.observe.recording.Recording`, whose
size does not depend on the number of items: memory stays flat on an endless source.

What each hook does (per call, none of it per item but C-speed ``map`` and counting):

- ``items_enqueued``/``task_started``/``task_finished``/``stage_resized`` advance the
  stage's :class:`~conveyor.observe.timeline.StageTimeline`: the time-integrals of
  its queue depth, of the time its queue was empty while a worker was free
  (starved), full, and of its pool; and its series of time buckets (at most
  ``BUCKETS``, doubling in width as the run grows).
- each stage keeps a FIFO of its queue's enqueue bursts ``(t, n)`` (only the bursts
  still queued): the queue is first-in first-out, so ``task_started`` knows when each
  item it takes entered the queue, and counts their queue wait (dispatch - enqueue).
- ``task_finished`` extends two flat buffers with its units' start and end stamps;
  every ``FOLD_AT`` units their service times are counted in C into a
  :class:`~conveyor.observe.histogram.HistogramCounter`: exactly until ``EXACT_KEPT``
  distinct values have come, then straight into log buckets: it stays small.
- the source's read bursts ``(first root, end, t, unfinished)`` are kept while any of
  their roots is unfinished; ``roots_finished`` turns its roots into latencies (one
  bisect per burst touched) and forgets bursts whose roots have all finished.
- the first ``detail`` units of the run (10,000 by default) keep their key, worker,
  start and end, for the Chrome trace and the Gantt chart.
- a run with GPU stages has their devices sampled from ``run_started`` to
  ``run_finished`` (:mod:`conveyor.observe.gpu`, when nvidia-ml-py is installed).

The report's window ``[t0, t1]`` (first unit's start to last unit's end or item's
finish) is known only afterwards: the timelines log their state until the first
unit has started, and the window's integrals are differences.
"""

from __future__ import annotations

import dataclasses
import os
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from operator import sub
from typing import Any

from conveyor.core.events import Instrument, Key, RunInfo
from conveyor.observe.gpu import NoSampling, sampler_for
from conveyor.observe.histogram import EXACT_KEPT, HistogramCounter
from conveyor.observe.places import PlacesNoted
from conveyor.observe.recording import Recording, RecordingError, StageRecording, StageShape
from conveyor.observe.recording import UnitDetail as UnitDetail
from conveyor.observe.timeline import BUCKETS, NEVER, StageTimeline, Timeline

__all__ = ["BUCKETS", "DETAIL_UNITS", "Recorder", "Recording", "RecordingError", "StageRecording"]

DETAIL_UNITS = 10_000  # units with per-unit detail, across the run
RESIZES_KEPT = 1000  # resize events kept per stage (the integrals count them all)
FOLD_AT = 4096  # units buffered per stage before their service times are counted


class _Stage(StageTimeline):
    """One stage's live state in the recorder: its timeline, counters, histograms,
    the FIFO of its queue's enqueue bursts, and its units in the detail window."""

    __slots__ = (
        "b_ends",
        "b_starts",
        "cache_hits",
        "dead_letters",
        "detail",
        "enqueued",
        "entry",
        "errors",
        "fifo",
        "fifo_used",
        "first_service",
        "first_start",
        "items_in",
        "items_out",
        "occupancy",
        "resizes",
        "service",
        "shape",
        "taken",
        "units",
        "wait",
    )

    def __init__(self, shape: StageShape, timeline: Timeline) -> None:
        super().__init__(shape, timeline)
        self.shape = shape
        self.entry = False  # its enqueues are the source's reads
        self.units = self.errors = self.cache_hits = self.dead_letters = 0
        self.enqueued = self.taken = 0
        self.items_in: int | None = None
        self.items_out: int | None = None
        self.occupancy = 0
        self.b_starts: list[int] = []  # units not counted yet in ``service``
        self.b_ends: list[int] = []
        self.first_start = NEVER
        self.first_service: int | None = None
        self.fifo: deque[tuple[int, int]] = deque()  # (t, n) bursts still in the queue
        self.fifo_used = 0  # items of fifo[0] already taken
        self.service = HistogramCounter()
        self.wait = HistogramCounter()
        self.resizes: list[tuple[int, int]] = []
        self.detail = UnitDetail()

    def fold(self) -> None:
        """Count the buffered units' service times into the histogram."""
        self.service.add_many(list(map(sub, self.b_ends, self.b_starts)))
        self.b_starts.clear()
        self.b_ends.clear()


class Recorder(PlacesNoted, Instrument):
    """Records a run's events into bounded aggregates (see the module docstring).

    Pass it in a run's ``instruments`` (``Pipeline.run`` adds one unless
    ``record=False``), then read :attr:`recording` (final once the run has ended)
    or call :meth:`snapshot` while the run goes on. One recorder records one run.
    The run's first ``detail`` units keep their own key, worker and times (for the Gantt).
    """

    _gpus: NoSampling = NoSampling()  # the run's GPU sampler, if it has one

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
        self._latency = HistogramCounter()
        self._first: tuple[int, int] | None = None  # (read, done) of the first item done
        self._last_done: int | None = None
        self._last_end = -1
        self._detail_left = detail
        self._detail_end: int | None = None
        self._timeline = Timeline(0)

    @property
    def recording(self) -> Recording:
        """The run's recording (final once the run has ended); raises RecordingError
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
        self._timeline = timeline = Timeline(run.started_ns)
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
                    s.concurrency,
                    s.fused,
                ),
                timeline,
            )
            for s in run.stages
        }
        entry = next((s for s in self._stages.values() if not s.shape.predecessors), None)
        if entry is not None:  # the first entry's enqueues are the source's reads
            entry.entry = True
        self._control = run.control
        self._gpus = sampler_for(run.stages, owner=self, run_id=run.run_id)

    def items_enqueued(self, stage: str, keys: Sequence[Key], depth: int, t_ns: int) -> None:
        s = self._stages.get(stage)
        if s is None:  # "<output>": the results buffer, not a stage
            return
        if t_ns > s.t:
            s.advance(t_ns)
        n = len(keys)
        s.enqueued += n
        s.fifo.append((t_ns, n))
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
            s.advance(t_ns)
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
        used = s.fifo_used
        while k > 0 and fifo:
            t, c = fifo[0]
            c -= used
            if c <= k:
                fifo.popleft()
                used = 0
            else:
                used += k
                c = k
            k -= c
            v = t_ns - t
            exact[v] = exact.get(v, 0) + c
        s.fifo_used = used
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
                s.advance(end)
        if dispatched is not None:
            s.inflight -= 1
        if error is not None:
            s.errors += 1
        if not n:
            return
        start = starts_ns[0]
        s.units += n
        # Service times are counted a few thousand at a time, in C (no Python per unit).
        s.b_starts.extend(starts_ns)
        s.b_ends.extend(ends_ns)
        if len(s.b_starts) >= FOLD_AT:
            s.fold()
        if start < self._timeline.origin:  # no times: a process worker that never started
            return
        # Its items stay in the worker's hands until the task comes back with them all.
        s.occupancy += n * (end - (start if dispatched is None else dispatched))
        if start < s.first_start:
            s.first_start = start
            s.first_service = ends_ns[0] - start
            if start < self._timeline.log_until:
                self._timeline.log_until = start  # the window starts no later
        if end > self._last_end:
            self._last_end = end
        # The drift's series: the task's span (its units run back to back) where it began.
        timeline = self._timeline
        if start >= timeline.end:
            timeline.coarsen(start)
        b = (start - timeline.origin) // timeline.width
        if n > 1 and ends_ns[0] > starts_ns[1]:  # async units overlapped: each its own time
            s.u_busy[b] += sum(map(sub, ends_ns, starts_ns))
        else:
            s.u_busy[b] += end - start
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
        i = bisect_right(firsts, rs[0]) - 1
        last = len(firsts) - 1
        while j < n:  # one step per read burst: its roots share their read time
            r = rs[j]
            if i > last or (i < last and r >= firsts[i + 1]):  # not in burst i: find it
                i = bisect_right(firsts, r) - 1
            if i < 0 or r >= ends[i]:  # not a root this recorder saw read
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
            i += 1
        if len(exact) > EXACT_KEPT:
            self._latency.settle()
        if self._rb_dead > 64 and self._rb_dead * 2 > len(firsts):
            self._forget_finished_bursts()

    def stage_resized(self, stage: str, workers: int, t_ns: int) -> None:
        s = self._stages[stage]
        s.resize(t_ns, workers)
        if len(s.resizes) < RESIZES_KEPT:
            s.resizes.append((t_ns, workers))

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        if self._info is None:
            return
        self._ended = (t_ns, state)
        self._gpus.stop()
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
                        if st.queue.bound != s.shape.capacity:  # a default bound that grew
                            s.shape = dataclasses.replace(s.shape, capacity=st.queue.bound)
        self._pending.clear()  # tasks that never came back (a lost worker's)
        self.finished = True

    def _keep_detail(
        self,
        s: _Stage,
        worker: int,
        keys: Sequence[Key],
        starts: Sequence[int],
        ends: Sequence[int],
        error: BaseException | None,
    ) -> None:
        m = s.detail.keep(worker, keys, starts, ends, error, self._detail_left)
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
            raise RecordingError(
                "the run has not started, so nothing is recorded yet; iterate the run "
                "(or call run.wait()) first"
            )
        last = max([info.started_ns, self._last_done or 0, *(s.t for s in self._stages.values())])
        if self._ended is not None:
            last = max(last, self._ended[0])
        t0 = self._timeline.log_until
        t0 = info.started_ns if t0 == NEVER else t0
        ends = [x for x in (self._last_end, self._last_done) if x is not None and x >= 0]
        t1 = max(max(ends) if ends else last, t0)
        stages = {}
        for name, s in self._stages.items():
            if last > s.t:
                s.advance(last)
            stages[name] = _stage_recording(s, t0, t1, last)
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
            bucket_ns=self._timeline.width,
            detail_limit=self.detail,
            detail_end_ns=self._detail_end,
            places=self.places(),
            remade=self.remade(),
            gpus=self._gpus.series(),
        )


def _stage_recording(s: _Stage, t0: int, t1: int, last: int) -> StageRecording:
    c0, c1 = s.cumulative(t0), s.cumulative(t1)
    window = [max(0, b - a) for a, b in zip(c0, c1, strict=True)]
    d = s.detail
    s.fold()
    service = s.service.value()
    return StageRecording(
        shape=s.shape,
        units=s.units,
        items_enqueued=s.enqueued,
        items_in=s.items_in,
        items_out=s.items_out,
        errors=s.errors,
        cache_hits=s.cache_hits,
        dead_letters=s.dead_letters,
        busy_ns=service.total,
        occupancy_ns=s.occupancy,
        service=service,
        wait=s.wait.value(),
        first_start_ns=None if s.first_start == NEVER else s.first_start,
        first_service_ns=s.first_service,
        peak_depth=s.peak,
        window_depth_ns=window[0],
        window_starved_ns=window[1],
        window_full_ns=window[2],
        window_worker_ns=window[3],
        run_depth_ns=c1[0],
        final_workers=s.workers,
        resizes=list(s.resizes),
        series=s.series(last),
        detail=UnitDetail(
            list(d.keys), list(d.worker), list(d.started), list(d.finished), list(d.failed)
        ),
    )
