"""The feed: how a run's source items reach the scheduler.

A source that may block (a generator, a file, a socket, an async iterator) is read
on a thread of its own, never on the scheduler's: each item is handed over as soon
as it is read, and the scheduler is woken for it, so a slow source never holds
back items that are ready. The reader holds at most ``limit`` items the scheduler
has not taken yet; the scheduler sets ``limit`` to the room in its entry queues, so
a slow consumer stops the reading. Async iterators are read on the reader thread's
own event loop.

In-memory sequences (lists, tuples, ranges) cannot block, and runs whose stages all
run in the caller must not depend on a thread: those are read inline, in the
scheduler's pass, as a plain loop would.

Items can also be *pushed* (``submit``) from any thread, each with a future that the
scheduler resolves with the item's result. ``close`` stops the reading: what was
read already is still taken, then the feed is done (a drain).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from concurrent.futures import Future, InvalidStateError
from time import monotonic_ns
from typing import Any

from conveyor.errors import RunError, StageError

SOURCE_BURST_NS = 1_000_000  # an inline read lasts at most this long per pass
READER_POLL = 0.5  # a reader waiting for room looks at the closed flag this often

_INLINE_TYPES = (list, tuple, range)


class Feed:
    """Source items for one run; the scheduler takes them with :meth:`take`.

    Args:
        source: an iterable or async iterable; None for a feed of pushed items only.
        wake: called (from any thread) when items arrive while the scheduler may wait.
        threaded: read ``source`` on a reader thread (else inline, in ``take``).
        deterministic: an inline read is never cut short by the clock.
        name: names the reader thread.
        pushing: items are pushed until ``close`` (a service without a source).
    """

    def __init__(
        self,
        source: Iterable[Any] | AsyncIterable[Any] | None,
        *,
        wake: Callable[[], None],
        threaded: bool,
        deterministic: bool,
        name: str,
        pushing: bool = False,
    ) -> None:
        self._wake = wake
        self._deterministic = deterministic
        self._name = name
        self._cond = threading.Condition(threading.Lock())  # not reentrant: cheaper
        self._items: deque[tuple[Any, Future[Any] | None]] = deque()
        self._signalled = False  # a wake-up is pending for the items held
        self._closed = False  # no more reading, no more pushing
        self._error: BaseException | None = None
        self.limit = 0  # items the reader may hold untaken (set by the scheduler)
        self.busy_ns = 0  # time spent inside the source, producing items
        self.pushing = pushing  # the run waits for pushed items until closed
        self._inline: Iterator[Any] | None = None
        self._reader: threading.Thread | None = None
        self._source = source
        self.threaded = threaded and source is not None
        # The source has no more items (a feed of pushed items only ends when closed).
        self._exhausted = source is None and not pushing
        if source is not None and not threaded:
            if not isinstance(source, Iterable):
                raise TypeError(f"an async iterable source needs a threaded feed: {source!r}")
            self._inline = iter(source)

    @staticmethod
    def needs_thread(source: Any, *, deterministic: bool, push: bool) -> bool:
        """Whether ``source`` is read on a thread of its own: unless it cannot block (an
        in-memory sequence) or the run must not depend on threads (every stage runs in
        the caller), and always when items are pushed or the source is async."""
        if push or not isinstance(source, Iterable):
            return True
        return not (deterministic or isinstance(source, _INLINE_TYPES))

    # --- the scheduler's side ----------------------------------------------------------

    def start(self) -> None:
        if self.threaded:
            self._reader = threading.Thread(
                target=self._read, name=f"conveyor-source-{self._name}", daemon=True
            )
            self._reader.start()

    @property
    def done(self) -> bool:
        """No item will come any more, and none is left to take."""
        return not self._items and (self._closed or self._exhausted)

    @property
    def waiting(self) -> bool:
        """Items may still arrive from another thread (the scheduler may block for them)."""
        return not self.done and self._inline is None

    def set_limit(self, n: int) -> None:
        """The reader may hold up to ``n`` items the scheduler has not taken."""
        if n > self.limit and self._reader is not None:
            with self._cond:
                self.limit = n
                self._cond.notify()
        else:
            self.limit = n

    def take(self, n: int) -> tuple[list[Any], list[Future[Any] | None] | None]:
        """Up to ``n`` items read or pushed so far, and their futures (None if none has
        one). Raises SourceRaised if the source raised (after the items before it)."""
        if self._inline is not None:
            return self._take_inline(n), None
        if not self._items and self._error is None:
            return [], None  # nothing yet (an item put meanwhile wakes the scheduler)
        with self._cond:
            items = self._items
            k = min(n, len(items))
            taken = [items.popleft() for _ in range(k)]
            # What was taken now fills the queue's room: the reader's allowance shrinks
            # with it, so the queue and what the reader holds stay within the bound.
            self.limit = max(0, self.limit - k)
            self._signalled = bool(items)
            error = self._error if not items else None
            self._cond.notify()
        if error is not None and not taken:
            self._error = None
            raise SourceRaised(error)
        values = [v for v, _ in taken]
        futures = [f for _, f in taken]
        return values, (futures if any(f is not None for f in futures) else None)

    def _take_inline(self, n: int) -> list[Any]:
        if self._error is not None:
            error, self._error = self._error, None
            raise SourceRaised(error)
        if self._exhausted or self._closed or n <= 0:
            return []
        assert self._inline is not None
        deadline = (1 << 63) if self._deterministic else monotonic_ns() + SOURCE_BURST_NS
        source = self._inline
        values: list[Any] = []
        append = values.append
        began = monotonic_ns()
        try:
            for i in range(1, n + 1):
                append(next(source))
                if not i & 15 and monotonic_ns() > deadline:
                    break
        except StopIteration:
            self._exhausted = True
        except Exception as exc:
            self._exhausted = True
            if not values:
                raise SourceRaised(exc) from exc
            self._error = exc  # raised by the next take, after these items
        finally:
            self.busy_ns += monotonic_ns() - began
        return values

    def close(self) -> None:
        """Stop reading and pushing; items already read are still taken (a drain).

        Safe from a signal handler, which may interrupt this thread while it holds the
        feed's lock: the flag is set without the lock, and a reader waiting for room
        is woken if the lock is free (else it sees the flag within READER_POLL)."""
        self._closed = True
        if self._cond.acquire(blocking=False):
            try:
                self._cond.notify_all()
            finally:
                self._cond.release()
        self._wake()

    def shutdown(self, error: BaseException | None = None) -> None:
        """The run is over: stop the reader, and fail the futures of items never taken
        (with ``error``, the run's, if given)."""
        self.close()
        with self._cond:
            left, self._items = list(self._items), deque()
        for _, future in left:
            if future is not None:
                _settle(
                    future,
                    error=error
                    or RunError("the run ended before this item was read", stage="<source>"),
                )

    # --- the producers' side -------------------------------------------------------------

    @property
    def stopped_early(self) -> bool:
        """Closed before its source ended (a drain): items may be left unread."""
        return self._closed and not self._exhausted and not self.pushing

    def submit(self, value: Any) -> Future[Any]:
        """Push ``value`` into the run; its future resolves with the item's result."""
        future: Future[Any] = Future()
        with self._cond:
            if self._closed or self._exhausted:
                raise RunError(
                    "the run is stopping or has ended: it takes no more items", stage="<source>"
                )
            wake = self._append(value, future)
        if wake:
            self._wake()
        return future

    def _put(self, value: Any) -> bool:
        """The reader read ``value``; False once the feed is closed."""
        with self._cond:
            if self._closed:
                return False
            wake = self._append(value, None)
        if wake:
            self._wake()
        return True

    def _append(self, value: Any, future: Future[Any] | None) -> bool:
        """Hold an item for the scheduler (lock held); whether to wake it: only for the
        first item it has not been told of."""
        self._items.append((value, future))
        wake = not self._signalled
        self._signalled = True
        return wake

    def _room(self) -> bool:
        """Block until the reader may read one more item; False once closed."""
        with self._cond:
            while not self._closed and len(self._items) >= self.limit:
                self._cond.wait(READER_POLL)
            return not self._closed

    def _finish(self, error: BaseException | None) -> None:
        """The reader stops: the source ended (or raised ``error``), or the feed closed."""
        with self._cond:
            self._exhausted = self._exhausted or not self._closed or error is not None
            self._error = error
            self._signalled = True
        self._wake()

    def _read(self) -> None:
        source = self._source
        error: BaseException | None = None
        try:
            if isinstance(source, AsyncIterable) and not isinstance(source, Iterable):
                self._read_async(source)
            else:
                assert isinstance(source, Iterable)
                self._read_sync(iter(source))
        except BaseException as exc:  # reported to the scheduler, which fails the run
            error = exc
        self._finish(error)

    def _pump(self, produce: Callable[[], Any], ended: type[BaseException]) -> None:
        """Hand over what ``produce`` makes, while there is room, until it raises
        ``ended`` or the feed closes; time spent producing counts in ``busy_ns``."""
        while self._room():
            began = monotonic_ns()
            try:
                value = produce()
            except ended:
                return
            finally:
                self.busy_ns += monotonic_ns() - began
            if not self._put(value):
                return

    def _read_sync(self, it: Iterator[Any]) -> None:
        try:
            self._pump(it.__next__, StopIteration)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # a generator's finally blocks run here, in the thread that ran it

    def _read_async(self, source: AsyncIterable[Any]) -> None:
        loop = asyncio.new_event_loop()
        it = source.__aiter__()
        try:
            self._pump(lambda: loop.run_until_complete(_next(it)), StopAsyncIteration)
        finally:
            aclose = getattr(it, "aclose", None)
            try:
                if aclose is not None:
                    loop.run_until_complete(aclose())
            finally:
                loop.close()


async def _next(it: Any) -> Any:
    return await it.__anext__()


class SourceRaised(Exception):
    """The source raised ``error`` reading the item after those taken so far."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class DeadLettered:
    """In a pushed item's results: a part of it was dead-lettered by ``stage``."""

    __slots__ = ("error", "stage")

    def __init__(self, stage: str, error: BaseException) -> None:
        self.stage = stage
        self.error = error


class Replies:
    """The futures of pushed items, by root, resolved when their root finishes.

    ``results`` (shared with the completion) collects each pushed root's results
    while it is in flight; they go to its future, never to the run's output.
    """

    def __init__(self, results: dict[int, list[Any]]) -> None:
        self.results = results
        self.futures: dict[int, Future[Any]] = {}

    def add(self, first: int, futures: list[Future[Any] | None]) -> None:
        """Roots ``first, first + 1, ...`` were read; those with a future are replied to."""
        for root, future in enumerate(futures, first):
            if future is not None:
                self.futures[root] = future
                self.results[root] = []

    def finished(self, roots: Iterable[int]) -> None:
        """These roots finished: resolve their futures."""
        futures = self.futures
        for root in roots:
            future = futures.pop(root, None)
            if future is None:
                continue
            results = self.results.pop(root)
            try:
                value = reply_value(results)
            except StageError as exc:
                _settle(future, error=exc)
            else:
                _settle(future, value=value)

    def abandon(self, error: BaseException | None = None) -> None:
        """The run ended: every future still waiting fails (with ``error``, if given)."""
        futures, self.futures = self.futures, {}
        self.results.clear()
        for future in futures.values():
            _settle(
                future,
                error=error
                or RunError("the run ended before this item finished", stage="<source>"),
            )


def reply_value(results: list[Any]) -> Any:
    """What a pushed item's future resolves with: its one result; a list when it had
    several (a flat_map, two sinks); None when it was filtered out. Raises the error
    of a part of it that was dead-lettered."""
    for r in results:
        if isinstance(r, DeadLettered):
            raise StageError(
                f"stage {r.stage!r} dead-lettered this item: {type(r.error).__name__}: {r.error}",
                stage=r.stage,
            ) from r.error
    if not results:
        return None
    return results[0] if len(results) == 1 else results


def _settle(future: Future[Any], *, value: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``future`` unless its caller cancelled it (or it is already resolved)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass  # cancelled by its caller meanwhile


class Controls:
    """Calls from other threads, run in the scheduler's thread at its next pass."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()

    @property
    def pending(self) -> bool:
        return bool(self._calls)

    def call_soon(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` at the scheduler's next pass; the future resolves with what it
        returns or raises (thread-safe)."""
        future: Future[Any] = Future()
        self._calls.append((fn, future))
        self._wake()
        return future

    def run(self) -> None:
        """Run the calls waiting (in the scheduler's thread). A ``BaseException`` that is
        not an ``Exception`` (a cancel) propagates: it ends the run."""
        while self._calls:
            fn, future = self._calls.popleft()
            try:
                value = fn()
            except Exception as exc:
                future.set_exception(exc)
            except BaseException:
                future.set_result(None)
                raise
            else:
                future.set_result(value)

    def cancel(self) -> None:
        """The run ended: calls never run are cancelled."""
        while self._calls:
            self._calls.popleft()[1].cancel()
