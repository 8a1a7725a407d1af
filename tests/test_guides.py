"""Every Python block of docs/guides/*.md runs as it is: the blocks of a page in
order, in one namespace, in a folder of the test's own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDES = Path(__file__).parent.parent / "docs" / "guides"
PAGES = sorted(p for p in GUIDES.glob("*.md") if p.name != "README.md")


def test_every_guide_is_listed_and_has_code() -> None:
    listed = (GUIDES / "README.md").read_text()
    assert len(PAGES) >= 5
    for page in PAGES:
        assert f"({page.name})" in listed, page.name
        assert "```python" in page.read_text(), page.name


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_guide_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
    assert blocks
    namespace: dict[str, object] = {"__name__": f"guide_{page.stem.replace('-', '_')}"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{page.name} block {i + 1}", "exec")
        exec(code, namespace)
