"""A live progress display: an :class:`~conveyor.Instrument` that rich can render.

To see it, pass ``progress=True`` to ``run()`` or ``stream()``, or use
:class:`~conveyor.observe.ProgressDisplay`. To show it yourself, pass it to a run and
show it in a ``rich.live.Live``; the table is rebuilt from its counters at each
refresh::

    from rich.live import Live
    from conveyor.observe import Progress

    progress = Progress()
    with Live(progress, refresh_per_second=4), pipeline.stream(instruments=[progress]) as run:
        for result in run: ...

It counts from hook events only (items enqueued, tasks started and finished),
with O(1) work per event; rates are computed at render time. The scheduler
thread writes the counters and rich's refresh thread reads them: each stage's
counters live in their own fixed object, so a reader never sees a dict resize,
and a torn read shows at worst a figure one event old.

Items done: a task's item count is what it took out of its stage's queue (items
enqueued minus depth), so batch and collect stages count items, not batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from time import monotonic_ns

from rich.table import Table

from conveyor.core.events import Instrument, Key, RunInfo

__all__ = ["Progress"]

RATE_WINDOW_NS = 1_000_000_000  # rates are measured over about the last second


class _StageCounters:
    __slots__ = (
        "bound",
        "busy",
        "depth",
        "done",
        "enqueued",
        "errors",
        "executor",
        "history",
        "name",
        "taken",
        "workers",
    )

    def __init__(self, name: str, executor: str, workers: int, bound: int | None) -> None:
        self.name = name
        self.executor = executor
        self.workers = workers
        self.bound = bound
        self.enqueued = 0  # items that entered the input queue
        self.taken = 0  # items that left it for a worker
        self.depth = 0
        self.busy = 0  # tasks started and not finished (queued at a worker included)
        self.done = 0  # items whose task came back
        self.errors = 0
        # (t_ns, done) samples taken at render time, for the rate
        self.history: deque[tuple[int, int]] = deque()

    @property
    def busy_workers(self) -> int:
        """Workers running a task: tasks started and not finished, at most the pool
        (a worker is sent its next task before it finishes the one it runs)."""
        return max(0, min(self.busy, self.workers))

    def rate(self, now: int) -> float:
        """Items per second over about the last second; appends a sample."""
        h = self.history
        h.append((now, self.done))
        while len(h) > 2 and now - h[1][0] >= RATE_WINDOW_NS:
            h.popleft()
        t0, d0 = h[0]
        return (self.done - d0) * 1e9 / (now - t0) if now > t0 else 0.0


class Progress(Instrument):
    """Per-stage progress of one run: items done, rate, queue depth, busy workers.

    Render it with rich (it has ``__rich__``) while the run goes on; reuse is not
    supported: use a new instance per run.
    """

    def __init__(self) -> None:
        self.pipeline = ""
        self.state = "pending"
        self.started_ns = 0
        self.finished_ns: int | None = None
        self.read = 0
        self.emitted = 0
        self.stages: dict[str, _StageCounters] = {}
        self._task_items: dict[tuple[str, int], int] = {}

    # --- hooks (scheduler thread) ---------------------------------------------------

    def run_started(self, run: RunInfo) -> None:
        self.pipeline = run.pipeline
        self.state = "running"
        self.started_ns = run.started_ns
        self.stages = {
            s.name: _StageCounters(s.name, s.executor, s.workers, s.capacity) for s in run.stages
        }

    def items_read(self, keys: Sequence[Key], t_ns: int) -> None:
        self.read += len(keys)

    def items_enqueued(self, stage: str, keys: Sequence[Key], depth: int, t_ns: int) -> None:
        c = self.stages.get(stage)  # "<output>" is the run's output buffer, not a stage
        if c is not None:
            c.enqueued += len(keys)
            c.depth = depth

    def task_started(
        self, stage: str, task: int, keys: Sequence[Key], depth: int, t_ns: int
    ) -> None:
        c = self.stages[stage]
        taken = c.enqueued - depth
        self._task_items[(stage, task)] = taken - c.taken
        c.taken = taken
        c.depth = depth
        c.busy += 1

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
        c = self.stages[stage]
        n = self._task_items.pop((stage, task), len(keys))
        c.busy -= 1
        if error is None:
            c.done += n
        else:
            c.errors += 1

    def items_emitted(self, keys: Sequence[Key], t_ns: int) -> None:
        self.emitted += len(keys)

    def stage_resized(self, stage: str, workers: int, t_ns: int) -> None:
        self.stages[stage].workers = workers

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        self.state = state
        self.finished_ns = t_ns
        self._task_items.clear()  # tasks that never came back (a lost worker's)

    # --- rendering (rich's refresh thread) ------------------------------------------

    def __rich__(self) -> Table:
        return self.table()

    def table(self) -> Table:
        """The display as it stands now: a header line and one row per stage."""
        now = monotonic_ns()
        end = self.finished_ns if self.finished_ns is not None else now
        elapsed = (end - self.started_ns) / 1e9 if self.started_ns else 0.0
        table = Table(
            title=(
                f"{self.pipeline or 'pipeline'}: {self.state}, {elapsed:.1f} s, "
                f"{self.read} read, {self.emitted} results"
            ),
            title_justify="left",
            show_edge=False,
        )
        table.add_column("stage")
        table.add_column("done", justify="right")
        table.add_column("items/s", justify="right")
        table.add_column("queue", justify="right")
        table.add_column("busy workers", justify="right")
        for c in list(self.stages.values()):
            bound = "∞" if c.bound is None else str(c.bound)
            done = f"{c.done}" + (f" [red]({c.errors} failed)[/red]" if c.errors else "")
            table.add_row(
                c.name,
                done,
                f"{c.rate(now):.1f}",
                f"{c.depth} / {bound}",
                f"{c.busy_workers} / {c.workers}",
            )
        return table
