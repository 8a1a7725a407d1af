"""The dashboard's registry pages over a real store: every model with its aliases,
one model's versions (metrics, the run that made each) and its alias history; what
users wrote (reasons, descriptions) stays text; names that try to leave the app find
nothing; and the dashboard never makes the registry's tables itself."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed")
pytest.importorskip("torch", reason="the models here are torch modules")

from conveyor.models import ModelRegistry
from dashboard_support import XSS, fill, get, serving
from modelfns import Tiny

REASON = f"beat v1 on holdout {XSS}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("dash-models") / "runs.db"
    ids = fill(path)
    with ModelRegistry(path) as reg:
        reg.register("digits", Tiny(), metrics={"accuracy": 0.91}, alias="champion")
        reg.register(
            "digits",
            Tiny(),
            metrics={"accuracy": 0.97, "loss": 0.125},
            run_id=ids["numbers"],
            description="<b>wider</b> layer",
        )
        reg.alias("digits", "champion", 2, reason=REASON, by="ci")
        reg.alias("digits", "challenger", 1, reason="kept for shadowing", by="ana")
        reg.register("other", Tiny())
    return path, ids


@pytest.fixture(scope="module")
def base(store: tuple[Path, dict[str, str]]) -> Iterator[str]:
    with serving(store[0]) as url:
        yield url


def test_the_models_page_lists_each_model_and_its_aliases(base: str) -> None:
    status, _, text = get(base + "/models")
    assert status == 200
    flat = " ".join(text.split())
    assert 'href="/models/digits">digits</a>' in flat and 'href="/models/other"' in flat
    assert "champion → 2" in flat and "challenger → 1" in flat
    assert '<a href="/models">models</a>' in text  # in every page's navigation


def test_a_model_page_shows_versions_metrics_runs_and_alias_history(
    base: str, store: tuple[Path, dict[str, str]]
) -> None:
    status, _, text = get(base + "/models/digits")
    assert status == 200
    flat = " ".join(text.split())
    assert "accuracy 0.97, loss 0.125" in flat and "accuracy 0.91" in flat
    assert f'href="/runs/{store[1]["numbers"]}"' in flat  # the run that made version 2
    # newest move first: challenger → 1 by ana, then champion 1 → 2 by ci, then the first
    moves = flat[flat.index("Alias history") :]
    assert moves.index("kept for shadowing") < moves.index("beat v1 on holdout")
    assert '<td>champion</td><td class="n">1</td><td class="n">2</td><td>ci</td>' in moves
    assert '<td>champion</td><td class="n">-</td><td class="n">1</td>' in moves


def test_what_users_wrote_is_text(base: str) -> None:
    _, _, text = get(base + "/models/digits")
    assert XSS not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>wider</b>" not in text and "&lt;b&gt;wider&lt;/b&gt; layer" in text


@pytest.mark.parametrize(
    "path",
    [
        "/models/nope",
        "/models/..%2F..%2Fetc%2Fpasswd",
        "/models/%2E%2E",
        "/models/../../etc/passwd",
    ],
)
def test_unknown_and_escaping_names_find_nothing(base: str, path: str) -> None:
    status, _, text = get(base + path)
    assert status == 404, path
    assert "root:" not in text


def test_a_store_without_a_registry_has_no_models_and_keeps_none(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    fill(path)
    with serving(path) as url:
        status, _, text = get(url + "/models")
        assert status == 200 and "No model is registered" in text
        assert get(url + "/models/digits")[0] == 404
    with sqlite3.connect(path) as c:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "model_versions" not in tables  # read-only: the dashboard made nothing
