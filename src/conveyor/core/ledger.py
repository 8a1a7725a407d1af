"""The ledger: what became of every source item while a run goes on.

Source item *i* is *root* i. The ledger counts each root's live descendants:

    read            count = number of entry stages
    flat_map        count += len(results) - 1        (an empty result drops the item)
    fan-out to n    count += n - 1
    batch, collect  the merged items' counts move onto the first item's root; the
                    others are *absorbed* and share that root's fate, unless a
                    part of their own was dead-lettered
    dead letter     count -= 1, and the root is marked
    output          count -= 1 per result that reaches it

At zero a root is finished, in one terminal state: ``done`` (a result of it reached
the output), ``dead_lettered`` (a part of it was skipped) or ``filtered`` (no result).
In ordered mode results wait in a heap until every earlier root has finished; the
*frontier* is the oldest unfinished root, which also bounds how far the source may
be read ahead. Nothing is kept for a finished root, so the ledger's memory is
bounded by the roots in flight, whatever the number of items.
"""

from __future__ import annotations

import heapq
import operator
from collections import deque
from typing import Any

Key = tuple[Any, ...]
Item = tuple[Key, Any]


class RootLedger:
    """Root counts, terminal states and the ordered-output frontier of one run.

    ``tracking`` keeps terminal states for instruments (``take_finished``); without
    it the ledger only counts, and orders when ``ordered``. Either way it holds
    nothing for a finished root: its memory is bounded by the roots in flight.
    """

    def __init__(self, *, ordered: bool, tracking: bool) -> None:
        self.ordered = ordered
        self.tracking = tracking
        self.live: dict[int, int] = {}
        self.frontier = 0  # every root below it is finished
        self._finished_ahead: set[int] = set()  # finished roots above the frontier
        self._heap: list[tuple[Key, int, Any]] = []
        self._seq = 0
        self._released: list[Item] = []
        # Kept only when tracking, and only for live roots:
        self._reached: set[int] = set()  # a result of it reached the output
        self._dead: set[int] = set()  # a part of it was dead-lettered
        self._absorbed: dict[int, list[int]] = {}  # root -> roots merged into it
        self._finished: dict[str, list[int]] = {"done": [], "filtered": [], "dead_lettered": []}

    @property
    def holding(self) -> bool:
        """Whether ordered results still wait for earlier roots."""
        return bool(self._heap)

    def read(self, first: int, n: int, fan: int) -> None:
        """Roots ``first .. first + n - 1`` entered ``fan`` entry stages."""
        self.live.update(dict.fromkeys(range(first, first + n), fan))

    def add(self, root: int, delta: int) -> None:
        """``root`` has ``delta`` more live items (negative: fewer)."""
        n = self.live[root] + delta
        if n:
            self.live[root] = n
            return
        del self.live[root]
        self._finish(root)

    def drop(self, roots: list[int]) -> None:
        """One item of each of ``roots`` ended with no result (a filter let it go)."""
        live = self.live
        if self._simple(roots):  # each root had one item left, this one: at C speed
            deque(map(live.__delitem__, roots), maxlen=0)
            if self.tracking:
                self._finished["filtered"].extend(roots)
            if self.ordered:
                deque(map(self._advance_frontier, roots), maxlen=0)
            return
        for root in roots:
            self.add(root, -1)

    def _simple(self, roots: list[int]) -> bool:
        """Whether ``roots`` are distinct, each with one live item left, and none has a
        result out, a dead letter or an absorbed root: ending them needs no more."""
        live = self.live
        return (
            not (self._reached or self._dead)
            and not (self._absorbed and any(map(self._absorbed.__contains__, roots)))
            and list(map(live.__getitem__, roots)).count(1) == len(roots)
            and len(set(roots)) == len(roots)
        )

    def fan_out(self, items: list[Item], extra: int) -> None:
        live = self.live
        for key, _ in items:
            live[key[0]] += extra

    def merge(self, batches: list[list[Key]]) -> None:
        """Each batch of items became one item, keyed by its first item's key. A root
        whose last item went into another root's batch is *absorbed*: it finishes with
        that root, in its state (unless a part of it was dead-lettered itself)."""
        live = self.live
        for keys in batches:
            into = keys[0][0]
            others = list(map(_first, keys[1:]))
            if into not in others and self._simple(others):  # at C speed
                deque(map(live.__delitem__, others), maxlen=0)
                if self.tracking and others:
                    self._absorbed.setdefault(into, []).extend(others)
                if self.ordered:
                    deque(map(self._advance_frontier, others), maxlen=0)
                continue
            live[into] += 1  # the merged item; its first item's count goes below
            for key in keys:
                root = key[0]
                n = live[root] - 1
                if n:
                    live[root] = n
                    continue
                del live[root]  # never ``into``: its merged item keeps it live
                if self.tracking:
                    self._absorbed.setdefault(into, []).append(root)
                self._advance_frontier(root)

    def dead_letter(self, root: int) -> None:
        """An item of ``root`` was skipped into the dead letters."""
        if self.tracking:
            self._dead.add(root)
        self.add(root, -1)

    def arrive(self, items: list[Item], *, hold: bool = True) -> None:
        """Results reached the output: count their roots down (and, ordered, hold them
        until ``take_released`` may hand them out, unless not ``hold``)."""
        if self.ordered and hold:
            for key, value in items:
                heapq.heappush(self._heap, (key, self._seq, value))
                self._seq += 1
        live = self.live
        roots = list(map(_first, map(_first, items)))  # item -> key -> root
        if not self.ordered and self._simple(roots):
            # The common case, at C speed: each root had one item left, this one.
            deque(map(live.__delitem__, roots), maxlen=0)
            if self.tracking:
                self._finished["done"].extend(roots)
            return
        tracking = self.tracking
        for root in roots:
            n = live[root] - 1
            if n:
                live[root] = n
                if tracking:
                    self._reached.add(root)
                continue
            del live[root]
            if tracking:
                self._reached.add(root)
            self._finish(root)

    def take_released(self) -> list[Item]:
        """Ordered results whose roots and every earlier root have finished."""
        released, self._released = self._released, []
        return released

    def held_keys(self) -> list[Any]:
        """Keys of ordered results held back or released, not yet in the output."""
        return [k for k, _, _ in self._heap] + [k for k, _ in self._released]

    def take_finished(self) -> dict[str, list[int]] | None:
        """Roots finished since the last call, by terminal state (None if none)."""
        f = self._finished
        if not (f["done"] or f["filtered"] or f["dead_lettered"]):
            return None
        self._finished = {"done": [], "filtered": [], "dead_lettered": []}
        return f

    def _finish(self, root: int) -> None:
        """Every item descended from ``root`` is gone: record its state, and the state
        of every root absorbed into it (transitively)."""
        if self.tracking:
            reached = root in self._reached
            shared = "done" if reached else "filtered"
            if root in self._dead:
                shared = "dead_lettered"  # the batch it carried was incomplete
            todo = [root]
            while todo:
                r = todo.pop()
                todo.extend(self._absorbed.pop(r, ()))
                self._reached.discard(r)
                dead = r in self._dead
                self._dead.discard(r)
                self._finished["dead_lettered" if dead else shared].append(r)
        self._advance_frontier(root)

    def _advance_frontier(self, root: int) -> None:
        if not self.ordered:
            return
        if root != self.frontier:
            self._finished_ahead.add(root)
            return
        f = root + 1
        while f in self._finished_ahead:
            self._finished_ahead.remove(f)
            f += 1
        self.frontier = f
        heap = self._heap
        while heap and heap[0][0][0] < f:
            key, _, value = heapq.heappop(heap)
            self._released.append((key, value))


_first = operator.itemgetter(0)
