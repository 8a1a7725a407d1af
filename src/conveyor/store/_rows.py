"""What the run store's writes take: item outcomes, root states and dead letters,
gathered in a :class:`Batch` that coalesces consecutive source items into ranges.

Nearly every item of a run ends the same way at every stage, and items finish in
near source order, so a thousand ``done`` items are one row ``(first, last)``.
A batch holds:

    ranges    (stage, outcome) -> source items done or cached there   as Ranges
    roots     terminal state   -> source items that reached it         as Ranges
    outcomes  every other outcome: failures, skips, derived keys (3.1)  one row each
    letters   items a stage gave up on, with their values               one row each

so its memory grows with the number of *ranges and rare rows*, not with the items it
covers: the run store's writer can fall behind without holding each item.
"""

from __future__ import annotations

import json
import pickle
import reprlib
from collections.abc import Iterable, Sequence
from typing import Any

# (stage, key, outcome, attempt, error, traceback, at): one item's outcome at one stage.
OutcomeRow = tuple[
    str, "tuple[Any, ...] | str", str, "int | None", "str | None", "str | None", float
]
# (stage, key, value, error, traceback, at): an item a stage gave up on.
DeadLetterRow = tuple[str, "tuple[Any, ...] | str", Any, BaseException, "str | None", float]


def encode_key(key: tuple[Any, ...] | str) -> str:
    """An item key as stored: ``(3, 1)`` → ``"3.1"``; other keys as JSON."""
    if isinstance(key, str):
        return key
    if all(type(k) is int for k in key):
        return ".".join(map(str, key))
    return json.dumps(list(key), default=repr)


def source_position(key: Any) -> int | None:
    """The source position of a source item's key ``(i,)``; None for any other key."""
    if isinstance(key, tuple) and len(key) == 1 and type(key[0]) is int:
        return key[0]
    return None


class Ranges:
    """A multiset of integers kept as ``(first, last)`` ranges.

    Adding in increasing order extends one open range; anything else starts a new
    range, and the ranges are sorted and joined now and then. An integer added twice
    stays twice (its ranges overlap and are never joined), so a count over the
    ranges never hides a duplicate.
    """

    __slots__ = ("_closed", "_compact_at", "_first", "_last", "_open", "count")

    def __init__(self) -> None:
        self._closed: list[tuple[int, int]] = []
        self._first = self._last = 0  # the open range, when _open
        self._open = False
        self._compact_at = 64
        self.count = 0

    def add(self, i: int) -> None:
        self.count += 1
        if self._open and i == self._last + 1:
            self._last = i
            return
        self._close()
        self._first = self._last = i
        self._open = True

    def add_range(self, first: int, last: int) -> None:
        self.count += last - first + 1
        if self._open and first == self._last + 1:
            self._last = last
            return
        self._close()
        self._first, self._last = first, last
        self._open = True

    def update(self, other: Ranges) -> None:
        for first, last in other.ranges():
            self.add_range(first, last)

    def _close(self) -> None:
        if not self._open:
            return
        self._closed.append((self._first, self._last))
        self._open = False
        if len(self._closed) >= self._compact_at:
            self._closed = join_ranges(self._closed)
            self._compact_at = max(64, 2 * len(self._closed))

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges, sorted, adjacent ones joined."""
        spans = list(self._closed)
        if self._open:
            spans.append((self._first, self._last))
        return join_ranges(spans)

    def __len__(self) -> int:
        """How many ranges it holds now (rows it would write, at most)."""
        return len(self._closed) + self._open


def join_ranges(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[(5, 7), (1, 3), (4, 4)]`` → ``[(1, 7)]``: sorted, adjacent ranges joined;
    overlapping ranges (items counted twice) stay apart."""
    if not spans:
        return []
    spans.sort()
    out = []
    first, last = spans[0]
    for a, b in spans[1:]:
        if a == last + 1:
            last = b
        else:
            out.append((first, last))
            first, last = a, b
    out.append((first, last))
    return out


class Batch:
    """Item outcomes, root states and dead letters waiting to be written (see the
    module docstring); :meth:`update` merges another batch into this one."""

    __slots__ = ("latest", "letters", "outcomes", "ranges", "roots")

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, str], Ranges] = {}
        self.latest: dict[tuple[str, str], float] = {}  # time of each range set's last item
        self.roots: dict[str, Ranges] = {}
        self.outcomes: list[OutcomeRow] = []
        self.letters: list[DeadLetterRow] = []

    @property
    def rows(self) -> int:
        """About how many rows writing it takes: what bounds its memory."""
        ranges = sum(len(r) for r in self.ranges.values())
        roots = sum(len(r) for r in self.roots.values())
        return ranges + roots + len(self.outcomes) + len(self.letters)

    def __bool__(self) -> bool:
        return bool(self.ranges or self.roots or self.outcomes or self.letters)

    def add_done(self, stage: str, keys: Sequence[Any], at: float) -> None:
        """``keys`` finished at ``stage`` without error, the last at ``at``."""
        ranges: Ranges | None = None
        for key in keys:
            i = source_position(key)
            if i is None:
                self.outcomes.append((stage, key, "done", None, None, None, at))
                continue
            if ranges is None:
                ranges = self._ranges(stage, "done", at)
            ranges.add(i)

    def add_outcome(self, row: OutcomeRow) -> None:
        stage, key, outcome, _, error, _, at = row
        i = source_position(key)
        if outcome in ("done", "cached") and error is None and i is not None:
            self._ranges(stage, outcome, at).add(i)
        else:
            self.outcomes.append(row)

    def add_roots(self, roots: Iterable[int], state: str) -> None:
        ranges = self.roots.get(state)
        if ranges is None:
            ranges = self.roots[state] = Ranges()
        for root in roots:
            ranges.add(root)

    def add_letter(self, row: DeadLetterRow) -> None:
        self.letters.append(row)

    def update(self, other: Batch) -> None:
        """Add everything ``other`` holds to this batch."""
        for (stage, outcome), ranges in other.ranges.items():
            self._ranges(stage, outcome, other.latest[stage, outcome]).update(ranges)
        for state, ranges in other.roots.items():
            mine = self.roots.get(state)
            if mine is None:
                self.roots[state] = ranges
            else:
                mine.update(ranges)
        self.outcomes.extend(other.outcomes)
        self.letters.extend(other.letters)

    def _ranges(self, stage: str, outcome: str, at: float) -> Ranges:
        key = (stage, outcome)
        ranges = self.ranges.get(key)
        if ranges is None:
            ranges = self.ranges[key] = Ranges()
            self.latest[key] = at
        elif at > self.latest[key]:
            self.latest[key] = at
        return ranges

    def sql_rows(self, run_id: str) -> tuple[list[tuple[Any, ...]], ...]:
        """The rows of each table: item_ranges, item_outcomes, roots, dead_letters."""
        range_rows = [
            (run_id, stage, first, last, outcome, self.latest[stage, outcome])
            for (stage, outcome), ranges in self.ranges.items()
            for first, last in ranges.ranges()
        ]
        outcome_rows = [
            (run_id, stage, encode_key(key), outcome, attempt, error, tb, at)
            for stage, key, outcome, attempt, error, tb, at in self.outcomes
        ]
        root_rows = [
            (run_id, first, last, state)
            for state, ranges in self.roots.items()
            for first, last in ranges.ranges()
        ]
        letter_rows = [
            (
                run_id, stage, encode_key(key), _pickle_or_none(value), reprlib.repr(value),
                type(error).__name__, str(error), tb, at,
            )
            for stage, key, value, error, tb, at in self.letters
        ]  # fmt: skip
        return range_rows, outcome_rows, root_rows, letter_rows


def _pickle_or_none(value: Any) -> bytes | None:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:  # any object may refuse pickling, in any way
        return None
