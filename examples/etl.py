"""An ETL pipeline on conveyor over real data: the ISO 3166-2 subdivisions of every country.

The data ship in ``examples/data/`` (from Debian's iso-codes package; see its
README): 5,000-odd records such as ``{"code": "AZ-BAB", "name": "Babək",
"parent": "NX", "type": "Rayon"}``, and the ISO 3166-1 country list to join with.

    extract    flat_map, threads    read the JSON file, yield its records
    parse      map, threads         check each record, split its code, make it a row
    transform  batch, processes x2  clean and derive fields: country name (join),
                                    NFC name, ASCII transliteration, full parent code
    aggregate  collect, sync        group by country and by subdivision type,
                                    with each subdivision's depth in the hierarchy
    write      map, sync            CSV and JSON summaries under examples/out/etl/

Run it::

    conveyor run examples/etl.py:pipeline
    python examples/etl.py

``CONVEYOR_ETL_OUT`` moves the output directory.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import conveyor as cv

DATA = Path(__file__).parent / "data"
SUBDIVISIONS = DATA / "iso_3166-2.json"
COUNTRIES = DATA / "iso_3166-1.json"
OUT = Path(os.environ.get("CONVEYOR_ETL_OUT", Path(__file__).parent / "out" / "etl"))

CODE = re.compile(r"^([A-Z]{2})-([A-Z0-9]{1,3})$")
# Letters that Unicode decomposition leaves alone, spelled the way gazetteers do
# (escaped: several look like ASCII letters and quotes).
_ASCII = str.maketrans(
    {
        "\u0259": "e",  # schwa, as in Azerbaijani names
        "\u018f": "E",
        "\u01dd": "e",  # turned e, used for schwa in some records
        "\u0131": "i",  # dotless i
        "\u0142": "l",
        "\u0141": "L",
        "\u00f8": "o",
        "\u00d8": "O",
        "\u0111": "d",
        "\u0110": "D",
        "\u00f0": "d",
        "\u00fe": "th",
        "\u00df": "ss",
        "\u00e6": "ae",
        "\u00c6": "AE",
        "\u0153": "oe",
        "\u0127": "h",
        "\u2018": "'",  # quotation marks and modifier letters used as apostrophes
        "\u2019": "'",
        "\u02bb": "'",
        "\u02bc": "'",
    }
)


def extract(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every record of an iso-codes ISO 3166-2 JSON file."""
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    yield from document["3166-2"]


def parse(record: dict[str, Any]) -> dict[str, Any]:
    """A checked row: country and local code split out; raises on a malformed record."""
    code = record.get("code", "")
    match = CODE.match(code)
    if match is None or not record.get("name") or not record.get("type"):
        raise ValueError(
            f"malformed ISO 3166-2 record {record!r}: it needs a code like 'AZ-BAB', "
            "a name and a type"
        )
    return {
        "code": code,
        "country": match.group(1),
        "local": match.group(2),
        "name": record["name"],
        "type": record["type"],
        "parent": record.get("parent"),
    }


def transform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Clean and derive: country name, NFC name, ASCII name, full parent code."""
    names = country_names()
    out = []
    for row in rows:
        name = " ".join(unicodedata.normalize("NFC", row["name"]).split())
        parent = row["parent"]
        if parent is not None and "-" not in parent:
            parent = f"{row['country']}-{parent}"  # the data mix "NX" and "GB-NIR"
        ascii_name = transliterate(name)
        out.append(
            {
                **row,
                "name": name,
                "parent": parent,
                "type": row["type"].strip(),
                "country_name": names.get(row["country"], row["country"]),
                "ascii_name": ascii_name,
                "non_ascii": not name.isascii(),
                "transliterated": ascii_name.isascii(),
            }
        )
    return out


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Group by country and by subdivision type; depth 1 is a top-level subdivision."""
    by_code = {r["code"]: r for r in rows}

    def depth(row: dict[str, Any]) -> int:
        d = 1
        while row["parent"] in by_code and d < 10:
            row = by_code[row["parent"]]
            d += 1
        return d

    countries: dict[str, dict[str, Any]] = {}
    types: dict[str, dict[str, Any]] = defaultdict(lambda: {"subdivisions": 0, "countries": set()})
    for r in rows:
        c = countries.setdefault(
            r["country"],
            {
                "country": r["country"],
                "country_name": r["country_name"],
                "subdivisions": 0,
                "top_level": 0,
                "nested": 0,
                "max_depth": 0,
                "non_ascii_names": 0,
                "types": Counter(),
            },
        )
        d = depth(r)
        c["subdivisions"] += 1
        c["top_level" if d == 1 else "nested"] += 1
        c["max_depth"] = max(c["max_depth"], d)
        c["non_ascii_names"] += r["non_ascii"]
        c["types"][r["type"]] += 1
        t = types[r["type"]]
        t["subdivisions"] += 1
        t["countries"].add(r["country"])
    table = []
    for c in sorted(countries.values(), key=lambda c: (-c["subdivisions"], c["country"])):
        kinds: Counter[str] = c.pop("types")
        common, _ = kinds.most_common(1)[0]
        table.append({**c, "types": len(kinds), "most_common_type": common})
    return {
        "subdivisions": len(rows),
        "unresolved_parents": sum(1 for r in rows if r["parent"] and r["parent"] not in by_code),
        "untransliterated": sum(1 for r in rows if not r["transliterated"]),
        "countries": table,
        "types": {
            name: {"subdivisions": t["subdivisions"], "countries": len(t["countries"])}
            for name, t in sorted(types.items(), key=lambda kv: (-kv[1]["subdivisions"], kv[0]))
        },
    }


def write(summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``by_country.csv`` and ``summary.json`` under OUT; returns their paths and totals."""
    OUT.mkdir(parents=True, exist_ok=True)
    csv_path = OUT / "by_country.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary["countries"][0]))
        writer.writeheader()
        writer.writerows(summary["countries"])
    json_path = OUT / "summary.json"
    json_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return {
        "csv": str(csv_path),
        "json": str(json_path),
        "subdivisions": summary["subdivisions"],
        "countries": len(summary["countries"]),
        "types": len(summary["types"]),
    }


@functools.cache
def country_names() -> dict[str, str]:
    """ISO 3166-1 alpha-2 code to country name, read once per process."""
    with COUNTRIES.open(encoding="utf-8") as f:
        return {c["alpha_2"]: c["name"] for c in json.load(f)["3166-1"]}


def transliterate(name: str) -> str:
    """``"Ağcabədi"`` to ``"Agcabedi"``: decompose, drop accents, map the rest by table."""
    decomposed = unicodedata.normalize("NFKD", name.translate(_ASCII))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


# Plain functions wrapped in Stage values (not ``@cv.stage``): a process worker
# imports ``transform`` by name, so the name must stay bound to the function.
pipeline = cv.Pipeline(
    "etl",
    [
        cv.Stage(extract, kind="flat_map", executor="threads"),
        cv.Stage(parse, executor="threads"),
        cv.Stage(transform, kind="batch", size=256, split=True, executor="processes", workers=2),
        cv.Stage(aggregate, kind="collect", executor="sync"),
        cv.Stage(write, executor="sync"),
    ],
    source=lambda: [SUBDIVISIONS],
)


if __name__ == "__main__":
    from rich.console import Console

    from conveyor.observe import limiting_line, run_summary, stage_table

    run = pipeline.run()
    stats = run.statistics()
    console = Console()
    console.print(stage_table(stats))
    console.print(run_summary(stats))
    console.print(limiting_line(stats))
    console.print(run.results)
