"""The cache never answers with a stale result: two runs of a job, each in a fresh
process, on one cache, with something the stage depends on changed in between.

Each scenario is a small project written to a folder: ``job.py`` builds the pipeline
and its inputs, and the files of version 1 and 2 differ only in the dependency. The
job runs four times: version 1 twice (the second run must be served whole from the
cache, so the fingerprint is stable across processes), then version 2 on the same
cache, which must give exactly what version 2 gives on an empty cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RUN = textwrap.dedent(
    """
    import json, warnings
    warnings.simplefilter("error")
    import job
    run = job.PIPE.run(job.INPUTS, ordered=True)
    hits = sum(s.cache_hits for s in run.statistics().stages.values())
    print(json.dumps({"results": run.results, "hits": hits}))
    """
)

PIPE = "PIPE = cv.Pipeline('job', [cv.stage(STAGE, cache=True, executor=EXECUTOR)])\n"

# name: (files common to both versions, {file: (version 1, version 2)}, results 1, results 2)
SCENARIOS: dict[str, tuple[dict[str, str], dict[str, tuple[str, str]], list, list]] = {  # type: ignore[type-arg]
    "an instance's attribute (a config object in a global)": (
        {
            "job.py": """
                import conveyor as cv
                from config import Config
                CONFIG = Config()
                def scale(x):
                    return x * CONFIG.factor
                STAGE, EXECUTOR, INPUTS = scale, "threads", [1, 2, 3]
            """
        },
        {
            "config.py": (
                "class Config:\n    def __init__(self):\n        self.factor = 2\n",
                "class Config:\n    def __init__(self):\n        self.factor = 3\n",
            )
        },
        [2, 4, 6],
        [3, 6, 9],
    ),
    "a setting read through another module (settings.FACTOR)": (
        {
            "job.py": """
                import conveyor as cv
                import settings
                def scale(x):
                    return x * settings.FACTOR
                STAGE, EXECUTOR, INPUTS = scale, "processes", [1, 2, 3]
            """
        },
        {"settings.py": ("FACTOR = 2\n", "FACTOR = 3\n")},
        [2, 4, 6],
        [3, 6, 9],
    ),
    "a setting imported inside the function": (
        {
            "job.py": """
                import conveyor as cv
                def scale(x):
                    from settings import FACTOR
                    return x * FACTOR
                STAGE, EXECUTOR, INPUTS = scale, "threads", [1, 2, 3]
            """
        },
        {"settings.py": ("FACTOR = 2\n", "FACTOR = 3\n")},
        [2, 4, 6],
        [3, 6, 9],
    ),
    "a method of a class in the same module that reads a global": (
        {},
        {
            "job.py": tuple(  # type: ignore[misc]
                f"""
                import conveyor as cv
                FACTOR = {factor}
                class Scaler:
                    def apply(self, x):
                        return x * FACTOR
                def scale(x):
                    return Scaler().apply(x)
                STAGE, EXECUTOR, INPUTS = scale, "threads", [1, 2, 3]
                """
                for factor in (2, 3)
            )
        },
        [2, 4, 6],
        [3, 6, 9],
    ),
    "a helper function of another module of the project": (
        {
            "job.py": """
                import conveyor as cv
                from helpers import double
                def scale(x):
                    return double(x)
                STAGE, EXECUTOR, INPUTS = scale, "threads", [1, 2, 3]
            """
        },
        {
            "helpers.py": (
                "def double(x):\n    return x * 2\n",
                "def double(x):\n    return x * 3\n",
            )
        },
        [2, 4, 6],
        [3, 6, 9],
    ),
    "a function held in a global dict": (
        {
            "job.py": """
                import conveyor as cv
                from helpers import double
                HANDLERS = {"double": double}
                def scale(x):
                    return HANDLERS["double"](x)
                STAGE, EXECUTOR, INPUTS = scale, "threads", [1, 2, 3]
            """
        },
        {
            "helpers.py": (
                "def double(x):\n    return x * 2\n",
                "def double(x):\n    return x * 3\n",
            )
        },
        [2, 4, 6],
        [3, 6, 9],
    ),
    "a NumPy masked array whose mask changed": (
        {
            "job.py": """
                import conveyor as cv
                import numpy as np
                from data import MASK
                def total(a):
                    return float(a.sum())
                STAGE, EXECUTOR = total, "threads"
                INPUTS = [np.ma.array([1.0, 2.0, 3.0], mask=MASK)]
            """
        },
        {"data.py": ("MASK = [0, 0, 0]\n", "MASK = [0, 1, 0]\n")},
        [6.0],
        [4.0],
    ),
    "an aware datetime in Europe/Paris against a fixed +01:00": (
        {
            "job.py": """
                import conveyor as cv
                from data import when
                def zone(t):
                    return t.tzname()
                STAGE, EXECUTOR, INPUTS = zone, "threads", [when()]
            """
        },
        {
            "data.py": (
                "import datetime, zoneinfo\n"
                "def when():\n"
                "    return datetime.datetime(2024, 1, 15, 12, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'))\n",
                "import datetime\n"
                "def when():\n"
                "    tz = datetime.timezone(datetime.timedelta(hours=1))\n"
                "    return datetime.datetime(2024, 1, 15, 12, tzinfo=tz)\n",
            )
        },
        ["CET"],
        ["UTC+01:00"],
    ),
    "an OrderedDict with the same items in another order": (
        {
            "job.py": """
                import conveyor as cv
                from collections import OrderedDict
                from data import ITEMS
                def keys(d):
                    return list(d)
                STAGE, EXECUTOR, INPUTS = keys, "threads", [OrderedDict(ITEMS)]
            """
        },
        {
            "data.py": (
                "ITEMS = [('a', 1), ('b', 2)]\n",
                "ITEMS = [('b', 2), ('a', 1)]\n",
            )
        },
        [["a", "b"]],
        [["b", "a"]],
    ),
    "a str subclass whose extra attribute changed": (
        {
            "job.py": """
                import conveyor as cv
                from data import TAG
                class Tagged(str):
                    pass
                def make(text, tag):
                    t = Tagged(text)
                    t.tag = tag
                    return t
                def show(t):
                    return f"{t}:{t.tag}"
                STAGE, EXECUTOR, INPUTS = show, "threads", [make("a", TAG)]
            """
        },
        {"data.py": ("TAG = 'x'\n", "TAG = 'y'\n")},
        ["a:x"],
        ["a:y"],
    ),
    "a dataclass whose extra (non-field) attribute changed": (
        {
            "job.py": """
                import dataclasses
                import conveyor as cv
                from data import NOTE
                @dataclasses.dataclass
                class Item:
                    x: int
                def make(x, note):
                    item = Item(x)
                    item.note = note
                    return item
                def show(item):
                    return f"{item.x}:{item.note}"
                STAGE, EXECUTOR, INPUTS = show, "threads", [make(1, NOTE)]
            """
        },
        {"data.py": ("NOTE = 'old'\n", "NOTE = 'new'\n")},
        ["1:old"],
        ["1:new"],
    ),
}


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        body = textwrap.dedent(text).lstrip("\n")
        if name == "job.py":
            body += PIPE
        (folder / name).write_text(body)
    for stale in folder.rglob("__pycache__"):  # a source edited within a second
        for f in stale.iterdir():
            f.unlink()


def _run(folder: Path, cache: Path) -> dict:  # type: ignore[type-arg]
    env = {**os.environ, "CONVEYOR_CACHE": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", RUN], cwd=folder, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_changed_dependency_is_never_served_from_the_cache(scenario: str, tmp_path: Path) -> None:
    common, changed, first, truth = SCENARIOS[scenario]
    project, cache = tmp_path / "project", tmp_path / "cache"
    _write(project, {**common, **{name: v1 for name, (v1, _) in changed.items()}})
    one = _run(project, cache)
    assert one == {"results": first, "hits": 0}
    again = _run(project, cache)  # nothing changed: a fresh process hits every entry
    assert again == {"results": first, "hits": len(first)}

    _write(project, {name: v2 for name, (_, v2) in changed.items()})
    second = _run(project, cache)
    fresh = _run(project, tmp_path / "empty-cache")
    assert fresh["results"] == truth != first
    assert second == {"results": truth, "hits": 0}
