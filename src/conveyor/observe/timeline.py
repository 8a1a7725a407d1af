"""A stage over time, integrated as its events arrive: queue depth, tasks, pool.

The recorder keeps one :class:`StageTimeline` per stage, advanced at every event
that changes the stage's input-queue depth, its tasks in flight or its pool
(:meth:`StageTimeline.advance`). It holds, from the run's start, the integrals

    area      ∫ depth dt                                   (item·ns)
    starved   time with depth 0 and fewer tasks in flight than workers
    full      time with depth >= full_depth(capacity)
    wtime     ∫ workers dt                                 (worker·ns; changes at resizes)

and the stage's *series*: fixed-width time buckets (the depth's low, peak and
integral per bucket; the busy time and count of the units that started in it). The
buckets are shared by every stage (:class:`Timeline`): ``BUCKETS`` of them, 16 µs wide
at first, doubling by merging pairs whenever the run outgrows them.

The report's window starts at the first unit's start, known only once a task has
come back; until then each timeline logs its state at every event (the queues
filling and the first tasks leaving: a few hundred events), so the integral up to
that instant is exact (:meth:`StageTimeline.cumulative`).
"""

from __future__ import annotations

from bisect import bisect_right

from conveyor.observe.recording import Series, StageShape, full_depth

__all__ = ["BUCKETS", "FIRST_BUCKET_NS", "HEAD_LOG", "NEVER", "StageTimeline", "Timeline"]

BUCKETS = 512  # time buckets of the series
FIRST_BUCKET_NS = 1 << 14  # 16 µs: the series starts fine and coarsens as the run grows
HEAD_LOG = 4096  # states logged before the window's start is known, at most
NEVER = 1 << 62


class Timeline:
    """The buckets shared by every stage's series, and where the window starts."""

    def __init__(self, origin: int) -> None:
        self.origin = origin
        self.width = FIRST_BUCKET_NS
        self.end = origin + BUCKETS * self.width
        self.log_until = NEVER  # the window's start, once known: states are logged to it
        self.stages: list[StageTimeline] = []

    def bucket(self, t: int) -> int:
        """The bucket holding ``t`` (coarsening the buckets until one does)."""
        if t >= self.end:
            self.coarsen(t)
        return (t - self.origin) // self.width

    def coarsen(self, t: int) -> None:
        """Double the buckets' width (merging pairs) until ``t`` is inside them."""
        while t >= self.end:
            self.width *= 2
            self.end = self.origin + BUCKETS * self.width
            for s in self.stages:
                s.merge_pairs()


class StageTimeline:
    """One stage's integrals and series (module docstring); the recorder's hooks set
    ``depth``, ``inflight`` and ``workers`` right after calling :meth:`advance`."""

    __slots__ = (
        "area",
        "b_end",
        "cur_area0",
        "cur_b",
        "cur_low",
        "cur_peak",
        "d_area",
        "d_low",
        "d_peak",
        "depth",
        "full",
        "full_at",
        "head",
        "inflight",
        "peak",
        "starved",
        "t",
        "timeline",
        "u_busy",  # per bucket: Σ service of the units that started there (the recorder)
        "u_units",
        "w_t",
        "workers",
        "wtime",
    )

    def __init__(self, shape: StageShape, timeline: Timeline) -> None:
        self.timeline = timeline
        timeline.stages.append(self)
        self.t = timeline.origin  # the state below holds since t
        self.depth = self.inflight = self.peak = 0
        self.workers = shape.workers
        level = full_depth(shape.capacity)
        self.full_at = NEVER if level is None else level
        self.area = self.starved = self.full = 0
        self.wtime, self.w_t = 0, self.t  # ∫ workers dt up to w_t, the last resize
        self.head: list[tuple[int, ...]] = []  # states logged until the window starts
        # The series: closed buckets, and the bucket being filled (it ends at b_end).
        self.d_area: list[int] = []
        self.d_low: list[int] = []
        self.d_peak: list[int] = []
        self.u_busy: list[int] = [0] * BUCKETS
        self.u_units: list[int] = [0] * BUCKETS
        self.cur_b = 0
        self.b_end = timeline.origin + timeline.width
        self.cur_area0 = 0  # ``area`` when the current bucket began
        self.cur_low = self.cur_peak = 0

    def advance(self, t: int) -> None:
        """Integrate the state from ``self.t`` to ``t`` (> ``self.t``)."""
        t_prev = self.t
        d = self.depth
        if t_prev <= self.timeline.log_until:  # the window's start is not known yet
            self.log_state()
        dt = t - t_prev
        self.area += d * dt
        if not d and self.inflight < self.workers:
            self.starved += dt
        if d >= self.full_at:
            self.full += dt
        self.t = t
        if t >= self.b_end:
            self.close_buckets(t)

    def resize(self, t: int, workers: int) -> None:
        if t > self.t:
            self.advance(t)
        self.wtime = self.wtime_at(t)
        self.w_t = t
        self.workers = workers

    def wtime_at(self, t: int) -> int:
        """∫ workers dt from the run's start to ``t`` (not before the last resize)."""
        return self.wtime + self.workers * (t - self.w_t)

    def log_state(self) -> None:
        head, t = self.head, self.t
        integrals = (self.area, self.starved, self.full, self.wtime_at(t))
        head.append((t, *integrals, self.depth, self.inflight, self.workers))
        if len(head) > HEAD_LOG:
            del head[1::2]  # thin out: the window's start is then approximate

    def rate(self, depth: int, inflight: int, workers: int) -> tuple[int, int, int, int]:
        """d/dt of (area, starved, full, wtime) in a state."""
        return (
            depth,
            int(depth == 0 and inflight < workers),
            int(depth >= self.full_at),
            workers,
        )

    def cumulative(self, t: int) -> tuple[int, int, int, int]:
        """(area, starved, full, wtime) from the run's start to ``t``: exact from the
        current state for ``t`` after the last event, or from the logged states up to
        the window's start; between the two, the current state taken back (exact
        unless the state changed after ``t``: the last moments of a failed or
        cancelled run, or a snapshot while work is in flight)."""
        if t >= self.t or t > self.timeline.log_until or not self.head:
            snap: tuple[int, ...] = (self.t, self.area, self.starved, self.full)
            snap += (self.wtime_at(self.t),)
            rate = self.rate(self.depth, self.inflight, self.workers)
        else:
            i = bisect_right(self.head, (t, NEVER)) - 1
            if i < 0:
                return (0, 0, 0, 0)
            snap = self.head[i]
            rate = self.rate(snap[5], snap[6], snap[7])
        dt = t - snap[0]
        return (
            max(0, snap[1] + rate[0] * dt),
            max(0, snap[2] + rate[1] * dt),
            max(0, snap[3] + rate[2] * dt),
            max(0, snap[4] + rate[3] * dt),
        )

    def close_buckets(self, t: int) -> None:
        """The state moved on past its bucket: close the buckets before ``t``'s."""
        timeline = self.timeline
        b = timeline.bucket(t)
        width, d = timeline.width, self.depth
        start_b = timeline.origin + b * width
        area_at_b = self.area - d * (t - start_b)  # the depth was d since before start_b
        gap = b - self.cur_b - 1  # whole buckets spent at depth d
        self.d_area.append(area_at_b - self.cur_area0 - d * width * gap)
        self.d_low.append(min(self.cur_low, d))
        self.d_peak.append(self.cur_peak)
        if gap:
            self.d_area.extend([d * width] * gap)
            self.d_low.extend([d] * gap)
            self.d_peak.extend([d] * gap)
        self.cur_b = b
        self.b_end = start_b + width
        self.cur_area0 = area_at_b
        self.cur_low = self.cur_peak = d

    def merge_pairs(self) -> None:
        """Halve the series' resolution: bucket i becomes buckets 2i and 2i+1."""
        area, low, peak = self.d_area, self.d_low, self.d_peak
        if len(area) % 2:  # the current bucket's partner is closed: fold it in
            self.cur_area0 -= area.pop()
            self.cur_low = min(self.cur_low, low.pop())
            self.cur_peak = max(self.cur_peak, peak.pop())
        self.d_area = [a + b for a, b in zip(area[::2], area[1::2], strict=True)]
        self.d_low = [min(a, b) for a, b in zip(low[::2], low[1::2], strict=True)]
        self.d_peak = [max(a, b) for a, b in zip(peak[::2], peak[1::2], strict=True)]
        self.cur_b //= 2
        timeline = self.timeline
        self.b_end = timeline.origin + (self.cur_b + 1) * timeline.width
        half = BUCKETS // 2
        u, c = self.u_busy, self.u_units
        self.u_busy = [u[2 * i] + u[2 * i + 1] for i in range(half)] + [0] * half
        self.u_units = [c[2 * i] + c[2 * i + 1] for i in range(half)] + [0] * half

    def series(self, last: int) -> Series:
        """The series up to ``last``, the bucket being filled closed there."""
        used = (last - self.timeline.origin) // self.timeline.width + 1
        return Series(
            depth_area=[*self.d_area, self.area - self.cur_area0][:used],
            depth_low=[*self.d_low, self.cur_low][:used],
            depth_peak=[*self.d_peak, self.cur_peak][:used],
            busy_ns=self.u_busy[:used],
            units=self.u_units[:used],
        )
