"""The examples, end to end through the ``conveyor`` command, scaled down.

Each runs in a subprocess (``python -m conveyor.cli run examples/...``) with its
output directory moved to ``tmp_path``; the assertions check the files written
and, for the ETL, the aggregates against a direct count over the same data file.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import struct
import subprocess
import sys
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytest.importorskip("numpy")


def conveyor_run(target: str, tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``conveyor run TARGET`` and return its statistics (the --json file)."""
    stats = tmp_path / "stats.json"
    out = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "run", target, "--no-progress", "--json", stats],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "limiting stage: " in out.stdout
    result: dict[str, Any] = json.loads(stats.read_text())
    return result


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``examples/NAME.py`` as module ``example_NAME`` for this test only."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered so the process stages' functions can be pickled by reference.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and raw scanlines of an 8-bit RGB PNG with one IDAT chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = {}
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks[kind] = body
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    assert b"IEND" in chunks
    return width, height, zlib.decompress(chunks[b"IDAT"])


def test_science_writes_one_image_per_field(tmp_path: Path) -> None:
    out = tmp_path / "images"
    env = {
        "CONVEYOR_SCIENCE_ITEMS": "6",
        "CONVEYOR_SCIENCE_GRID": "40",
        "CONVEYOR_SCIENCE_OUT": str(out),
    }
    stats = conveyor_run(f"{EXAMPLES}/science.py:pipeline", tmp_path, env)
    assert stats["state"] == "succeeded"
    assert [(s["name"], s["items_in"], s["items_out"]) for s in stats["stages"].values()] == [
        ("simulate", 6, 6),
        ("analyse", 6, 6),
        ("render", 6, 6),
    ]
    images = sorted(out.glob("field_*.png"))
    assert [p.name for p in images] == [f"field_{i:04d}.png" for i in range(6)]
    for p in images:
        width, height, raw = read_png(p.read_bytes())
        assert (width, height) == (80, 80)  # GRID times SCALE
        assert len(raw) == height * (1 + 3 * width)


def test_science_stages_compute_real_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    monkeypatch.setenv("CONVEYOR_SCIENCE_GRID", "32")
    monkeypatch.setenv("CONVEYOR_SCIENCE_OUT", str(tmp_path))
    science = load("science", monkeypatch)
    field = science.simulate(science.params(0))
    u = field["field"]
    assert u.shape == (32, 32)
    assert 0 < u.mean() < u.max() <= 100.0  # heat spread out from sources of 50-100
    assert (u[0], u[-1]) == (pytest.approx(0), pytest.approx(0))  # the edges stay cold
    found = science.analyse(field)
    assert found["max"] == pytest.approx(u.max())
    assert found["hot_spots"], "the sources should stand out as hot spots"
    assert 0 < found["correlation_length"] < 32
    rendered = science.render(found)
    width, height, raw = read_png(Path(rendered["image"]).read_bytes())
    assert (width, height) == (64, 64)
    # The PNG holds exactly the pixels given to the encoder.
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    _, _, raw = read_png(science.encode_png(rgb))
    assert raw == b"\x00" + rgb[0].tobytes() + b"\x00" + rgb[1].tobytes()


def test_etl_aggregates_match_a_direct_count(tmp_path: Path) -> None:
    out = tmp_path / "etl"
    stats = conveyor_run(f"{EXAMPLES}/etl.py:pipeline", tmp_path, {"CONVEYOR_ETL_OUT": str(out)})
    records = json.loads((EXAMPLES / "data" / "iso_3166-2.json").read_text("utf-8"))["3166-2"]
    n = len(records)
    assert n > 5000
    assert stats["state"] == "succeeded"
    assert stats["stages"]["extract"]["items_out"] == n
    assert stats["stages"]["aggregate"]["items_in"] == n

    # The same figures, counted directly over the data file.
    per_country = Counter(r["code"].split("-")[0] for r in records)
    top_level = Counter(r["code"].split("-")[0] for r in records if "parent" not in r)
    non_ascii = Counter(r["code"].split("-")[0] for r in records if not r["name"].isascii())
    per_type = Counter(r["type"] for r in records)
    type_countries: dict[str, set[str]] = defaultdict(set)
    for r in records:
        type_countries[r["type"]].add(r["code"].split("-")[0])

    with (out / "by_country.csv").open(encoding="utf-8") as f:
        table = {row["country"]: row for row in csv.DictReader(f)}
    assert set(table) == set(per_country)
    for country, row in table.items():
        assert int(row["subdivisions"]) == per_country[country], country
        assert int(row["top_level"]) == top_level[country], country
        assert int(row["nested"]) == per_country[country] - top_level[country], country
        assert int(row["non_ascii_names"]) == non_ascii[country], country
    assert table["FR"]["country_name"] == "France"

    summary = json.loads((out / "summary.json").read_text("utf-8"))
    assert summary["subdivisions"] == n
    assert summary["unresolved_parents"] == 0
    assert {t: v["subdivisions"] for t, v in summary["types"].items()} == dict(per_type)
    assert {t: v["countries"] for t, v in summary["types"].items()} == {
        t: len(c) for t, c in type_countries.items()
    }


def test_etl_transliterates_and_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    etl = load("etl", monkeypatch)
    row = etl.parse({"code": "AZ-BAB", "name": " Babək ", "type": "Rayon", "parent": "NX"})
    [clean] = etl.transform([row])
    assert clean["name"] == "Babək"
    assert clean["ascii_name"] == "Babek"
    assert clean["parent"] == "AZ-NX"
    assert clean["country_name"] == "Azerbaijan"
    assert clean["non_ascii"] and clean["transliterated"]
    with pytest.raises(ValueError, match="malformed ISO 3166-2 record"):
        etl.parse({"code": "nope", "name": "x", "type": "y"})


def test_events_service_flags_every_spike_and_counts_every_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = load("events", monkeypatch)
    monkeypatch.setattr(events, "DATA", tmp_path / "events.jsonl")
    got = events.main(["--events", "5000", "--rate", "1000000", "--quiet"])
    assert got["state"] == "succeeded" and got["read"] == 5000
    # Every injected spike, and nothing else, is flagged (after the detectors warm up).
    assert len(got["alerts"]) == 5000 // events.SPIKE_EVERY
    assert sum(got["totals"].values()) == 5000 and len(got["totals"]) == events.SENSORS
    # Windows of event time: about 5 s of readings at 1,000 per second.
    assert 3 <= got["windows"] <= 7
