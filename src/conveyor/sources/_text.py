"""Line-based files: text lines, JSON lines, CSV rows.

Each file is read as bytes, one line at a time, and each line decoded on its own, so
that memory stays flat whatever the file's size and an error names its line. A
UTF-8 byte-order mark at the start of a file is dropped.
"""

from __future__ import annotations

import csv as csvlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from conveyor.errors import SourceError
from conveyor.sources._base import FileSource, check_on_error
from conveyor.sources._files import File, Paths, check_encoding

_SKIP_HINT = "pass on_error='skip' to leave such lines out"


class TextSource(FileSource):
    """A file source read line by line: ``encoding`` and ``on_error`` for all."""

    def __init__(
        self,
        paths: Paths,
        *,
        encoding: str = "utf-8",
        on_error: str = "raise",
        **kwargs: Any,
    ) -> None:
        check_encoding(encoding)
        self.encoding = encoding
        self.on_error = check_on_error(on_error)
        super().__init__(paths, **kwargs)

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.encoding != "utf-8":
            options["encoding"] = self.encoding
        if self.on_error != "raise":
            options["on_error"] = self.on_error
        return options

    def _raw_lines(self, file: File) -> Iterator[bytes]:
        """``file``'s lines as bytes, a failure to read or decompress it a SourceError."""
        try:
            fh = file.open_binary()
        except FileNotFoundError:
            raise file.gone() from None
        except OSError as exc:
            raise SourceError(f"cannot open {file.name!r}: {exc}", path=file.name) from exc
        n = 0
        with fh:
            try:
                for raw in fh:
                    n += 1
                    yield raw
            except Exception as exc:  # a damaged archive, a connection lost
                raise SourceError(
                    f"{file.name} cannot be read past line {n} ({type(exc).__name__}: "
                    f"{exc}); check that the file is whole"
                    + (f" and {file.compression}-compressed" if file.compression else ""),
                    path=file.name,
                    line=n + 1,
                ) from exc

    def _lines(self, file: File, *, keep_ends: bool = False) -> Iterator[tuple[int, str]]:
        """``(line number, text)`` for each line of ``file`` that decodes; line endings
        (``\\n``, ``\\r\\n``) stripped unless ``keep_ends``."""
        encoding = self.encoding
        for n, raw in enumerate(self._raw_lines(file), 1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                self._bad(
                    SourceError(
                        f"{file.name} line {n}: not valid {encoding} ({exc.reason} at byte "
                        f"{exc.start}); pass the file's encoding=, or {_SKIP_HINT}",
                        path=file.name,
                        line=n,
                    ),
                    self.on_error,
                )
                continue
            if n == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if not keep_ends and text.endswith("\n"):
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
            yield n, text


class LinesSource(TextSource):
    format = "lines"

    def _items(self, start: int) -> Iterator[str]:
        remaining = start
        for file in self.files:
            for _, text in self._lines(file):
                if remaining:
                    remaining -= 1
                    continue
                yield text


class JsonLinesSource(TextSource):
    format = "jsonl"

    def _items(self, start: int) -> Iterator[Any]:
        remaining = start
        quick = self.on_error == "raise"  # every non-blank line is an item: skip unparsed
        loads = json.loads
        for file in self.files:
            for n, text in self._lines(file):
                if not text.strip(" \t\r\n"):
                    continue  # blank lines (JSON whitespace only) are no items
                if remaining and quick:
                    remaining -= 1
                    continue
                try:
                    value = loads(text)
                except ValueError as exc:
                    where = (
                        f"{exc.msg} at column {exc.colno}"
                        if isinstance(exc, json.JSONDecodeError)
                        else str(exc)
                    )
                    self._bad(
                        SourceError(
                            f"{file.name} line {n}: not valid JSON ({where}); fix the line, "
                            f"or {_SKIP_HINT}",
                            path=file.name,
                            line=n,
                        ),
                        self.on_error,
                    )
                    continue
                if remaining:
                    remaining -= 1
                    continue
                yield value


class CsvSource(TextSource):
    format = "csv"

    def __init__(
        self,
        paths: Paths,
        *,
        delimiter: str = ",",
        fieldnames: Sequence[str] | None = None,
        start: int = 0,
        encoding: str = "utf-8",
        on_error: str = "raise",
        compression: str | None = "infer",
        storage_options: dict[str, Any] | None = None,
        files: tuple[File, ...] | None = None,
        **fmtparams: Any,
    ) -> None:
        self.delimiter = delimiter
        self.fieldnames = list(fieldnames) if fieldnames is not None else None
        self.fmtparams = fmtparams
        try:
            csvlib.reader([], delimiter=delimiter, **self.fmtparams)
        except (TypeError, csvlib.Error) as exc:
            raise SourceError(f"bad CSV options: {exc}") from None
        if self.fieldnames is not None:
            _check_header(self.fieldnames, "fieldnames=", None)
        super().__init__(
            paths,
            start=start,
            encoding=encoding,
            on_error=on_error,
            compression=compression,
            storage_options=storage_options,
            files=files,
        )

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.delimiter != ",":
            options["delimiter"] = self.delimiter
        if self.fieldnames is not None:
            options["fieldnames"] = self.fieldnames
        return {**options, **self.fmtparams, **super()._options()}

    def _items(self, start: int) -> Iterator[dict[str, str]]:
        remaining = start
        for file in self.files:
            for row in self._rows(file):
                if remaining:
                    remaining -= 1
                    continue
                yield row

    def _rows(self, file: File) -> Iterator[dict[str, str]]:
        last = 0  # the number of the last line handed to the csv reader

        def lines() -> Iterator[str]:
            nonlocal last
            for n, text in self._lines(file, keep_ends=True):
                last = n
                yield text

        reader = csvlib.reader(lines(), delimiter=self.delimiter, **self.fmtparams)
        header = self.fieldnames
        header_line = None
        while True:
            first = last + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csvlib.Error as exc:
                self._bad(
                    SourceError(
                        f"{file.name} line {first}: not valid CSV ({exc}); fix the row, "
                        f"or {_SKIP_HINT}",
                        path=file.name,
                        line=first,
                    ),
                    self.on_error,
                )
                continue
            if not row:
                continue  # a blank line
            if header is None:
                header, header_line = row, first
                _check_header(header, f"{file.name} line {first}: the header", file.name)
                continue
            if len(row) != len(header):
                where = f"the header (line {header_line})" if header_line else "fieldnames="
                self._bad(
                    SourceError(
                        f"{file.name} line {first}: {len(row)} fields where {where} has "
                        f"{len(header)}; fix the row, or {_SKIP_HINT}",
                        path=file.name,
                        line=first,
                    ),
                    self.on_error,
                )
                continue
            yield dict(zip(header, row, strict=True))


def _check_header(names: Sequence[str], what: str, path: str | None) -> None:
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise SourceError(f"{what}: column names are strings; got {name!r}", path=path)
        if name in seen:
            raise SourceError(
                f"{what} names column {name!r} twice; rename one, or pass fieldnames=",
                path=path,
            )
        seen.add(name)
