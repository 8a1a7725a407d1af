"""Sources for files and tables: text lines, JSON lines, CSV, Parquet and Arrow.

Each function returns a :class:`FileSource`, an iterable to give a pipeline as its
source; iterating it again reads the files again from the start::

    from conveyor import sources

    pipe.run(sources.jsonl("events/*.jsonl.gz"))        # one item per JSON line
    pipe.run(sources.csv("s3://bucket/rows.csv"))        # one dict per row
    pipe.run(sources.parquet("data.parquet", columns=["id", "text"]))
    pipe.run(sources.read("data.csv").skip(10_000))      # format from the name; resume

Paths are local paths, globs (expanded when the source is made, matches in sorted
order), URLs (``memory://``, ``s3://``, ``gcs://``... through fsspec), or a list of
them read in order. Compressed files (``.gz``, ``.bz2``, ``.xz``, ``.zst``) are
decompressed as they are read. Local files need only the standard library;
URLs, ``.zst``, Parquet and Arrow need the files extra
(``pip install 'conveyor[files]'``), imported when a source needs it.

A file that is missing, a glob that matches nothing, a malformed line (naming its
file and line), a package that is not installed: each is a
:class:`~conveyor.errors.SourceError`. With ``on_error="skip"`` a text source
leaves malformed lines out and counts them in its ``skipped``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from conveyor.errors import SourceError
from conveyor.sources._base import FileSource
from conveyor.sources._files import Paths, resolve, strip_compression
from conveyor.sources._tables import ArrowSource, ParquetSource
from conveyor.sources._text import CsvSource, JsonLinesSource, LinesSource

__all__ = [
    "FORMATS",
    "FileSource",
    "SourceError",
    "arrow",
    "csv",
    "format_of",
    "jsonl",
    "lines",
    "parquet",
    "read",
]

FORMATS = ("lines", "jsonl", "csv", "parquet", "arrow")

_ENDINGS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",  # csv with delimiter="\t"
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".arrows": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}


def lines(
    paths: Paths,
    *,
    start: int = 0,
    encoding: str = "utf-8",
    on_error: str = "raise",
    compression: str | None = "infer",
    storage_options: dict[str, Any] | None = None,
) -> FileSource:
    """One item per line of text, its line ending (``\\n`` or ``\\r\\n``) stripped;
    empty lines are items too.

    ``start`` skips that many items (see :meth:`FileSource.skip`); ``encoding`` must
    be ASCII-compatible (UTF-8, Latin-1, cp1252...); ``on_error="skip"`` leaves out
    lines that do not decode. ``compression`` is inferred from the name (``"infer"``),
    or one of ``"gzip"``, ``"bz2"``, ``"xz"``, ``"lzma"``, ``"zstd"`` or None.
    ``storage_options`` go to fsspec for URLs (credentials, endpoints).
    """
    return LinesSource(
        paths,
        start=start,
        encoding=encoding,
        on_error=on_error,
        compression=compression,
        storage_options=storage_options,
    )


def jsonl(
    paths: Paths,
    *,
    start: int = 0,
    encoding: str = "utf-8",
    on_error: str = "raise",
    compression: str | None = "infer",
    storage_options: dict[str, Any] | None = None,
) -> FileSource:
    """One item per line of JSON (JSON lines, ndjson), parsed; blank lines are skipped.

    A line that is not valid JSON raises a SourceError naming its file and line, or
    with ``on_error="skip"`` is left out and counted. With the default
    ``on_error="raise"``, the ``start`` lines skipped are not parsed. The other
    options are :func:`lines`'.
    """
    return JsonLinesSource(
        paths,
        start=start,
        encoding=encoding,
        on_error=on_error,
        compression=compression,
        storage_options=storage_options,
    )


def csv(
    paths: Paths,
    *,
    delimiter: str = ",",
    fieldnames: Sequence[str] | None = None,
    start: int = 0,
    encoding: str = "utf-8",
    on_error: str = "raise",
    compression: str | None = "infer",
    storage_options: dict[str, Any] | None = None,
    **fmtparams: Any,
) -> FileSource:
    """One dict per row of CSV, read with the standard ``csv`` module: column name to
    value, values as strings.

    Each file's first row is its header, unless ``fieldnames`` is given (then every
    row is data). A row with more or fewer fields than the header, or that the csv
    module rejects, raises a SourceError naming its file and line (``on_error="skip"``
    leaves it out and counts it). Blank lines are skipped. ``fmtparams`` are the
    csv module's (``quotechar``, ``escapechar``, ``skipinitialspace``, ``strict``...);
    the other options are :func:`lines`'.
    """
    return CsvSource(
        paths,
        delimiter=delimiter,
        fieldnames=fieldnames,
        start=start,
        encoding=encoding,
        on_error=on_error,
        compression=compression,
        storage_options=storage_options,
        **fmtparams,
    )


def parquet(
    paths: Paths,
    *,
    columns: Sequence[str] | None = None,
    batch_size: int = 1024,
    rows: bool = True,
    start: int = 0,
    compression: str | None = "infer",
    storage_options: dict[str, Any] | None = None,
) -> FileSource:
    """The rows of Parquet files as dicts, or (``rows=False``) their
    ``pyarrow.RecordBatch`` es of ``batch_size`` rows (each file's last may be shorter).

    ``columns`` reads only those columns. ``start`` counts items: rows, or batches
    with ``rows=False``; whole row groups before it are not read. Needs pyarrow.
    """
    return ParquetSource(
        paths,
        columns=columns,
        batch_size=batch_size,
        rows=rows,
        start=start,
        compression=compression,
        storage_options=storage_options,
    )


def arrow(
    paths: Paths,
    *,
    columns: Sequence[str] | None = None,
    batch_size: int = 1024,
    rows: bool = True,
    start: int = 0,
    compression: str | None = "infer",
    storage_options: dict[str, Any] | None = None,
) -> FileSource:
    """The rows of Arrow IPC files (the file format, also called Feather v2, or the
    stream format) as dicts, or (``rows=False``) record batches of ``batch_size`` rows.

    The options are :func:`parquet`'s. Local files are memory-mapped. Needs pyarrow.
    """
    return ArrowSource(
        paths,
        columns=columns,
        batch_size=batch_size,
        rows=rows,
        start=start,
        compression=compression,
        storage_options=storage_options,
    )


_MAKERS: dict[str, Any] = {
    "lines": LinesSource,
    "jsonl": JsonLinesSource,
    "csv": CsvSource,
    "parquet": ParquetSource,
    "arrow": ArrowSource,
}


_FUNCTIONS: dict[str, Any] = {
    "lines": lines,
    "jsonl": jsonl,
    "csv": csv,
    "parquet": parquet,
    "arrow": arrow,
}


def format_of(name: str) -> str:
    """The format a file's name says, a compression ending aside: ``"jsonl"`` for
    ``.jsonl`` and ``.ndjson``, ``"csv"`` for ``.csv`` and ``.tsv``, ``"parquet"`` for
    ``.parquet`` and ``.pq``, ``"arrow"`` for ``.arrow``, ``.arrows``, ``.feather``
    and ``.ipc``; ``"lines"`` for any other."""
    kind = _ending(name)
    return "csv" if kind == "tsv" else kind


def _ending(name: str) -> str:
    base = strip_compression(name.rstrip("/"))
    dot = base.rfind(".")
    ending = base[dot:].lower() if dot > base.rfind("/") else ""
    return _ENDINGS.get(ending, "lines")


def read(paths: Paths, format: str | None = None, **options: Any) -> FileSource:
    """A source for ``paths`` in ``format`` (one of :data:`FORMATS`), or, with
    ``format=None``, in the format the files' names say (:func:`format_of`; a
    ``.tsv`` file is read as CSV with a tab delimiter). ``options`` go to the
    format's function. Files whose names say different formats are an error: give
    ``format``, or read them apart."""
    if format is not None and format not in FORMATS:
        raise SourceError(f"format={format!r} is not one of {', '.join(FORMATS)}")
    storage_options = options.pop("storage_options", None)
    files = resolve(
        paths, compression=options.get("compression", "infer"), storage_options=storage_options
    )
    if format is None:
        kinds = {f.name: _ending(f.name) for f in files}
        found = sorted(set(kinds.values()))
        if len(found) > 1:
            shown = ", ".join(f"{name}: {kind}" for name, kind in list(kinds.items())[:6])
            raise SourceError(
                f"the files are of several formats ({shown}); read each format with its "
                f"own source, or pass format= (one of {', '.join(FORMATS)})",
                path=str(paths),
            )
        format = found[0]
        if format == "tsv":
            format = "csv"
            options.setdefault("delimiter", "\t")
    try:
        inspect.signature(_FUNCTIONS[format]).bind(paths, **options)
    except TypeError as exc:  # an option the format does not take
        raise SourceError(f"sources.{format}: {exc}") from None
    return _MAKERS[format](paths, files=files, storage_options=storage_options, **options)
