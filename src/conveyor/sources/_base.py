"""What every file source is: a re-iterable view of a fixed list of files, from an
item offset on, that counts the lines it skipped."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, ClassVar

from conveyor.errors import SourceError
from conveyor.sources._files import File, Paths, as_list, resolve

ON_ERROR = ("raise", "skip")
KEPT_ERRORS = 100  # the skipped lines' errors kept in ``errors``; ``skipped`` counts them all


class FileSource:
    """A source of items read from files: iterate it (again and again) for its items.

    Made by :func:`~conveyor.sources.lines`, :func:`~conveyor.sources.jsonl`,
    :func:`~conveyor.sources.csv`, :func:`~conveyor.sources.parquet`,
    :func:`~conveyor.sources.arrow` or :func:`~conveyor.sources.read`. The paths
    and globs are resolved when it is made (``files``); each iteration reads those
    files from the start, past the first ``start`` items.

    ``skipped`` counts the malformed lines or rows the latest iteration left out
    (``on_error="skip"``), and ``errors`` holds the first hundred of them as
    :class:`~conveyor.errors.SourceError`, each naming its file and line.
    """

    format: ClassVar[str] = ""  # the function that makes it: "lines", "csv", ...

    def __init__(
        self,
        paths: Paths,
        *,
        start: int = 0,
        compression: str | None = "infer",
        storage_options: dict[str, Any] | None = None,
        files: tuple[File, ...] | None = None,
    ) -> None:
        self.paths = as_list(paths)
        self.files: tuple[File, ...] = (
            files
            if files is not None
            else resolve(paths, compression=compression, storage_options=storage_options)
        )
        self.start = check_start(start)
        self.skipped = 0
        self.errors: list[SourceError] = []

    def skip(self, n: int) -> FileSource:
        """The same source starting ``n`` items further on (``start + n``): how a run
        resumes past the items an earlier run finished. The files are not listed again."""
        skipped = copy.copy(self)
        skipped.start = self.start + check_start(n, name="n")
        skipped.skipped, skipped.errors = 0, []
        return skipped

    def __iter__(self) -> Iterator[Any]:
        self.skipped, self.errors = 0, []
        return self._items(self.start)

    def _items(self, start: int) -> Iterator[Any]:  # pragma: no cover - every format has one
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        """The options that differ from their defaults, for the repr."""
        return {}

    def __repr__(self) -> str:
        paths: Any = self.paths[0] if len(self.paths) == 1 else self.paths
        parts = [repr(paths)]
        parts += [f"{k}={v!r}" for k, v in self._options().items()]
        if self.start:
            parts.append(f"start={self.start}")
        count = len(self.files)
        return (
            f"<conveyor.sources.{self.format}({', '.join(parts)}): "
            f"{count} file{'s' if count != 1 else ''}>"
        )

    def _bad(self, error: SourceError, on_error: str) -> None:
        """A malformed line or row: raise it, or count it and go on."""
        if on_error == "raise":
            raise error
        self.skipped += 1
        if len(self.errors) < KEPT_ERRORS:
            self.errors.append(error)


def check_start(start: Any, *, name: str = "start") -> int:
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise SourceError(f"{name}={start!r}: give a number of items, 0 or more")
    return start


def check_on_error(on_error: Any) -> str:
    if on_error not in ON_ERROR:
        raise SourceError(
            f"on_error={on_error!r}: give 'raise' (stop at the first malformed line) or "
            "'skip' (leave it out and count it in the source's `skipped`)"
        )
    return str(on_error)
