"""Columnar files through pyarrow (the files extra): Parquet, and Arrow IPC (the file
format, also called Feather v2, and the stream format).

Each file is read a record batch at a time; batches are cut to exactly
``batch_size`` rows (the last of each file may be shorter), so that an item offset
means the same rows on every reading. With ``rows=True`` the items are the rows, as
dicts; with ``rows=False`` they are the ``pyarrow.RecordBatch`` es.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from conveyor.errors import SourceError
from conveyor.sources._base import FileSource
from conveyor.sources._files import EXTRA, File, Paths


def pyarrow(what: str) -> Any:
    """The pyarrow module, or a SourceError saying what to install."""
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise SourceError(f"conveyor.sources.{what} needs pyarrow: {EXTRA}") from None
    return pyarrow


class TableSource(FileSource):
    """Rows or record batches from columnar files."""

    def __init__(
        self,
        paths: Paths,
        *,
        columns: Sequence[str] | None = None,
        batch_size: int = 1024,
        rows: bool = True,
        **kwargs: Any,
    ) -> None:
        pyarrow(self.format)  # installed? Say so now, not at the first item
        if isinstance(columns, str):
            raise SourceError(f"columns={columns!r}: give a list of column names")
        self.columns = list(columns) if columns is not None else None
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SourceError(f"batch_size={batch_size!r}: give a number of rows, 1 or more")
        self.batch_size = batch_size
        self.rows = bool(rows)
        super().__init__(paths, **kwargs)
        for file in self.files:
            if file.compression is not None:
                raise SourceError(
                    f"{file.name} is {file.compression}-compressed as a whole, which "
                    f"{self.format} files cannot be read through (they compress their "
                    "columns themselves); decompress it, or pass compression=None if the "
                    "name misleads",
                    path=file.name,
                )

    @property
    def pa(self) -> Any:
        return pyarrow(self.format)

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.columns is not None:
            options["columns"] = self.columns
        if self.batch_size != 1024:
            options["batch_size"] = self.batch_size
        if not self.rows:
            options["rows"] = False
        return options

    def _items(self, start: int) -> Iterator[Any]:
        remaining = start  # items: rows, or batches
        size = self.batch_size
        for file in self.files:
            if remaining:  # how many items the file holds, from its metadata where it has one
                with self._open(file) as table:
                    rows = table.num_rows()
                items = rows if self.rows else -(-rows // size)
                if remaining >= items:
                    remaining -= items
                    continue
            offset = remaining if self.rows else remaining * size
            remaining = 0
            with self._open(file) as table:
                for batch in _rebatch(
                    self.pa, _guard(file, self.format, table.batches(offset)), size
                ):
                    if self.rows:
                        yield from batch.to_pylist()
                    else:
                        yield batch

    @contextlib.contextmanager
    def _open(self, file: File) -> Iterator[Any]:
        with contextlib.ExitStack() as stack:
            try:
                raw = file.open_raw()
                if not isinstance(raw, str):
                    stack.enter_context(raw)
                table = self._reader(file, raw, stack)
            except FileNotFoundError:
                raise file.gone() from None
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise SourceError(
                    f"{file.name} is not a readable {self.format} file: {exc}", path=file.name
                ) from exc
            self._check_columns(file, table.names)
            yield table

    def _reader(self, file: File, raw: Any, stack: contextlib.ExitStack) -> Any:
        raise NotImplementedError  # pragma: no cover

    def _check_columns(self, file: File, names: list[str]) -> None:
        for column in self.columns or ():
            if column not in names and column.split(".")[0] not in names:
                raise SourceError(
                    f"{file.name} has no column {column!r}; its columns: {', '.join(names)}",
                    path=file.name,
                )


def _rebatch(pa: Any, batches: Iterator[Any], size: int) -> Iterator[Any]:
    """``batches`` cut and joined into batches of exactly ``size`` rows, the last
    one shorter."""
    pending: list[Any] = []
    held = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - held, batch.num_rows)
            pending.append(batch.slice(0, take))
            held += take
            batch = batch.slice(take)
            if held == size:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, held = [], 0
    if held:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def _guard(file: File, format: str, batches: Iterator[Any]) -> Iterator[Any]:
    """``batches``, a failure to read one a SourceError naming the file."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise SourceError(
                f"{file.name} cannot be read as {format} past this point: {exc}; check "
                "that the file is whole",
                path=file.name,
            ) from exc
        yield batch


def _drop(batches: Iterator[Any], offset: int) -> Iterator[Any]:
    """``batches`` less their first ``offset`` rows."""
    for batch in batches:
        if offset >= batch.num_rows:
            offset -= batch.num_rows
            continue
        yield batch.slice(offset) if offset else batch
        offset = 0


class _ParquetTable:
    def __init__(self, pa: Any, pf: Any, columns: list[str] | None, batch_size: int) -> None:
        self.pf, self.columns, self.batch_size = pf, columns, batch_size
        self.names = list(pf.schema_arrow.names)

    def num_rows(self) -> int:
        return int(self.pf.metadata.num_rows)

    def batches(self, offset: int) -> Iterator[Any]:
        meta = self.pf.metadata
        first = 0
        while first < meta.num_row_groups and offset >= meta.row_group(first).num_rows:
            offset -= meta.row_group(first).num_rows
            first += 1
        return _drop(self._groups(first), offset)

    def _groups(self, first: int) -> Iterator[Any]:
        # One row group at a time: asked for several, pyarrow buffers all of them ahead
        # (a whole file's worth for a file read from its start).
        for group in range(first, self.pf.metadata.num_row_groups):
            yield from self.pf.iter_batches(
                batch_size=self.batch_size, row_groups=[group], columns=self.columns
            )


class ParquetSource(TableSource):
    format = "parquet"

    def _reader(self, file: File, raw: Any, stack: contextlib.ExitStack) -> Any:
        pf = stack.enter_context(self.pa.parquet.ParquetFile(raw))
        return _ParquetTable(self.pa, pf, self.columns, self.batch_size)


class _ArrowTable:
    def __init__(self, reader: Any, columns: list[str] | None, seekable: bool) -> None:
        self.reader, self.columns = reader, columns
        self.names = list(reader.schema.names)
        self.seekable = seekable  # the file format: batches by index

    def _all(self) -> Iterator[Any]:
        if self.seekable:
            for i in range(self.reader.num_record_batches):
                yield self.reader.get_batch(i)
        else:
            yield from self.reader

    def num_rows(self) -> int:
        return sum(b.num_rows for b in self._all())

    def batches(self, offset: int) -> Iterator[Any]:
        for batch in _drop(self._all(), offset):
            yield batch.select(self.columns) if self.columns is not None else batch


class ArrowSource(TableSource):
    format = "arrow"

    def _reader(self, file: File, raw: Any, stack: contextlib.ExitStack) -> Any:
        pa = self.pa
        source = stack.enter_context(pa.memory_map(raw, "r")) if isinstance(raw, str) else raw
        try:
            reader = pa.ipc.open_file(source)
            return _ArrowTable(reader, self.columns, seekable=True)
        except pa.ArrowInvalid:
            source.seek(0)  # not the file format: the stream format, read in order
            return _ArrowTable(pa.ipc.open_stream(source), self.columns, seekable=False)
