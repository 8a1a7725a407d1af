"""Where several items become one: joins by key, and streaming folds.

**Joins.** A stage with ``join=True`` and several predecessors sees, per call, one
item's results from all of them: ``{predecessor name: result}``. Each predecessor
delivers into its own :class:`JoinPort`; a result waits (is *parked*) until every
predecessor has delivered one for the same key, and the joined item then enters
the stage's queue. Each port is bounded like a queue (its parked results count
against it), so a fast branch cannot run ahead without limit, and the slow one
always has room to complete what waits. A result whose partners can never come (a
branch filtered or dead-lettered that item) must not wait forever: once every live
descendant of a source item is parked, nothing else of it can arrive, so its
entries are released as they are, with the missing names absent.

**Folds.** A ``fold`` stage's tasks each fold a chunk of items from ``initial``
(:mod:`conveyor.executors.calls`); the partial results are merged here with the
stage's ``combine`` as they come back, so only the state is held. When no item can
reach the stage any more, the state goes downstream as one item, under the key of
the first item folded, like a collect's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.errors import StageError

if TYPE_CHECKING:
    from conveyor.core.flow import StageQueue, StageState
    from conveyor.core.ledger import RootLedger

Key = tuple[Any, ...]
Item = tuple[Key, Any]


def merge_points(
    stages: Sequence[StageState], ledger: RootLedger
) -> tuple[list[Join], list[StageState]]:
    """Give each join stage its ports (its predecessors deliver into them, not into its
    queue) and each fold stage its state; return the joins and the fold stages."""
    joins: list[Join] = []
    for s in stages:
        if s.stage.join:
            s.join = Join(s, [p.name for p in s.predecessors], ledger)
            joins.append(s.join)
            for p in s.predecessors:
                port = s.join.ports[p.name]
                p.targets = [port if t is s.queue else t for t in p.targets]  # type: ignore[misc]
        if s.kind == "fold":
            s.fold = Fold(s, ledger)
    return joins, [s for s in stages if s.fold is not None]


class Join:
    """The parked results of one join stage, and a port per predecessor."""

    def __init__(self, stage: StageState, predecessors: Sequence[str], ledger: RootLedger) -> None:
        self.stage = stage
        self.queue: StageQueue = stage.queue
        self.ledger = ledger
        self.width = len(predecessors)
        self.parked: dict[Key, dict[str, Any]] = {}
        self.ports = {name: JoinPort(self, name) for name in predecessors}

    def deliver(self, port: JoinPort, items: Sequence[Item]) -> None:
        parked = self.parked
        ready: list[Item] = []
        name = port.name
        for key, value in items:
            entry = parked.get(key)
            if entry is None:
                parked[key] = {name: value}
                port.parked += 1
                continue
            entry[name] = value
            port.parked += 1
            if len(entry) == self.width:
                del parked[key]
                self._unpark(entry)
                self.ledger.add(key[0], 1 - self.width)  # n items became one
                ready.append((key, entry))
        if ready:
            self.queue.put(ready)

    def _unpark(self, entry: dict[str, Any]) -> None:
        for name in entry:
            self.ports[name].parked -= 1

    def release_orphans(self, parked_by_root: dict[int, int]) -> bool:
        """Send on, incomplete, the entries of roots with nothing live but parked items
        (``parked_by_root`` counts them over every join of the run)."""
        live = self.ledger.live
        stale = {r for r, n in parked_by_root.items() if live.get(r) == n}
        if not stale:
            return False
        ready: list[Item] = []
        for key in [k for k in self.parked if k[0] in stale]:
            entry = self.parked.pop(key)
            self._unpark(entry)
            if len(entry) > 1:
                self.ledger.add(key[0], 1 - len(entry))
            ready.append((key, entry))
        if not ready:
            return False
        self.queue.put(ready)
        return True


def parked_by_root(joins: Sequence[Join]) -> dict[int, int]:
    """Parked results per source item, over every join."""
    counts: dict[int, int] = {}
    for j in joins:
        for key, entry in j.parked.items():
            counts[key[0]] = counts.get(key[0], 0) + len(entry)
    return counts


class JoinPort:
    """One predecessor's way into a join: a queue as the scheduler sees it (room,
    reservations), whose items are parked until their partners arrive."""

    def __init__(self, join: Join, name: str) -> None:
        self.join = join
        self.name = name
        self.reserved = 0
        self.parked = 0
        self.bound = join.queue.bound

    @property
    def items(self) -> Any:
        return self.join.queue.items

    def room(self) -> int:
        q = self.join.queue
        return q.room() + q.reserved - self.reserved - self.parked

    def put(self, items: Sequence[Item]) -> None:
        self.join.deliver(self, items)


class Fold:
    """The state of one fold stage: the merged partial results so far."""

    def __init__(self, stage: StageState, ledger: RootLedger) -> None:
        self.stage = stage
        self.ledger = ledger
        self.key: Key | None = None
        self.value: Any = None

    @property
    def holding(self) -> bool:
        return self.key is not None

    def add(self, partials: Sequence[Item]) -> None:
        """Merge the partial results of folded chunks (each already one item under its
        chunk's first key, in the ledger)."""
        combine = self.stage.stage.combine
        assert combine is not None
        for key, partial in partials:
            if self.key is None:
                self.key, self.value = key, partial
                continue
            try:
                self.value = combine(self.value, partial)
            except Exception as exc:
                raise StageError(
                    f"stage {self.stage.name!r}: combine raised {type(exc).__name__} merging "
                    f"two partial folds: {exc}",
                    stage=self.stage.name,
                    key=key,
                ) from exc
            self.ledger.merge([[self.key, key]])

    def take(self) -> list[Item]:
        """The folded state as one item (the fold is over)."""
        assert self.key is not None
        item = (self.key, self.value)
        self.key, self.value = None, None
        return [item]
