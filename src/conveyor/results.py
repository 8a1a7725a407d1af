"""Results as files and tables: JSON lines and Parquet written as they stream, and a
finished run's results as a pandas DataFrame or an Arrow table.

    with cv.ResultsWriter("out.parquet") as out:      # or out.jsonl: picked by the name
        for result in pipe.stream(source):
            out.write(result)
    cv.write_results(pipe.stream(source), "out.jsonl")  # the same, in one call
    pipe.run(source).to_pandas()                        # or .to_arrow()

Memory stays bounded however many results pass: JSON lines are written one by one,
Parquet in row groups of ``batch_rows`` results.

JSON lines hold every JSON value, and these besides, so that they read back to what
was written: a NumPy array as (nested) lists (``numpy.asarray`` gives it back), a
NumPy scalar as its number, a ``datetime``, ``date`` or ``time`` as ISO 8601 text
(``datetime.fromisoformat``), ``bytes`` as base64 text (``base64.b64decode``). Any
other value is an :class:`~conveyor.OutputError` naming its type and the fix.

Parquet (and Arrow) need pyarrow (``pip install 'conveyor[files]'``), pandas needs
pandas; both are imported only when asked for. A result that is a dict is a row of
its keys; any other result is a row of one column, ``result``. Every row of one file
shares the first row group's schema.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from conveyor.errors import OutputError

__all__ = ["ResultsWriter", "json_default", "to_arrow", "to_pandas", "write_results"]

PARQUET_SUFFIXES = (".parquet", ".pq")
BATCH_ROWS = 4096
EXTRA = "install it with: pip install 'conveyor[files]' (or pip install pyarrow)"


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default=`` for results: NumPy arrays and scalars, dates and
    times, bytes (see the module docstring); anything else is an OutputError."""
    kind = type(value)
    if kind.__module__ == "numpy" and hasattr(value, "tolist"):
        if getattr(value, "dtype", None) is not None and value.dtype.kind in "OV":
            pass  # object or structured arrays hold anything: not one number per cell
        else:
            return value.tolist()  # arrays to lists, scalars to Python numbers
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise OutputError(
        f"a result holds a value of type {kind.__module__}.{kind.__qualname__} "
        f"({_short(value)}), which JSON lines cannot hold; convert it in the pipeline's "
        "last stage (to a list, a dict, a str or a number), or write Parquet "
        "(a path ending in .parquet)"
    )


class ResultsWriter:
    """Write results to ``path`` one by one, as JSON lines or, for a name ending in
    ``.parquet`` (or ``format="parquet"``), as Parquet in row groups of ``batch_rows``
    results. A context manager; :meth:`close` writes what is buffered."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self.path = Path(path)
        if format is None:
            format = "parquet" if self.path.suffix.lower() in PARQUET_SUFFIXES else "jsonl"
        if format not in ("jsonl", "parquet"):
            raise OutputError(f"results format {format!r}: give 'jsonl' or 'parquet'")
        if not isinstance(batch_rows, int) or batch_rows < 1:
            raise OutputError(f"batch_rows={batch_rows!r}; give a whole number of at least 1")
        self.format = format
        self.count = 0
        self._batch_rows = batch_rows
        self._rows: list[dict[str, Any]] = []
        self._parquet: Any = None  # pyarrow.parquet.ParquetWriter once the first rows go
        self._columns: bool | None = None  # results are dicts (True) or values (False)
        self._text: TextIO | None = None
        self._encoder = json.JSONEncoder(default=json_default)
        if format == "parquet":
            self._pa = _pyarrow("Parquet output")
            self.path.open("wb").close()  # an unwritable path fails now, not at the end
        else:
            self._text = self.path.open("w", encoding="utf-8")

    def write(self, result: Any) -> None:
        """Write one result (Parquet: buffer it; a full row group is written)."""
        if self._text is not None:
            self._text.write(self._encoder.encode(result) + "\n")
        else:
            self._rows.append(self._row(result))
            self.count += 1
            if len(self._rows) >= self._batch_rows:
                self._write_rows()
            return
        self.count += 1

    def flush(self) -> None:
        """Write out what is buffered (for Parquet, as a row group of its own: call it
        at the end of a run, not per result)."""
        if self._text is not None:
            self._text.flush()
        elif self._rows:
            self._write_rows()

    def close(self) -> None:
        if self._text is not None:
            text, self._text = self._text, None
            text.close()
            return
        try:
            if self._rows or self._parquet is None:
                self._write_rows()
        finally:
            if self._parquet is not None:
                writer, self._parquet = self._parquet, None
                writer.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _row(self, result: Any) -> dict[str, Any]:
        is_dict = isinstance(result, dict)
        if self._columns is None:
            self._columns = is_dict
        elif is_dict != self._columns:
            first = "dicts (one column per key)" if self._columns else "values (one column)"
            raise OutputError(
                f"result {self.count} is {'a dict' if is_dict else type(result).__name__} but "
                f"the results before it were {first}; one Parquet file holds one shape: "
                "make the last stage return the same shape for every item"
            )
        row = result if is_dict else {"result": result}
        if any(getattr(v, "ndim", 0) > 1 for v in row.values()):  # Arrow takes 1-D arrays
            row = {k: v.tolist() if getattr(v, "ndim", 0) > 1 else v for k, v in row.items()}
        return row

    def _write_rows(self) -> None:
        pa = self._pa
        schema = None if self._parquet is None else self._parquet.schema
        rows, self._rows = self._rows, []  # reported, not retried, if they do not fit
        try:
            table = pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            span = f"results {self.count - len(rows)}-{self.count - 1}"
            if schema is None:
                raise OutputError(
                    f"{span} cannot be written as Parquet: {exc}; make the last stage return "
                    "numbers, text, bytes, dates, lists or dicts of them"
                ) from None
            raise OutputError(
                f"{span} do not fit the Parquet schema {_schema(schema)}: {exc}; every "
                "result must have the columns and types of the first ones"
            ) from None
        if schema is not None and _extra_keys(rows, schema):
            raise OutputError(
                f"results {self.count - len(rows)}-{self.count - 1} have keys "
                f"{sorted(_extra_keys(rows, schema))} that the first results lacked "
                f"(schema {_schema(schema)}); every result must have the same keys"
            )
        if self._parquet is None:
            self._parquet = _pyarrow_parquet().ParquetWriter(str(self.path), table.schema)
        self._parquet.write_table(table)


def write_results(
    results: Iterable[Any],
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    batch_rows: int = BATCH_ROWS,
) -> int:
    """Write every result of ``results`` (a run being iterated, a list...) to ``path``
    as they come (see :class:`ResultsWriter`); return how many were written."""
    with ResultsWriter(path, format=format, batch_rows=batch_rows) as out:
        for result in results:
            out.write(result)
    return out.count


def to_arrow(results: list[Any]) -> Any:
    """The results as a ``pyarrow.Table``: dicts give a column per key, other results
    one column, ``result``."""
    pa = _pyarrow("run.to_arrow()")
    if results and all(isinstance(r, dict) for r in results):
        return pa.Table.from_pylist(results)
    return pa.table({"result": pa.array(results)})


def to_pandas(results: list[Any]) -> Any:
    """The results as a ``pandas.DataFrame``: dicts give a column per key, other
    results one column, ``result``."""
    try:
        import pandas
    except ImportError:
        raise OutputError(
            "run.to_pandas() needs pandas; install it with: pip install pandas"
        ) from None
    if results and all(isinstance(r, dict) for r in results):
        return pandas.DataFrame.from_records(results)
    return pandas.DataFrame({"result": results})


def _pyarrow(what: str) -> Any:
    try:
        import pyarrow
    except ImportError:
        raise OutputError(f"{what} needs pyarrow; {EXTRA}") from None
    return pyarrow


def _pyarrow_parquet() -> Any:
    import pyarrow.parquet

    return pyarrow.parquet


def _extra_keys(rows: list[dict[str, Any]], schema: Any) -> set[str]:
    names = set(schema.names)
    return {k for row in rows for k in row if k not in names}


def _schema(schema: Any) -> str:
    return "{" + ", ".join(f"{f.name}: {f.type}" for f in schema) + "}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
