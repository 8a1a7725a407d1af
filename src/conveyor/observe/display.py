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

import io
import logging
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
        self._redirect = _Redirect()
        self._stop = threading.Event()
        self._printer: threading.Thread | None = None

    def run_started(self, run: RunInfo) -> None:
        super().run_started(run)
        from rich.console import Console

        stream = self.file if self.file is not None else sys.stderr
        console = Console(file=stream, force_terminal=True if self.live else None)
        live = self.live if self.live is not None else console.is_terminal or console.is_jupyter
        if live:
            from rich.live import Live

            self._live = Live(self, console=console, refresh_per_second=4, transient=self.transient)
            self._redirect = _Redirect()  # notes sys.stdout and sys.stderr as they are
            self._live.start()  # which now print above the table (on a terminal)
            self._redirect.start()
            return
        self._printer = threading.Thread(
            target=self._print_every, args=(stream,), name="conveyor-progress", daemon=True
        )
        self._printer.start()

    def run_finished(self, state: str, error: BaseException | None, t_ns: int) -> None:
        super().run_finished(state, error, t_ns)
        live, self._live = self._live, None
        if live is not None:
            self._redirect.stop()
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


class _Redirect:
    """While a live table shows: every thread's printed lines reach it whole (each
    thread has its own line buffer, so two workers printing at once never mix their
    lines), and log handlers that write to the terminal's stdout or stderr write above
    the table too. ``start()`` after rich's Live has redirected sys.stdout and
    sys.stderr; ``stop()`` before it restores them."""

    def __init__(self) -> None:
        self._before = {"stdout": sys.stdout, "stderr": sys.stderr}
        self._streams: list[tuple[str, Any]] = []
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    def start(self) -> None:
        for name, original in self._before.items():
            current = getattr(sys, name)
            if current is original:
                continue  # not redirected (the display is not on a terminal)
            setattr(sys, name, _ThreadLines(current))
            self._streams.append((name, current))
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                    self._handlers.append((handler, handler.setStream(getattr(sys, name))))

    def stop(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        for name, _ in self._streams:
            lines = getattr(sys, name)
            if isinstance(lines, _ThreadLines):
                lines.drain()
        self._handlers.clear()
        self._streams.clear()


class _ThreadLines(io.TextIOBase):
    """Writes whole lines to ``target``, buffering each thread's partial line apart."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._pending: dict[int, list[str]] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        me = threading.get_ident()
        with self._lock:
            pending = self._pending.setdefault(me, [])
            pending.append(text)
            if "\n" not in text:
                return len(text)
            whole, _, rest = "".join(pending).rpartition("\n")
            self._pending[me] = [rest] if rest else []
            self.target.write(whole + "\n")
            self.target.flush()
        return len(text)

    def flush(self) -> None:
        """Whole lines are written at once: nothing to do (a partial line waits for its
        end, so that it is not mixed with another thread's)."""
        with self._lock:
            self.target.flush()

    def drain(self) -> None:
        """Write every thread's partial line, as the display ends."""
        with self._lock:
            for me, pending in list(self._pending.items()):
                if pending:
                    self.target.write("".join(pending) + "\n")
                self._pending.pop(me, None)
            self.target.flush()

    def isatty(self) -> bool:
        return bool(self.target.isatty())

    def fileno(self) -> int:
        return int(self.target.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.target, "encoding", "utf-8"))
