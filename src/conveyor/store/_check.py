"""``conveyor store check``: is the run store whole, and what can be mended.

Three looks, each of which finds something the others cannot:

- **SQLite's integrity check** (``PRAGMA integrity_check``): every page, every
  b-tree, and every index against its table (a row missing from an index, an index
  entry whose row is gone, a count that differs).
- **References** (``PRAGMA foreign_key_check``): rows of a run whose ``runs`` row is
  gone, what a lost or overwritten page of the ``runs`` table leaves behind.
- **Ledgers**: every finished run's source items, done + filtered + dead-lettered +
  pending, against the items it read: rows lost without a trace in SQLite's
  structures still show up as a run that no longer balances.

An index holds nothing that its table does not, so a damaged index is rebuilt from
its table (``REINDEX``) and checked again. Damaged table pages, lost rows and
unbalanced runs cannot be mended from what the store holds: the report names them.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from pathlib import Path

from conveyor.errors import StoreError
from conveyor.store import _db
from conveyor.store._records import Ledger

_TERMINAL = ("succeeded", "failed", "cancelled")
_NAMED_INDEX = re.compile(r"\bindex (\S+)")
_TREE = re.compile(r"^Tree (\d+) page")


@dataclasses.dataclass(frozen=True)
class StoreCheck:
    """What ``RunStore.check`` found, after any repair.

    ``damage``: what SQLite's integrity check still finds (one line each);
    ``repaired``: the indexes rebuilt, each with what was wrong with it;
    ``orphans``: ``(table, rows)`` of rows whose run is not in the store;
    ``unbalanced``: the ledgers of finished runs that do not balance;
    ``runs``: the runs the store holds.
    """

    path: Path
    damage: tuple[str, ...]
    repaired: tuple[str, ...]
    orphans: tuple[tuple[str, int], ...]
    unbalanced: tuple[Ledger, ...]
    runs: int

    @property
    def ok(self) -> bool:
        """Nothing is wrong now (repairs made, if any, are in ``repaired``)."""
        return not (self.damage or self.orphans or self.unbalanced)

    @property
    def repairable(self) -> bool:
        """Every remaining problem is a damaged index, which a repair rebuilds."""
        return (
            bool(self.damage)
            and not (self.orphans or self.unbalanced)
            and all(_index_named(line) is not None for line in self.damage)
        )

    def lines(self, limit: int = 20) -> list[str]:
        """The report, one finding per line (at most ``limit`` of SQLite's lines)."""
        out = [f"{self.path}: {self.runs} runs"]
        out += [f"repaired: {line}" for line in self.repaired]
        out += [f"damaged: {line}" for line in self.damage[:limit]]
        if len(self.damage) > limit:
            out.append(f"damaged: ... and {len(self.damage) - limit} more problems")
        out += [
            f"lost: {rows} row{'s' if rows != 1 else ''} of {table} belong to no run in the "
            "store (the run's row was lost)"
            for table, rows in self.orphans
        ]
        out += [f"unbalanced: run {ledger.run_id}: {ledger}" for ledger in self.unbalanced]
        if self.ok:
            out.append("ok: the store is sound" + (" after the repairs" if self.repaired else ""))
        return out


def check(conn: sqlite3.Connection, path: Path, *, repair: bool) -> StoreCheck:
    """Check the store on ``conn``; with ``repair``, rebuild the damaged indexes."""
    found = _db.damage(conn, path, full=True)
    repaired: list[str] = []
    if found and repair:
        indexes = _indexes_of(conn, found)
        for name in sorted(set(indexes.values())):
            try:
                _reindex(conn, path, name)
            except StoreError:
                continue  # the table under it is damaged too: reported below
        after = _db.damage(conn, path, full=True)
        mended: dict[str, list[str]] = {}
        for line in found:
            if line in indexes and line not in after:
                mended.setdefault(indexes[line], []).append(line)
        repaired = [
            f"index {name} rebuilt from its table ({_summary(lines)})"
            for name, lines in sorted(mended.items())
        ]
        found = after
    return StoreCheck(
        path=path,
        damage=tuple(found),
        repaired=tuple(repaired),
        orphans=_orphans(conn, path, found),
        unbalanced=_unbalanced(conn, path, found),
        runs=_count_runs(conn, path),
    )


def _summary(lines: list[str]) -> str:
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} problems, e.g. {lines[0]}"


def _reindex(conn: sqlite3.Connection, path: Path, name: str) -> None:
    quoted = '"' + name.replace('"', '""') + '"'
    _db.write(conn, lambda c: c.execute(f"REINDEX {quoted}"), path=path)


def _index_named(line: str) -> str | None:
    match = _NAMED_INDEX.search(line)
    return match.group(1) if match else None


def _indexes_of(conn: sqlite3.Connection, found: list[str]) -> dict[str, str]:
    """For each problem in an index, the index's name (``Tree N`` lines name the
    b-tree by its root page)."""
    try:
        rows = conn.execute(
            "SELECT name, rootpage FROM sqlite_master WHERE type = 'index'"
        ).fetchall()
    except sqlite3.Error:
        return {}
    by_root = {int(root): name for name, root in rows if root}
    names = set(by_root.values())
    indexes: dict[str, str] = {}
    for line in found:
        named = _index_named(line)
        tree = _TREE.match(line)
        if named is not None and named in names:
            indexes[line] = named
        elif tree and int(tree.group(1)) in by_root:
            indexes[line] = by_root[int(tree.group(1))]
    return indexes


def _orphans(
    conn: sqlite3.Connection, path: Path, damage: list[str]
) -> tuple[tuple[str, int], ...]:
    try:
        rows = _db.read(conn, lambda c: c.execute("PRAGMA foreign_key_check").fetchall(), path=path)
    except StoreError as exc:
        damage.append(str(exc.__cause__ or exc))
        return ()
    counts: dict[str, int] = {}
    for table, *_ in rows:
        counts[table] = counts.get(table, 0) + 1
    return tuple(sorted(counts.items()))


def _unbalanced(conn: sqlite3.Connection, path: Path, damage: list[str]) -> tuple[Ledger, ...]:
    """Ledgers of finished runs that do not balance. A run that recorded neither its
    items read nor any source item (written through the API without the recorder)
    kept no ledger, and is not counted."""
    sql = (
        "SELECT r.id, r.items_read, "
        + ", ".join(
            f"coalesce(sum(CASE WHEN o.state = '{s}' THEN o.last - o.first + 1 END), 0)"
            for s in ("done", "filtered", "dead_lettered", "pending")
        )
        + ", count(o.run_id) FROM runs r LEFT JOIN roots o ON o.run_id = r.id "
        f"WHERE r.state IN {_TERMINAL!r} GROUP BY r.id ORDER BY r.created_at"
    )
    try:
        rows = _db.read(conn, lambda c: c.execute(sql).fetchall(), path=path)
    except StoreError as exc:
        damage.append(str(exc.__cause__ or exc))
        return ()
    ledgers = []
    for run_id, read, done, filtered, dead, pending, ranges in rows:
        if read is None and not ranges:
            continue
        ledger = Ledger(run_id, read, done, filtered, dead, pending)
        if not ledger.balanced:
            ledgers.append(ledger)
    return tuple(ledgers)


def _count_runs(conn: sqlite3.Connection, path: Path) -> int:
    try:
        return int(
            _db.read(
                conn, lambda c: c.execute("SELECT count(*) FROM runs").fetchone()[0], path=path
            )
        )
    except StoreError:
        return 0
