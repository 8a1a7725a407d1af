"""Results as files and tables: `--output` JSON lines that read back to NumPy arrays
and scalars, dates and bytes (or a one-line error naming the type); Parquet by the
file's name; run.to_pandas() and run.to_arrow(); memory flat however many results."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import conveyor as cv
from conveyor.cli import cli
from stagefns import inc

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

PIPELINE_FILE = """
import datetime as dt
import numpy as np
import conveyor as cv

def typed(i):
    return {
        "i": i,
        "vector": np.arange(3) * i,
        "matrix": np.full((2, 2), i / 4, dtype=np.float32),
        "count": np.int64(i),
        "share": np.float64(i / 8),
        "flag": np.bool_(i % 2),
        "day": dt.date(2024, 1, 1 + i),
        "stamp": dt.datetime(2024, 1, 1, 12, 30, i, 500),
        "blob": bytes([i, 255, 0]),
    }

def a_set(i):
    return {i, i + 1}

pipeline = cv.Pipeline("typed", [cv.Stage(typed)], source=lambda: range(4), ordered=True)
sets = cv.Pipeline("sets", [cv.Stage(a_set)], source=lambda: range(3))
"""


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "typedpipe.py").write_text(PIPELINE_FILE)
    path, modules = sys.path[:], set(sys.modules)
    yield tmp_path / "typedpipe.py"
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def expected(i: int) -> dict:
    return {
        "i": i,
        "vector": np.arange(3) * i,
        "matrix": np.full((2, 2), i / 4, dtype=np.float32),
        "count": np.int64(i),
        "share": np.float64(i / 8),
        "flag": np.bool_(i % 2),
        "day": dt.date(2024, 1, 1 + i),
        "stamp": dt.datetime(2024, 1, 1, 12, 30, i, 500),
        "blob": bytes([i, 255, 0]),
    }


def test_output_json_lines_read_back_to_arrays_scalars_dates_and_bytes(
    target: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli, ["run", f"{target}:pipeline", "--no-progress", "--no-store", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4
    for i, row in enumerate(lines):
        want = expected(i)
        assert "array(" not in json.dumps(row)  # no repr() strings
        assert row["i"] == i
        np.testing.assert_array_equal(np.asarray(row["vector"]), want["vector"])
        np.testing.assert_array_equal(np.asarray(row["matrix"], dtype=np.float32), want["matrix"])
        assert row["count"] == want["count"] and type(row["count"]) is int
        assert row["share"] == want["share"] and type(row["share"]) is float
        assert row["flag"] is bool(want["flag"])
        assert dt.date.fromisoformat(row["day"]) == want["day"]
        assert dt.datetime.fromisoformat(row["stamp"]) == want["stamp"]
        assert base64.b64decode(row["blob"]) == want["blob"]


def test_a_value_json_cannot_hold_fails_the_run_naming_its_type(
    target: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli, ["run", f"{target}:sets", "--no-progress", "--no-store", "--output", str(out)]
    )
    assert result.exit_code == 1
    assert result.output.count("error:") == 1, result.output
    error = " ".join(result.output.split("error:")[1].split())  # the console wraps it
    assert "a value of type builtins.set ({0, 1})" in error and "write Parquet" in error
    assert "Traceback" not in result.output
    with pytest.raises(cv.OutputError, match=r"complex.*\(1\+2j\)"):
        cv.write_results([1, 1 + 2j], tmp_path / "c.jsonl")
    with pytest.raises(cv.OutputError, match=r"numpy\.ndarray"):  # object arrays hold anything
        cv.write_results([np.array([object()], dtype=object)], tmp_path / "o.jsonl")


def test_output_parquet_by_the_name_holds_every_result(target: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        cli, ["run", f"{target}:pipeline", "--no-progress", "--no-store", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == 4
    rows = table.to_pylist()
    for i, row in enumerate(rows):
        want = expected(i)
        assert row["vector"] == want["vector"].tolist() and row["count"] == i
        assert row["matrix"] == want["matrix"].tolist()  # 2-D: nested lists
        assert (row["day"], row["stamp"], row["blob"]) == (want["day"], want["stamp"], want["blob"])


def test_parquet_row_groups_share_one_schema_or_say_which_results_differ(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    written = cv.write_results(({"i": i, "name": str(i)} for i in range(10)), path, batch_rows=3)
    assert written == 10
    assert pq.read_table(path).to_pylist() == [{"i": i, "name": str(i)} for i in range(10)]
    assert pq.ParquetFile(path).num_row_groups == 4  # streamed: 3 + 3 + 3 + 1
    with pytest.raises(cv.OutputError, match=r"results 3-5 do not fit the Parquet schema"):
        cv.write_results([{"i": 1}] * 3 + [{"i": "three"}] * 3, path, batch_rows=3)
    with pytest.raises(cv.OutputError, match=r"have keys \['extra'\] that the first"):
        cv.write_results([{"i": 1}, {"i": 2, "extra": 0}], path, batch_rows=1)
    with pytest.raises(cv.OutputError, match="result 1 is a dict but the results before"):
        cv.write_results([1, {"i": 2}], path)
    assert cv.write_results([7, 8], path) == 2
    assert pq.read_table(path).column("result").to_pylist() == [7, 8]


def test_run_to_pandas_and_to_arrow() -> None:
    pipe = cv.Pipeline("t", [cv.Stage(inc)], source=range(5), ordered=True)
    run = pipe.run()
    assert run.to_pandas()["result"].tolist() == [1, 2, 3, 4, 5]
    assert run.to_arrow().column("result").to_pylist() == [1, 2, 3, 4, 5]
    rows = cv.Pipeline("d", [cv.Stage(_as_row)], source=range(3), ordered=True).run()
    frame = rows.to_pandas()
    assert list(frame.columns) == ["i", "square"] and frame["square"].tolist() == [0, 1, 4]
    assert rows.to_arrow().to_pylist() == [{"i": i, "square": i * i} for i in range(3)]
    with pipe.stream() as streamed, pytest.raises(cv.OutputError, match=r"call run\.wait"):
        streamed.to_pandas()


def _as_row(i: int) -> dict:
    return {"i": i, "square": i * i}


def test_missing_pandas_or_pyarrow_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run = cv.Pipeline("t", [cv.Stage(inc)], source=range(2)).run()
    monkeypatch.setitem(sys.modules, "pandas", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(cv.OutputError, match=r"^run.to_pandas\(\) needs pandas; install"):
        run.to_pandas()
    with pytest.raises(cv.OutputError, match=r"conveyor\[files\]"):
        run.to_arrow()
    with pytest.raises(cv.OutputError, match="Parquet output needs pyarrow"):
        cv.ResultsWriter(tmp_path / "x.parquet")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["r.jsonl", "r.parquet"])
def test_memory_stays_flat_from_ten_thousand_to_a_million_results(
    tmp_path: Path, name: str
) -> None:
    cv.write_results(range(10), tmp_path / name)  # imports done before measuring

    def peak(n: int) -> int:
        tracemalloc.start()
        try:
            assert cv.write_results(range(n), tmp_path / name) == n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(10**4), peak(10**6)
    # a list of a million results alone would take over 8 MB; the writer holds at
    # most one row group
    assert large < 1.5 * small + 256 * 1024, (small, large)
