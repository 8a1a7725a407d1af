"""conveyor.sources: every format on the local filesystem and on memory://, globs,
compression, skip/start, the errors bad input gets, flat memory, real pipelines."""

from __future__ import annotations

import bz2
import csv as csvlib
import dataclasses
import gzip
import io
import json
import lzma
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor as cv
import stagefns as f
from conveyor import sources
from conveyor.errors import SourceError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
fsspec = pytest.importorskip("fsspec")
zstandard = pytest.importorskip("zstandard")

ROWS = [{"id": i, "name": f"n{i}", "count": i * 3 % 7} for i in range(50)]
STR_ROWS = [{k: str(v) for k, v in r.items()} for r in ROWS]


class Place:
    """Where test files go: a local folder, or a fresh root of fsspec's memory filesystem."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.root = str(tmp_path) if kind == "local" else f"memory://cv-{uuid.uuid4().hex}"

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write(self, name: str, data: bytes) -> str:
        path = self.path(name)
        if self.kind == "local":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        else:
            with fsspec.open(path, "wb") as fh:
                fh.write(data)
        return path


@pytest.fixture(params=["local", "memory"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    where = Place(request.param, tmp_path)
    yield where
    if where.kind == "memory":
        fs = fsspec.filesystem("memory")
        if fs.exists(where.root):
            fs.rm(where.root, recursive=True)


# --- what each format's file holds, and the items it must give ---------------------------

LINES = ["first", "", "  spaced  ", "tab\there", "ünïcödé", "last"]


def lines_bytes() -> bytes:
    # \r\n and \n endings, no newline at the end
    return "first\r\n\n  spaced  \ntab\there\r\nünïcödé\nlast".encode()


def jsonl_bytes(rows: list[dict[str, Any]] = ROWS) -> bytes:
    out = [json.dumps(r) for r in rows]
    out.insert(3, "   ")  # blank lines are no items
    return ("\n".join(out) + "\n\n").encode()


def csv_bytes(rows: list[dict[str, Any]] = ROWS, delimiter: str = ",") -> bytes:
    buf = io.StringIO()
    writer = csvlib.DictWriter(buf, fieldnames=list(rows[0]), delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def table(rows: list[dict[str, Any]] = ROWS) -> Any:
    return pa.Table.from_pylist(rows)


def parquet_bytes(rows: list[dict[str, Any]] = ROWS, row_group_size: int = 7) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table(rows), sink, row_group_size=row_group_size)
    return bytes(sink.getvalue().to_pybytes())


def arrow_bytes(rows: list[dict[str, Any]] = ROWS, *, stream: bool = False) -> bytes:
    sink = pa.BufferOutputStream()
    t = table(rows)
    writer = (pa.ipc.new_stream if stream else pa.ipc.new_file)(sink, t.schema)
    for batch in t.to_batches(max_chunksize=9):
        writer.write_batch(batch)
    writer.close()
    return bytes(sink.getvalue().to_pybytes())


FORMATS: dict[str, tuple[str, Callable[[], bytes], Callable[..., Any], list[Any]]] = {
    # name: (file name, its bytes, the function that reads it, the items expected)
    "lines": ("a.txt", lines_bytes, sources.lines, LINES),
    "jsonl": ("a.jsonl", jsonl_bytes, sources.jsonl, ROWS),
    "ndjson": ("a.ndjson", jsonl_bytes, sources.jsonl, ROWS),
    "csv": ("a.csv", csv_bytes, sources.csv, STR_ROWS),
    "tsv": ("a.tsv", lambda: csv_bytes(delimiter="\t"), None, STR_ROWS),
    "parquet": ("a.parquet", parquet_bytes, sources.parquet, ROWS),
    "arrow": ("a.arrow", arrow_bytes, sources.arrow, ROWS),
    "feather": ("a.feather", arrow_bytes, sources.arrow, ROWS),
    "arrow stream": ("a.arrows", lambda: arrow_bytes(stream=True), sources.arrow, ROWS),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_gives_its_items_and_reads_again_from_the_start(place: Place, fmt: str) -> None:
    name, data, reader, expected = FORMATS[fmt]
    path = place.write(name, data())
    made = [sources.read(path)] + ([reader(path)] if reader is not None else [])
    for source in made:
        assert list(source) == expected
        assert list(source) == expected  # a second iteration reads the files again
        assert sources.format_of(path) in repr(source) and path in repr(source)


def test_several_files_and_globs_in_order(place: Place) -> None:
    for i in (2, 0, 1):
        place.write(f"part-{i}.jsonl", jsonl_bytes(ROWS[i * 10 : i * 10 + 10]))
    place.write("sub/part-3.jsonl", jsonl_bytes(ROWS[30:40]))
    place.write("part-9.csv", csv_bytes())
    source = sources.jsonl(place.path("part-*.jsonl"))
    assert [r["id"] for r in source] == list(range(30))  # matches in sorted order
    assert [f.name.rsplit("/", 1)[1] for f in source.files] == [
        f"part-{i}.jsonl" for i in (0, 1, 2)
    ]
    assert "3 files" in repr(source)
    listed = sources.jsonl([place.path("sub/part-3.jsonl"), place.path("part-[01].jsonl")])
    assert [r["id"] for r in listed] == list(range(30, 40)) + list(range(20))  # given order
    deep = sources.read(place.path("**/part-3.jsonl"))
    assert [r["id"] for r in deep] == list(range(30, 40))
    with pytest.raises(SourceError, match="several formats") as info:
        sources.read(place.path("part-*"))
    assert "part-9.csv: csv" in str(info.value)
    mixed = sources.read(place.path("part-[09].*"), format="lines")  # a format given: fine
    assert len(list(mixed)) == 10 + 1 + len(ROWS) + 2  # every line of both, blanks included


COMPRESS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("ending", list(COMPRESS))
@pytest.mark.parametrize("fmt", ["lines", "jsonl", "csv"])
def test_compressed_files_are_read_through_their_compression(
    place: Place, fmt: str, ending: str
) -> None:
    name, data, reader, expected = FORMATS[fmt]
    path = place.write(name + ending, COMPRESS[ending](data()))
    assert sources.format_of(path) == fmt
    assert list(sources.read(path)) == expected
    assert list(reader(path).skip(4)) == expected[4:]


def test_compression_can_be_named_when_the_name_does_not_say(place: Place) -> None:
    path = place.write("events.log", gzip.compress(jsonl_bytes()))
    assert list(sources.jsonl(path, compression="gzip")) == ROWS


# --- skip and start -----------------------------------------------------------------------


def _table_files(place: Place) -> list[str]:
    """Three Parquet files of 10, 0 and 40 rows, in row groups of 7 rows."""
    paths = []
    for i, rows in enumerate([ROWS[:10], [], ROWS[10:]]):
        sink = pa.BufferOutputStream()
        pq.write_table(table(rows or ROWS[:1]).slice(0, len(rows)), sink, row_group_size=7)
        paths.append(place.write(f"t/{i}.parquet", bytes(sink.getvalue().to_pybytes())))
    return paths


@pytest.mark.parametrize("fmt", ["lines", "jsonl", "csv", "parquet", "arrow stream"])
def test_skip_and_start_begin_past_n_items(place: Place, fmt: str) -> None:
    name, data, reader, expected = FORMATS[fmt]
    first = place.write("x/1-" + name, data())
    second = place.write("x/2-" + name, data())
    source = reader(place.path("x/*"))
    everything = expected + expected
    assert list(source) == everything
    for n in (0, 1, 6, len(expected) - 1, len(expected), len(expected) + 3, 2 * len(expected)):
        assert list(source.skip(n)) == everything[n:], n
        assert list(reader([first, second], start=n)) == everything[n:], n
    assert list(source.skip(1000)) == []
    assert list(source.skip(2).skip(3)) == everything[5:]
    assert source.start == 0 and source.skip(4).start == 4  # skip makes a new source
    assert "start=4" in repr(source.skip(4))


def test_table_offsets_skip_whole_files_and_row_groups_unread(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _table_files(place)
    source = sources.parquet(paths)
    assert [r["id"] for r in source] == list(range(50))
    groups: list[list[int]] = []
    real = pq.ParquetFile.iter_batches

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        groups.append(list(kwargs["row_groups"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    # item 25 is row 15 of the third file (row groups of 7 rows): its group 2 on
    assert [r["id"] for r in source.skip(25)] == list(range(25, 50))
    assert groups == [[2], [3], [4], [5]]


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_batches_are_cut_to_batch_size_so_batch_offsets_hold(place: Place, fmt: str) -> None:
    name, data, reader, _ = FORMATS[fmt]
    paths = [place.write(f"{i}-{name}", data()) for i in range(2)]
    source = reader(paths, rows=False, batch_size=8, columns=["id"])
    batches = [b.to_pylist() for b in source]
    # each file's 50 rows in batches of 8, the last 2 rows a batch of their own
    assert [len(b) for b in batches] == [8] * 6 + [2] + [8] * 6 + [2]
    assert [r["id"] for b in batches for r in b] == list(range(50)) * 2
    assert all(list(r) == ["id"] for b in batches for r in b)
    for n in (1, 6, 7, 9, 14, 20):
        assert [b.to_pylist() for b in source.skip(n)] == batches[n:], n
    rows = reader(paths, batch_size=8)
    assert [r["id"] for r in rows.skip(53)] == list(range(3, 50))


def test_json_lines_skipped_with_start_are_not_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl_bytes())
    parsed = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda s: parsed.append(s) or real(s))
    assert list(sources.jsonl(path, start=45)) == ROWS[45:]
    assert len(parsed) == 5
    # with on_error="skip" a malformed line is no item, so every line must be parsed
    parsed.clear()
    assert list(sources.jsonl(path, start=45, on_error="skip")) == ROWS[45:]
    assert len(parsed) == 50


# --- bad input ------------------------------------------------------------------------------


def test_missing_files_empty_globs_and_folders_are_named(place: Place) -> None:
    place.write("d/one.txt", b"x\n")
    missing = place.path("nope.jsonl")
    with pytest.raises(SourceError, match="not found") as info:
        sources.jsonl(missing)
    assert missing in str(info.value) and info.value.path == missing
    with pytest.raises(SourceError, match="no file matches") as info:
        sources.read(place.path("d/*.csv"))
    assert place.path("d/*.csv") in str(info.value)
    with pytest.raises(SourceError, match="is a folder; give a glob"):
        sources.lines(place.path("d"))
    with pytest.raises(SourceError, match="no path given"):
        sources.lines([])
    # one missing file among several is an error too, before anything is read
    with pytest.raises(SourceError, match="not found"):
        sources.lines([place.path("d/one.txt"), missing])


def test_a_protocol_whose_package_is_missing_says_what_to_install() -> None:
    import importlib.util

    candidates = [("s3", "s3fs"), ("gcs", "gcsfs"), ("abfs", "adlfs")]
    absent = [(p, pkg) for p, pkg in candidates if importlib.util.find_spec(pkg) is None]
    if not absent:
        pytest.skip("every object-store package is installed here")
    protocol, package = absent[0]
    url = f"{protocol}://bucket/events/*.jsonl"
    with pytest.raises(SourceError) as info:
        sources.jsonl(url)
    message = str(info.value)
    assert "\n" not in message
    assert f"pip install {package}" in message and url in message
    with pytest.raises(SourceError, match="Protocol not known: nosuch"):
        sources.lines("nosuch://x/y")


def test_local_paths_need_no_fsspec_and_urls_say_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(jsonl_bytes())
    packed = tmp_path / "b.csv.gz"
    packed.write_bytes(gzip.compress(csv_bytes()))
    for name in [m for m in sys.modules if m == "fsspec" or m.startswith("fsspec.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec now fails
    assert list(sources.read(plain)) == ROWS
    assert list(sources.read(packed)) == STR_ROWS
    assert list(sources.lines(f"file://{plain}", start=49)) == plain.read_text().splitlines()[49:]
    with pytest.raises(SourceError, match=r"needs fsspec .*pip install 'conveyor\[files\]'"):
        sources.lines("memory://somewhere/a.txt")


def test_tables_without_pyarrow_and_zst_without_zstandard_say_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table_path = tmp_path / "t.parquet"
    table_path.write_bytes(parquet_bytes())
    zst = tmp_path / "a.txt.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(b"x\n"))
    for name in [m for m in sys.modules if m.split(".")[0] in ("pyarrow", "zstandard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    for make in (sources.parquet, sources.arrow, sources.read):
        with pytest.raises(SourceError, match=r"needs pyarrow: pip install 'conveyor\[files\]'"):
            make(table_path)
    with pytest.raises(SourceError, match=r"needs zstandard: pip install 'conveyor\[files\]'"):
        list(sources.lines(zst))


def test_malformed_json_lines_name_file_and_line_or_are_skipped_and_counted(
    place: Place,
) -> None:
    good = [json.dumps(r) for r in ROWS[:6]]
    text = "\n".join([good[0], good[1], "", '{"id": 2, oops}', good[3], "[1, 2", good[5]])
    path = place.write("bad.jsonl", text.encode())
    with pytest.raises(SourceError) as info:
        list(sources.jsonl(path))
    error = info.value
    assert (error.path, error.line) == (path, 4)
    assert "bad.jsonl line 4: not valid JSON" in str(error) and "on_error='skip'" in str(error)
    source = sources.jsonl(path, on_error="skip")
    assert list(source) == [ROWS[0], ROWS[1], ROWS[3], ROWS[5]]
    assert source.skipped == 2
    assert [e.line for e in source.errors] == [4, 6]
    assert list(source) == [ROWS[0], ROWS[1], ROWS[3], ROWS[5]]
    assert source.skipped == 2  # counted per iteration, not summed across them
    # items are what start counts: past two good items and a bad line, item 2 is ROWS[3]
    assert list(source.skip(2)) == [ROWS[3], ROWS[5]] and list(source.skip(3)) == [ROWS[5]]


def test_malformed_csv_rows_name_file_and_line_or_are_skipped_and_counted(
    place: Place,
) -> None:
    text = (
        "id,name,count\n"
        "0,n0,0\n"
        '1,"two\nlines",3\n'  # one row over lines 3-4
        "2,n2\n"  # too few fields: line 5
        "\n"
        "3,n3,3,extra\n"  # too many: line 7
        '4,"n"4,4\n'  # rejected by strict=True: line 8
        "5,n5,5\n"
    )
    path = place.write("bad.csv", text.encode())
    with pytest.raises(SourceError) as info:
        list(sources.csv(path))
    assert info.value.line == 5
    assert "bad.csv line 5: 2 fields where the header (line 1) has 3" in str(info.value)
    source = sources.csv(path, on_error="skip", strict=True)
    assert [r["id"] for r in source] == ["0", "1", "5"]
    assert next(iter(source.skip(1)))["name"] == "two\nlines"
    assert source.skipped == 3 and [e.line for e in source.errors] == [5, 7, 8]
    assert "not valid CSV" in str(source.errors[2])
    dup = place.write("dup.csv", b"a,b,a\n1,2,3\n")
    with pytest.raises(SourceError, match="names column 'a' twice"):
        list(sources.csv(dup))
    named = sources.csv(dup, fieldnames=["x", "y", "z"])
    assert list(named) == [{"x": "a", "y": "b", "z": "a"}, {"x": "1", "y": "2", "z": "3"}]


def test_undecodable_lines_name_their_line(place: Place) -> None:
    path = place.write("latin.txt", "one\ncafé\nthree\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"latin.txt line 2: not valid utf-8") as info:
        list(sources.lines(path))
    assert info.value.line == 2
    skipping = sources.lines(path, on_error="skip")
    assert list(skipping) == ["one", "three"] and skipping.skipped == 1
    assert list(sources.lines(path, encoding="latin-1")) == ["one", "café", "three"]
    bom = place.write("bom.jsonl", b'\xef\xbb\xbf{"a": 1}\n')
    assert list(sources.jsonl(bom)) == [{"a": 1}]


def test_damaged_files_are_errors_naming_the_file(place: Place) -> None:
    whole = gzip.compress(jsonl_bytes())
    cut = place.write("cut.jsonl.gz", whole[: len(whole) // 2])
    with pytest.raises(SourceError, match=r"cut.jsonl.gz cannot be read past line \d+"):
        list(sources.jsonl(cut, on_error="skip"))
    junk = place.write("junk.parquet", b"PAR1 this is not parquet at all")
    with pytest.raises(SourceError, match=r"junk\.parquet is not a readable parquet file"):
        list(sources.parquet(junk))
    junk_arrow = place.write("junk.arrow", b"neither arrow file nor stream")
    with pytest.raises(SourceError, match=r"junk\.arrow is not a readable arrow file"):
        list(sources.arrow(junk_arrow))
    packed = place.write("t.parquet.gz", gzip.compress(parquet_bytes()))
    with pytest.raises(SourceError, match="decompress it"):
        sources.read(packed)
    good = place.write("t.parquet", parquet_bytes())
    with pytest.raises(SourceError, match="has no column 'nope'; its columns: id, name, count"):
        list(sources.parquet(good, columns=["id", "nope"]))
    with pytest.raises(SourceError, match="has no column 'nope'"):
        list(sources.arrow(place.write("t.arrow", arrow_bytes()), columns=["nope"]))


@pytest.mark.parametrize("fmt", ["lines", "csv", "parquet", "arrow"])
def test_a_file_removed_after_the_source_was_made_is_named(place: Place, fmt: str) -> None:
    name, data, reader, _ = FORMATS[fmt]
    keep, lose = place.write("1-" + name, data()), place.write("2-" + name, data())
    source = reader(place.path("*-" + name))
    if place.kind == "local":
        Path(lose).unlink()
    else:
        fsspec.filesystem("memory").rm(lose)
    with pytest.raises(SourceError, match="is gone: it was there when the source was made") as info:
        list(source)
    assert info.value.path is not None and info.value.path.endswith("2-" + name)
    assert list(reader(keep)) == FORMATS[fmt][3]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: sources.lines(p, start=-1), "start=-1"),
        (lambda p: sources.lines(p, start=True), "start=True"),
        (lambda p: sources.lines(p).skip(-2), "n=-2"),
        (lambda p: sources.lines(p, on_error="ignore"), "on_error='ignore'"),
        (lambda p: sources.lines(p, encoding="utf-16"), "encoding='utf-16' is not supported"),
        (lambda p: sources.lines(p, encoding="klingon"), "not an encoding"),
        (lambda p: sources.lines(p, compression="rar"), "compression='rar'"),
        (lambda p: sources.csv(p, delimiter="::"), "bad CSV options"),
        (lambda p: sources.csv(p, fieldnames=["a", "a"]), "names column 'a' twice"),
        (lambda p: sources.read(p, format="xml"), "format='xml' is not one of"),
        (lambda p: sources.read(p, bogus=1), "sources.lines: got an unexpected keyword"),
        (lambda p: sources.lines(42), "got int"),
    ],
)
def test_bad_options_are_refused_when_the_source_is_made(
    tmp_path: Path, make: Callable[[Path], Any], message: str
) -> None:
    path = tmp_path / "a.txt"
    path.write_text("x\n")
    with pytest.raises(SourceError, match=message.replace("(", r"\(")):
        make(path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"columns": "id"}, "columns='id': give a list"),
    ],
)
def test_bad_table_options_are_refused(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(parquet_bytes())
    for make in (sources.parquet, sources.arrow):
        with pytest.raises(SourceError, match=message):
            make(path, **options)


def test_a_malformed_line_stops_a_run_with_the_source_error_in_its_chain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text('{"id": 1, "count": 1}\n{"id": 2 "count": 2}\n')
    pipe = cv.Pipeline("rows", [cv.Stage(f.row_total, executor="threads")])
    with pytest.raises(cv.RunError) as info:
        pipe.run(sources.jsonl(path))
    chain: list[BaseException] = []
    error: BaseException | None = info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    found = [e for e in chain if isinstance(e, SourceError)]
    assert found and found[0].line == 2 and "run.jsonl line 2" in str(found[0])


# --- memory ---------------------------------------------------------------------------------

MILLION = 1_000_000


def _write_lines(path: Path, n: int, fmt: str) -> None:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    kwargs = {"compresslevel": 1} if path.suffix == ".gz" else {}
    with opener(path, "wt", encoding="utf-8", newline="", **kwargs) as fh:
        if fmt == "csv":
            fh.write("i,s\n")
        step = 10_000
        for lo in range(0, n, step):
            if fmt == "csv":
                fh.write("".join(f"{i},{'x' * 20}\n" for i in range(lo, min(n, lo + step))))
            else:
                fh.write(
                    "".join(
                        f'{{"i": {i}, "s": "{"x" * 20}"}}\n' for i in range(lo, min(n, lo + step))
                    )
                )


def _peak_while_reading(source: Any) -> tuple[int, int]:
    """(items read, peak bytes Python allocated while reading them, none kept)."""
    import tracemalloc

    tracemalloc.start()
    try:
        count = 0
        for _ in source:
            count += 1
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)  # tracemalloc slows reading several times on a busy machine
@pytest.mark.parametrize(
    ("fmt", "name", "n"),
    [("lines", "a.txt", MILLION), ("jsonl", "a.jsonl.gz", 200_000), ("csv", "a.csv", 200_000)],
)
def test_reading_a_million_lines_holds_memory_flat(
    tmp_path: Path, fmt: str, name: str, n: int
) -> None:
    big, small = tmp_path / name, tmp_path / f"small-{name}"
    _write_lines(big, n, fmt)
    _write_lines(small, n // 100, fmt)
    count, peak = _peak_while_reading(sources.read(big))
    small_count, small_peak = _peak_while_reading(sources.read(small))
    assert (count, small_count) == (n, n // 100)
    # The file holds 5-30 MB; reading it whole, or its lines, would peak far above this.
    assert peak < 512 * 1024, f"peak {peak / 2**20:.2f} MiB reading {big.stat().st_size} bytes"
    assert peak < small_peak + 64 * 1024, (peak, small_peak)  # flat: 100x the lines, same peak


@pytest.mark.slow
def test_reading_a_million_parquet_rows_holds_one_row_group_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    ids = pa.array(range(MILLION), type=pa.int64())
    names = pa.array([f"row-{i:07d}" for i in range(MILLION)])
    whole = pa.table({"id": ids, "name": names})
    size = whole.nbytes  # about 27 MB in Arrow's memory
    pq.write_table(whole, path, row_group_size=50_000)
    del whole, ids, names
    base = pa.total_allocated_bytes()
    held = 0
    count = 0
    for batch in sources.parquet(path, rows=False, batch_size=4096):
        held = max(held, pa.total_allocated_bytes() - base)
        count += batch.num_rows
    assert count == MILLION
    assert held < size / 4, f"held {held / 2**20:.1f} MiB of a {size / 2**20:.1f} MiB table"


# --- real pipelines -----------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_a_pipeline_runs_over_parquet_rows_and_batches(tmp_path: Path, executor: str) -> None:
    paths = []
    for i in range(2):
        path = tmp_path / f"part-{i}.parquet"
        path.write_bytes(parquet_bytes(ROWS[i * 25 : i * 25 + 25], row_group_size=6))
        paths.append(path)
    rows = cv.Pipeline("rows", [cv.Stage(f.row_total, executor=executor, workers=2)])
    run = rows.run(sources.parquet(tmp_path / "part-*.parquet"), ordered=True)
    assert run.results == [r["id"] + r["count"] for r in ROWS]
    batches = cv.Pipeline("batches", [cv.Stage(f.batch_ids, executor=executor, workers=2)])
    run = batches.run(sources.parquet(paths, rows=False, batch_size=10), ordered=True)
    assert run.results == [list(range(lo, min(hi, lo + 10))) for lo, hi in
                           [(0, 25), (10, 25), (20, 25), (25, 50), (35, 50), (45, 50)]]  # fmt: skip
    # resumed past the first 30 rows, the run sees the rest of the rows, once
    run = rows.run(sources.parquet(paths).skip(30), ordered=True)
    assert run.results == [r["id"] + r["count"] for r in ROWS[30:]]


# --- conveyor run --source --------------------------------------------------------------

KEEP = """
import conveyor as cv

def keep(x):
    return x

pipeline = cv.Pipeline("keep", [cv.Stage(keep, executor="threads")])
"""


@pytest.fixture
def keep_target(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "cvkeep.py").write_text(KEEP)
    path, modules = sys.path[:], set(sys.modules)
    yield f"{tmp_path}/cvkeep.py:pipeline"
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def _conveyor(*args: str) -> Any:
    from click.testing import CliRunner

    from conveyor.cli import cli

    return CliRunner().invoke(cli, list(args))


def _outputs(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("a.txt", lines_bytes, LINES),
        ("a.jsonl", jsonl_bytes, ROWS),
        ("a.ndjson.gz", lambda: gzip.compress(jsonl_bytes()), ROWS),
        ("a.csv", csv_bytes, STR_ROWS),
        ("a.tsv", lambda: csv_bytes(delimiter="\t"), STR_ROWS),
        ("a.parquet", parquet_bytes, ROWS),
        ("a.feather", arrow_bytes, ROWS),
    ],
)
def test_run_reads_the_source_in_the_format_its_name_says(
    keep_target: str, tmp_path: Path, name: str, data: Callable[[], bytes], expected: list[Any]
) -> None:
    source, out = tmp_path / name, tmp_path / "out.jsonl"
    source.write_bytes(data())
    args = ["run", keep_target, "--source", str(source), "--ordered", "--no-store"]
    result = _conveyor(*args, "--output", str(out))
    assert result.exit_code == 0, result.output
    assert _outputs(out) == expected


def test_source_format_overrides_the_name(keep_target: str, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    source, out = tmp_path / "in" / "rows.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"a": 1}\n{"a": 2}\n')
    args = ["run", keep_target, "--source", str(source), "--ordered", "--no-store"]
    result = _conveyor(*args, "--source-format", "lines", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert _outputs(out) == ['{"a": 1}', '{"a": 2}']
    glob_out = tmp_path / "glob.jsonl"
    result = _conveyor(
        *args[:3], str(tmp_path / "in" / "*.jsonl"), *args[4:], "--output", str(glob_out)
    )
    assert result.exit_code == 0, result.output
    assert _outputs(glob_out) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.csv", "not found"),
        ("*.nothing", "no file matches"),
        ("nosuch://x/y.csv", "Protocol not known"),
    ],
)
def test_a_source_that_cannot_be_read_is_a_usage_error(
    keep_target: str, tmp_path: Path, source: str, message: str
) -> None:
    where = source if "://" in source else str(tmp_path / source)
    result = _conveyor("run", keep_target, "--source", where, "--no-store")
    assert result.exit_code == 2, result.output
    assert "--source" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_resume_reads_the_source_as_the_run_did(keep_target: str, tmp_path: Path) -> None:
    from conveyor.store import RunStore, plan_resume

    source, store = tmp_path / "rows.tsv", tmp_path / "runs.db"
    source.write_bytes(csv_bytes(delimiter="\t"))
    first, again = tmp_path / "first.jsonl", tmp_path / "again.jsonl"
    base = ["--source", str(source), "--ordered", "--store", str(store), "--no-progress"]
    result = _conveyor("run", keep_target, *base, "--output", str(first))
    assert result.exit_code == 0, result.output
    with RunStore(store) as runs:
        (record,) = runs.runs()
        assert record.params["source_format"] is None  # the name said: tsv
    result = _conveyor(
        "resume", record.id, "--store", str(store), "--force", "--output", str(again)
    )
    assert result.exit_code == 0, result.output
    assert _outputs(first) == _outputs(again) == STR_ROWS
    # A run recorded before --source-format read its --source as lines: so does resume.
    with RunStore(store) as runs:
        plan = plan_resume(runs, record.id, lambda target: cv.Pipeline("keep", [f.inc]), force=True)
    old = dataclasses.replace(plan, source_format="lines")
    assert list(old.source()) == source.read_text().splitlines()
