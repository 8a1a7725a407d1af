"""Runs: one execution of a pipeline over a source.

A :class:`Run` is an iterator of results and a context manager. It moves through
the states pending → running → succeeded | failed | cancelled. Iterating drives the
scheduler in the caller's thread; leaving a ``with`` block, calling :meth:`close`,
a Ctrl-C, or an error in a stage stops every worker (threads at their next item,
processes terminated) and removes any shared memory the run created.
"""

from __future__ import annotations

import secrets
import threading
import weakref
from collections.abc import AsyncIterable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from time import monotonic_ns
from types import TracebackType
from typing import TYPE_CHECKING, Any

from conveyor.core.events import Instrument
from conveyor.core.failures import Cancelled, check_resize
from conveyor.core.scheduler import Scheduler
from conveyor.core.statistics import RunStatistics, StageStatistics
from conveyor.errors import OutputError, RecordingError, RunError

if TYPE_CHECKING:
    from conveyor.analysis import Report
    from conveyor.core.pipeline import Pipeline
    from conveyor.observe.recorder import Recorder
    from conveyor.observe.recording import Recording


class Run(Iterator[Any]):
    """One execution of a pipeline; iterate it for results.

    ``results`` holds every result once :meth:`wait` (or ``Pipeline.run``) has
    returned. ``state`` is pending, running, succeeded, failed or cancelled.
    With ``record`` (the default of ``Pipeline.run``/``stream``) the run keeps a
    :class:`~conveyor.Recording` (bounded aggregates of every unit's times, and the
    first units' own): :attr:`recording`, :meth:`report`.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        source: Iterable[Any] | AsyncIterable[Any] | None,
        *,
        ordered: bool,
        instruments: Sequence[Instrument] = (),
        record: bool = False,
        push: bool = False,
    ) -> None:
        self.id = secrets.token_hex(6)
        self._recorder: Recorder | None = None
        if record:
            # The default recorder sits one layer up; only a recorded run loads it.
            from conveyor.observe.recorder import Recorder

            self._recorder = Recorder()
            instruments = [self._recorder, *instruments]
        self.pipeline = pipeline
        self.ordered = ordered
        self.state = "pending"
        self.error: BaseException | None = None
        self.results: list[Any] | None = None
        self._scheduler = Scheduler(
            pipeline,
            source,
            ordered=ordered,
            instruments=instruments,
            run_id=self.id,
            control=weakref.proxy(self),  # no cycle: an abandoned run is collected
            push=push,
        )
        self._driver: int | None = None  # the thread that iterates the run
        self._ended_ns: int | None = None
        # Abandoned without close(): stop the workers when the run is collected.
        self._finalizer = weakref.finalize(self, self._scheduler.shutdown, cancel=True)

    def __iter__(self) -> Run:
        return self

    def __next__(self) -> Any:
        if self.state == "pending":
            self._start()
        elif self.state != "running":
            raise StopIteration
        try:
            return self._scheduler.next_output()
        except StopIteration:
            # Drained before its source ended: everything read finished, but not the
            # source, so the run counts as cancelled (and can be resumed).
            stopped = self._scheduler.feed.stopped_early
            self._end("cancelled" if stopped else "succeeded", None, cancel=False)
            raise
        except (KeyboardInterrupt, Cancelled) as exc:
            self._end("cancelled", exc if isinstance(exc, KeyboardInterrupt) else None, cancel=True)
            if isinstance(exc, Cancelled):
                raise StopIteration from None
            raise
        except BaseException as exc:
            self._end("failed", exc, cancel=True)
            raise

    def _start(self) -> None:
        self.state = "running"
        self._driver = threading.get_ident()
        try:
            self._scheduler.start()
        except KeyboardInterrupt as exc:
            self._end("cancelled", exc, cancel=True)
            raise
        except BaseException as exc:
            self._end("failed", exc, cancel=True)
            raise

    def _end(self, state: str, error: BaseException | None, *, cancel: bool) -> None:
        self.state = state
        self.error = error
        if isinstance(error, RunError) and error.run_id is None:
            error.run_id = self.id
        self._ended_ns = monotonic_ns()
        self._finalizer.detach()
        try:
            self._scheduler.shutdown(cancel=cancel, error=error)
        finally:
            ins = self._scheduler._ins
            if ins:
                if state != "succeeded" and ins.wants("results_dropped"):
                    # results at the output, or held for their turn, never handed out
                    sched = self._scheduler
                    dropped = [k for k, _ in sched.output.items] + sched.ledger.held_keys()
                    if dropped:
                        ins.results_dropped(dropped, self._ended_ns)
                ins.run_finished(state, error, self._ended_ns)

    def wait(self) -> list[Any]:
        """Run to the end and return every result (also kept in ``results``)."""
        results: list[Any] = []
        for first in self:  # each step advances the run; then take all that is waiting
            results.append(first)
            results.extend(self._take_ready())
        self.results = results
        return results

    def _take_ready(self) -> list[Any]:
        """The results already waiting at the output, at once (none advances the run)."""
        sched = self._scheduler
        taken = sched.output.take(len(sched.output.items))
        if taken:
            sched.items_emitted += len(taken)
            if sched._emit_hook:
                sched._ins.items_emitted([k for k, _ in taken], monotonic_ns())
        return [v for _, v in taken]

    def close(self) -> None:
        """Stop the run now: workers stop, no more results come. Safe to call twice,
        and from any thread (another thread's run stops at its next pass)."""
        if self.state == "running":
            if self._in_driver():
                self._end("cancelled", None, cancel=True)
            else:
                self._scheduler.controls.call_soon(_cancel)
        elif self.state == "pending":
            self.state = "cancelled"
            self._finalizer.detach()

    def stop(self, *, drain: bool = True) -> None:
        """Stop the run. With ``drain`` (the default), stop reading the source, finish
        every item read, then end: results keep coming until then, and the ledger
        balances. Without, stop now, as :meth:`close` does. Safe from any thread."""
        if not drain or self.state == "pending":
            self.close()
        else:
            self._scheduler.feed.close()

    def submit(self, item: Any) -> Future[Any]:
        """Push ``item`` into a run started with ``Pipeline.start`` (from any thread); the
        future resolves with its result (a list if it had several, None if it was
        filtered out) or raises why it failed."""
        if not self._scheduler.push:
            raise RunError(
                f"run {self.id} reads its source and takes no pushed items; start it with "
                "Pipeline.start() to submit items",
                stage="<source>",
            )
        return self._scheduler.feed.submit(item)

    @property
    def watermark(self) -> int:
        """N such that every source item before item N has finished (done, filtered or
        dead-lettered): a source that reads from offsets can commit up to N, exactly
        once. Safe from any thread."""
        if self.state != "running" or self._in_driver():
            return self._scheduler.watermark()
        return int(self._scheduler.controls.call_soon(self._scheduler.watermark).result())

    def fail(self, error: BaseException) -> None:
        """End the run as failed with ``error`` (call it from the thread that iterates
        the run, e.g. when what consumes its results raised)."""
        if self.state == "running":
            self._end("failed", error, cancel=True)

    def run_controls(self) -> None:
        """Run what other threads asked of the run (the driving thread, while it is held
        up elsewhere, e.g. by a full result buffer)."""
        try:
            self._scheduler.controls.run()
        except Cancelled:
            self._end("cancelled", None, cancel=True)

    def _in_driver(self) -> bool:
        return self._driver is None or self._driver == threading.get_ident()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def resize(self, stage: str, workers: int) -> None:
        """Grow or shrink ``stage``'s worker pool while the run goes on.

        Call it from any thread, or from an instrument's hook (``RunInfo.control``); it
        takes effect at once for new tasks (from another thread, at the scheduler's
        next pass). Raises PipelineError for an unknown stage or fewer than one worker.
        """
        if self._in_driver() or self.state != "running":
            self._scheduler.resize(stage, workers)
            return
        check_resize(self.pipeline, stage, workers)
        self._scheduler.controls.call_soon(lambda: self._scheduler.resize(stage, workers))

    @property
    def recording(self) -> Recording:
        """What the recorder captured: final once the run has ended, a snapshot before.

        Raises :class:`~conveyor.RecordingError` for a run started with ``record=False``
        or not started.
        """
        if self._recorder is None:
            raise RecordingError(
                f"run {self.id} was started with record=False, so it has no recording; "
                "start it with Pipeline.run(..., record=True) (the default)"
            )
        rec = self._recorder.recording if self._recorder.finished else self._recorder.snapshot()
        rec.source_ns = self._scheduler.feed.busy_ns
        rec.driver_ns = self._scheduler.driver_ns
        return rec

    def report(self, *, budget: int | None = None) -> Report:
        """The run explained: per-stage table, bottleneck and evidence, the model's
        prediction beside the measurement, and advice (``print(run.report().render())``).

        ``budget`` is the number of workers to balance over (default: the run's own).
        """
        from conveyor.analysis import build_report

        return build_report(self.recording, budget=budget)

    def worker_pids(self) -> list[int]:
        """Process ids of this run's live worker processes."""
        return self._scheduler.worker_pids()

    @property
    def elapsed_seconds(self) -> float:
        start = self._scheduler.started_ns
        if not start:
            return 0.0
        end = self._ended_ns if self._ended_ns is not None else monotonic_ns()
        return (end - start) / 1e9

    def to_pandas(self) -> Any:
        """The results (after :meth:`wait`) as a pandas DataFrame: a column per key of
        dict results, else one column, ``result`` (needs pandas)."""
        from conveyor.results import to_pandas

        return to_pandas(self._finished_results("to_pandas"))

    def to_arrow(self) -> Any:
        """The results (after :meth:`wait`) as a ``pyarrow.Table``, shaped as
        :meth:`to_pandas` (needs pyarrow: ``pip install 'conveyor[files]'``)."""
        from conveyor.results import to_arrow

        return to_arrow(self._finished_results("to_arrow"))

    def _finished_results(self, what: str) -> list[Any]:
        if self.results is None:
            raise OutputError(
                f"run {self.id}: {what}() needs the run's results, kept by run() and "
                "wait(); call run.wait() first, or use Pipeline.run(), or write a streamed "
                "run with conveyor.write_results(run, path)"
            )
        return self.results

    def statistics(self) -> RunStatistics:
        """A snapshot of the run's counters, per stage and in total."""
        sched = self._scheduler
        return RunStatistics(
            pipeline=self.pipeline.name,
            state=self.state,
            elapsed_seconds=self.elapsed_seconds,
            items_read=sched.items_read,
            items_emitted=sched.items_emitted,
            stages=sched.stage_statistics(),
            source_seconds=sched.feed.busy_ns / 1e9,
            driver_seconds=sched.driver_ns / 1e9,
        )

    def stage_statistics(self, name: str) -> StageStatistics:
        return self._scheduler.stage_statistics()[name]

    def __repr__(self) -> str:
        return f"<Run {self.id} of {self.pipeline.name!r}: {self.state}>"


def _cancel() -> None:
    raise Cancelled
