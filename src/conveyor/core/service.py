"""Service mode: a run that goes on in the background, over an endless stream.

``Pipeline.start()`` returns a :class:`Service`: a :class:`~conveyor.Run` driven by a
thread of its own. Items come from the source given, or are pushed with
:meth:`Service.submit`, whose future resolves with that item's result. Results
of source items go to ``on_result`` (called in the service's thread) or wait in a
bounded buffer for whoever iterates the service (a full buffer holds the run
back, so iterate while it drains, or give ``on_result``). Control is safe from any thread:
``resize``, ``watermark``, ``stop(drain=True)`` (stop reading, finish everything in
flight, end with a balanced ledger) or ``stop(drain=False)`` (stop now).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from conveyor.errors import RunError

if TYPE_CHECKING:
    from conveyor.core.run import Run
    from conveyor.core.statistics import RunStatistics

_END: Any = object()
POLL_SECONDS = 0.1  # a full result buffer is retried this often (the run's controls go on)


class Service:
    """A run in the background (see the module docstring); also a context manager that
    drains and waits on exit."""

    def __init__(
        self,
        run: Run,
        *,
        on_result: Callable[[Any], None] | None = None,
        buffer: int = 1024,
    ) -> None:
        self.run = run
        self._on_result = on_result
        self._results: queue.Queue[Any] = queue.Queue(maxsize=max(1, buffer))
        self._thread = threading.Thread(
            target=self._drive, name=f"conveyor-service-{run.pipeline.name}", daemon=True
        )
        self._thread.start()

    # --- the service's thread -----------------------------------------------------------

    def _drive(self) -> None:
        try:
            for result in self.run:
                if self._on_result is not None:
                    self._on_result(result)
                else:
                    self._hand_over(result)
        except BaseException as exc:  # the run's own error is kept on it: run.error
            if self.run.state == "running":  # raised by on_result: the run fails with it
                self.run.fail(exc)
        finally:
            self._put_end()

    def _hand_over(self, result: Any) -> None:
        """Put ``result`` in the buffer; while it is full, the run's controls still run."""
        while True:
            try:
                self._results.put(result, timeout=POLL_SECONDS)
                return
            except queue.Full:
                self.run.run_controls()
                if self.run.state != "running":
                    return  # stopped meanwhile

    def _put_end(self) -> None:
        # If the buffer is full, the iterator ends once it is empty and this thread gone.
        with contextlib.suppress(queue.Full):
            self._results.put_nowait(_END)

    # --- any thread ---------------------------------------------------------------------

    def submit(self, item: Any) -> Future[Any]:
        """Push ``item`` into the run; the future resolves with its result (a list when
        it had several, None when it was filtered out) or raises why it failed."""
        return self.run.submit(item)

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> str:
        """Stop the service and wait for its end (at most ``timeout`` seconds); return
        the run's state. ``drain``: finish every item read first (see the module)."""
        self.run.stop(drain=drain)
        self._thread.join(timeout)
        return self.run.state

    def wait(self, timeout: float | None = None) -> str:
        """Wait for the run to end by itself (its source ended); return its state.
        Raises the run's error if it failed."""
        self._thread.join(timeout)
        if self.run.state == "failed" and self.run.error is not None:
            raise self.run.error
        return self.run.state

    def resize(self, stage: str, workers: int) -> None:
        """Give ``stage`` ``workers`` workers from now on."""
        self.run.resize(stage, workers)

    @property
    def watermark(self) -> int:
        """N such that every source item before item N has finished."""
        return self.run.watermark

    @property
    def state(self) -> str:
        return self.run.state

    @property
    def error(self) -> BaseException | None:
        return self.run.error

    def statistics(self) -> RunStatistics:
        return self.run.statistics()

    def __iter__(self) -> Iterator[Any]:
        """The results of source items, as they come, until the run ends (then the
        run's error, if it failed)."""
        if self._on_result is not None:
            raise RunError(
                "this service hands its results to on_result; it has none to iterate",
                stage="<service>",
            )
        while True:
            try:
                result = self._results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                break
            if result is _END:
                self._results.put(_END)  # a second iterator ends too
                break
            yield result
        if self.run.state == "failed" and self.run.error is not None:
            raise self.run.error

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(drain=exc[0] is None)

    def __repr__(self) -> str:
        return f"<Service {self.run.id} of {self.run.pipeline.name!r}: {self.run.state}>"
