"""Every train test keeps its profile cache in its own temporary directory, never the user's."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONVEYOR_PROFILE_CACHE", str(tmp_path_factory.mktemp("profiles")))
