"""Showing a run's progress as it goes: a live table in a terminal or a notebook,
plain lines every few seconds anywhere else (a file, a pipe, a CI log).

:class:`ProgressDisplay` is a :class:`~conveyor.observe.Progress` that shows itself
from the run's start to its end; ``pipeline.run(progress=True)`` and
``pipeline.stream(progress=True)`` add one, and ``conveyor run`` shows one on stderr::

    run = pipeline.run(items, progress=True)
    # or, to choose where and how often:
    from conveyor.observe import ProgressDisplay
    run = pipeline.run(items, instruments=[ProgressDisplay(file=log, every=30)])

On a terminal (and in Jupyter) it is rich's live table, redrawn four times a
second; what workers print goes above it, not through it (see
:mod:`conveyor.observe.worker_output` for process workers). Elsewhere it writes the
same figures as plain text every ``every`` seconds, and once more at the end, so a
log shows how a long run went before it ends.
"""

from __future__ import annotations

import sys
import threading
from time import monotonic_ns
from typing import Any, TextIO

from conveyor.core.events import RunInfo
from conveyor.observe.progress import Progress

__all__ = ["ProgressDisplay"]


class ProgressDisplay(Progress):
    """Per-stage progress, shown while the run goes on.

    ``file``: where (default: ``sys.stderr`` when the run starts). ``every``: seconds
    between two plain reports when ``file`` is not a terminal. ``live``: force the
    live table (True) or plain lines (False); by default the live table is used on a
    terminal or in Jupyter. ``transient``: remove the live table at the end (the
    CLI prints a report there instead).
    """

    def __init__(
        self,
        *,
        file: TextIO | None = None,
        every: float = 10.0,
        live: bool | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__()
        if every <= 0:
            raise ValueError(f"ProgressDisplay(every={every!r}): give a number of seconds > 0")
        self.file = file
        self.every = every
        self.live = live
        self.transient = transient
        self._live: Any = None
        self._stop = threading.Event()
        self._printer: threading.Thread | None = None

    def run_started(self, run: RunInfo) -> None:
        super().run_started(run)
        from rich.console import Console

        stream = self.file if self.file is not None else sys.stderr
        console = Console(file=stream)
        live = self.live if self.live is not None else console.is_terminal or console.is_jupyter
        if live:
            from rich.live import Live

            self._live = Live(self, console=console, refresh_per_second=4, transient=self.transient)
            self._live.start()
            return
        self._printer = threading.Thread(
            target=self._print_every, args=(stream,), name="conveyor-progress", daemon=True
        )
        self._printer.start()

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        super().run_finished(state, error, t_ns)
        live, self._live = self._live, None
        if live is not None:
            live.stop()
        printer, self._printer = self._printer, None
        if printer is not None:
            self._stop.set()
            printer.join()

    def _print_every(self, stream: TextIO) -> None:
        while not self._stop.wait(self.every):
            self._write(stream)
        self._write(stream)  # the figures at the end

    def _write(self, stream: TextIO) -> None:
        try:
            stream.write(self.text() + "\n")
            stream.flush()
        except (OSError, ValueError):  # the stream closed under us: nothing to show on
            self._stop.set()

    def text(self) -> str:
        """The figures as plain lines: the run's, then one per stage, numbers in full."""
        now = monotonic_ns()
        end = self.finished_ns if self.finished_ns is not None else now
        elapsed = (end - self.started_ns) / 1e9 if self.started_ns else 0.0
        lines = [
            f"{self.pipeline or 'pipeline'}: {self.state}, {elapsed:.1f} s, "
            f"{self.read} read, {self.emitted} results"
        ]
        stages = list(self.stages.values())
        width = max((len(c.name) for c in stages), default=0)
        for c in stages:
            bound = "∞" if c.bound is None else str(c.bound)
            failed = f" ({c.errors} failed)" if c.errors else ""
            lines.append(
                f"  {c.name:<{width}}  {c.done} done{failed}, {c.rate(now):.1f} items/s, "
                f"queue {c.depth} / {bound}, busy {c.busy_workers} / {c.workers}"
            )
        return "\n".join(lines)
