"""Shared fixtures: every test gets its own cache dir, so nothing touches ~/.cache/croptune."""

import pytest


@pytest.fixture(autouse=True)
def croptune_cache(tmp_path_factory, monkeypatch):
    """$CROPTUNE_CACHE_DIR for this test (decoded-image arrays, demo datasets)."""
    cache = tmp_path_factory.mktemp("croptune-cache")
    monkeypatch.setenv("CROPTUNE_CACHE_DIR", str(cache))
    return cache
