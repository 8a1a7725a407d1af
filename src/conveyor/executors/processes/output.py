"""What process workers print and log, brought to the driver.

A spawned worker has no logging configuration of its own (the driver's, often set up
under ``if __name__ == "__main__":``, is not run again there), and what it prints
goes straight to the terminal, through any live display. So each worker sends both
to the driver on one queue per run, as ``logging.handlers.QueueHandler`` does:

- log records, at the level the driver's configuration asks for, are handled by the
  driver's logger of the same name, so its handlers, levels and formats apply;
- lines printed to stdout and stderr are written, whole, to the driver's
  ``sys.stdout`` and ``sys.stderr`` as they are at that moment (above a live
  display, which redirects them).

Both are prefixed with the stage and the worker: ``[parse 2] loaded 120 rows``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import logging.handlers
import sys
import threading
from typing import Any

LINE, RECORD = "line", "record"


def wanted_level() -> int:
    """The lowest level any logger of the driver is set to let through (the root's
    effective level at most): records below it would be dropped at the driver anyway."""
    levels = [logging.getLogger().getEffectiveLevel()]
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.level:
            levels.append(logger.level)
    return min(levels)


class WorkerOutput:
    """The driver's end: a queue the run's process workers write to, and the thread
    that prints and logs what comes (``close()`` handles what is left, then stops)."""

    def __init__(self, ctx: Any) -> None:
        self.queue = ctx.Queue()
        self.level = wanted_level()
        self._thread = threading.Thread(
            target=self._pump, name="conveyor-worker-output", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                msg = self.queue.get()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            try:
                emit(msg)
            except Exception:  # a handler of the user's failed: say so, go on
                err = sys.__stderr__
                if err is not None:
                    with contextlib.suppress(Exception):
                        err.write(f"conveyor: could not show a worker's output: {msg!r}\n")

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join()
        self.queue.close()
        self.queue.join_thread()


def emit(msg: tuple[Any, ...]) -> None:
    """Show one message of a worker at the driver."""
    if msg[0] == LINE:
        _, name, text = msg
        stream = sys.stdout if name == "stdout" else sys.stderr
        stream.write(text)
        stream.flush()
        return
    record: logging.LogRecord = msg[1]
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


class _ToDriver(logging.handlers.QueueHandler):
    """Sends a worker's records, their message prefixed with stage and worker."""

    def __init__(self, queue: Any, prefix: str, stage: str, worker: int) -> None:
        super().__init__(queue)
        self.prefix = prefix
        self.stage = stage
        self.worker = worker

    def prepare(self, record: logging.LogRecord) -> Any:
        record = super().prepare(record)  # message formatted, traceback as text
        record.msg = self.prefix + record.msg
        record.conveyor_stage = self.stage
        record.conveyor_worker = self.worker
        return (RECORD, record)


class _Lines(io.TextIOBase):
    """A worker's sys.stdout or sys.stderr: each whole line goes to the driver."""

    def __init__(self, queue: Any, name: str, prefix: str, original: Any) -> None:
        self.queue = queue
        self.name_ = name
        self.prefix = prefix
        self.original = original  # for fileno(): faulthandler and the like write there
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self.original.fileno())

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            if "\n" not in self._pending:
                return len(text)
            whole, _, self._pending = self._pending.rpartition("\n")
        self._send(whole + "\n")
        return len(text)

    def flush(self) -> None:
        """Whole lines go at once; a partial line waits for its end (or the worker's)."""

    def drain(self) -> None:
        with self._lock:
            rest, self._pending = self._pending, ""
        if rest:
            self._send(rest + "\n")

    def _send(self, text: str) -> None:
        lines = "".join(self.prefix + line for line in text.splitlines(keepends=True))
        with contextlib.suppress(Exception):  # the driver is gone: nothing to show on
            self.queue.put((LINE, self.name_, lines))


def send_output(queue: Any, level: int, stage: str, worker: int) -> None:
    """In a worker: send its log records and printed lines to the driver."""
    prefix = f"[{stage} {worker}] "
    root = logging.getLogger()
    for handler in list(root.handlers):  # what the module set up at import: ours instead
        root.removeHandler(handler)
    root.addHandler(_ToDriver(queue, prefix, stage, worker))
    root.setLevel(level)
    sys.stdout = _Lines(queue, "stdout", prefix, sys.stdout)
    sys.stderr = _Lines(queue, "stderr", prefix, sys.stderr)


def flush_output() -> None:
    """In a worker that stops: send what is printed but not yet ended by a newline."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _Lines):
            stream.drain()
