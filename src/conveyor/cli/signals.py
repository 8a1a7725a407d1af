"""SIGINT and SIGTERM during ``conveyor run`` and ``conveyor resume``: drain or cancel,
clean up, report, and exit with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).

SIGTERM, the signal a service manager sends, *drains* a run that is going on: the
source is no longer read, every item read is finished, and the run ends (as
cancelled, resumable, with nothing pending). A second signal during the drain
cancels at once. SIGINT (Ctrl-C), and SIGTERM before the run has started, cancel.

The engine cancels a run on a ``KeyboardInterrupt`` raised in the thread that
iterates it: workers stop, processes are terminated, shared memory is removed, and
instruments (the run store's recorder among them) see ``run_finished("cancelled")``.
:class:`SignalGuard` turns both signals into that exception, :class:`Interrupted`,
but only at a *safe point*; a signal that comes at any other moment is kept and
delivered as soon as one comes::

    phase                        a signal...
    loading the target           raises Interrupted at once (no run exists yet)
    starting the workers         waits until they have started, then cancels the run
    inside an instrument hook    waits until the hook returns (its bookkeeping, e.g.
                                 the run store's ledger, is never cut in half)
    the run going on             raises Interrupted: the run is cancelled
    the run ending, cleaning up  is noted; cleanup is never interrupted
    report and outputs           is noted; they are written, then the exit code says it

A kept signal is retried every :data:`RETRY_SECONDS` with SIGALRM (borrowed while a
signal waits, then given back), so it is delivered even when the run is blocked
inside a hook or a slow start. Only the first signal counts: later ones are noted
and ignored, so a second Ctrl-C cannot interrupt the cleanup the first one began.
A signal ignored when the command started (``nohup``, a background job) stays
ignored. The previous handlers are restored when the guard exits.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

from conveyor import Instrument, Run, RunInfo

HANDLED = (signal.SIGINT, signal.SIGTERM)
RETRY_SECONDS = 0.02
_EVENTS = tuple(
    name for name, value in vars(Instrument).items() if callable(value) and not name.startswith("_")
)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread to cancel the run.

    A ``KeyboardInterrupt``, so the engine cancels the run as it does on Ctrl-C;
    ``signum`` says which signal came, ``exit_code`` is ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal_name(signum))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalGuard:
    """Turns SIGINT and SIGTERM into :class:`Interrupted` at safe points (see the
    module docstring). Use it as a context manager around a command, pass the run's
    instruments through :meth:`shield`, and iterate the run inside :meth:`watching`.

    ``signum`` is the first signal that came (None if none): the command exits with
    ``128 + signum`` once its report is written.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received: list[int] = []  # every signal that came, in order
        self._delivered = False  # the first signal was raised as Interrupted
        self._run: Run | None = None
        self._ended = False  # the run is over: signals are only noted
        self._started = False  # the run's workers are started (its last hook ran)
        self._depth = 0  # inside an instrument hook when > 0
        self._previous: dict[int, Any] = {}
        self._alarm_previous: Any = None
        self._borrowing_alarm = False  # SIGALRM is ours while a signal waits
        self._active = False
        self.draining = False  # SIGTERM came while the run went on: it drains

    # --- installing and restoring -----------------------------------------------

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers live in the main thread; nothing to guard
        for signum in HANDLED:
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:
                continue  # ignored by whoever started us (nohup, a background job)
            self._previous[signum] = previous
            signal.signal(signum, self._on_signal)
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._active:
            return
        self._active = False
        self._stop_retrying()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    @property
    def cancelled_drain(self) -> bool:
        """A drain was cut short by a second signal."""
        return self.draining and self._delivered

    # --- what the command tells the guard -----------------------------------------

    def shield(self, instruments: Sequence[Instrument | None]) -> list[Instrument]:
        """``instruments`` (Nones dropped), each wrapped so that no signal interrupts
        its hooks, and last the guard's own, which learns when the workers started."""
        shielded: list[Instrument] = [_shielded(i, self) for i in instruments if i is not None]
        return [*shielded, _Started(self)]

    @contextmanager
    def watching(self, run: Run) -> Iterator[None]:
        """Iterate ``run`` inside this block: signals cancel it at safe points. When the
        block ends the run is over, and signals are only noted from then on."""
        self._run = run
        try:
            yield
        finally:
            self._run = None
            self._ended = True
            self._stop_retrying()

    # --- the handlers -----------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.draining and not self._delivered:
            self._deliver()  # a second signal while the run drains: cancel now
            return
        if self.signum is not None:
            return  # only the first signal counts; never interrupt its cleanup
        self.signum = signum
        run = self._run
        if (
            signum == signal.SIGTERM
            and run is not None
            and run.state == "running"
            and self._started
        ):
            self.draining = True
            run.stop(drain=True)  # thread-safe, never raises: no safe point needed
            return
        self._deliver()

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and not self._delivered:
            self._deliver()

    def _deliver(self) -> None:
        """Raise the first signal as Interrupted if this is a safe point; otherwise keep
        it and look again shortly."""
        run = self._run
        if self._ended or (run is not None and run.state not in ("pending", "running")):
            self._stop_retrying()
            return  # the run is over or ending: the exit code will say it
        if not self._safe():
            self._retry_later()
            return
        self._stop_retrying()
        self._delivered = True
        assert self.signum is not None
        raise Interrupted(self.signum)

    def _safe(self) -> bool:
        if self._depth:
            return False  # inside a hook
        run = self._run
        if run is None or run.state == "pending":
            return True  # no run yet, or not started: nothing to cut in half
        return run.state == "running" and self._started

    def _retry_later(self) -> None:
        if not hasattr(signal, "setitimer"):
            return  # no timer: it counts for the exit code; the run ends on its own
        if not self._borrowing_alarm:
            self._alarm_previous = signal.signal(signal.SIGALRM, self._on_alarm)
            self._borrowing_alarm = True
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)

    def _stop_retrying(self) -> None:
        if not self._borrowing_alarm:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        previous = self._alarm_previous
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
        self._alarm_previous = None
        self._borrowing_alarm = False


class _Started(Instrument):
    """The guard's own instrument, last in the run's list: its ``run_started`` runs
    once every worker has started and every other instrument has seen the start."""

    def __init__(self, guard: SignalGuard) -> None:
        self._guard = guard

    def run_started(self, run: RunInfo) -> None:
        self._guard._started = True


def _shielded(instrument: Instrument, guard: SignalGuard) -> Instrument:
    """``instrument`` behind a proxy whose hooks tell ``guard`` they are running.

    The proxy overrides exactly the hooks ``instrument`` overrides, so the engine
    still skips the events nobody listens to; other attributes read through.
    """
    overridden = [
        name
        for name in _EVENTS
        if getattr(type(instrument), name, None) is not getattr(Instrument, name)
    ]
    namespace: dict[str, Any] = {name: _hook(name) for name in overridden}
    namespace["critical"] = instrument.critical  # the engine reads it from the class
    cls = type(f"Shielded{type(instrument).__name__}", (_Shield,), namespace)
    return cls(instrument, guard)


class _Shield(Instrument):
    def __init__(self, inner: Instrument, guard: SignalGuard) -> None:
        self._inner = inner
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _hook(name: str) -> Any:
    def hook(self: _Shield, *args: Any) -> None:
        guard = self._guard
        guard._depth += 1
        try:
            getattr(self._inner, name)(*args)
        finally:
            guard._depth -= 1

    hook.__name__ = name
    return hook
