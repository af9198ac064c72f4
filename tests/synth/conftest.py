"""Fixtures the synth tests share."""

import pytest
from test_generators_openai import KEY, KEY_ENV


@pytest.fixture
def planted_key(monkeypatch):
    """The API key the openai generator reads from KEY_ENV; the tests check it never leaks."""
    monkeypatch.setenv(KEY_ENV, KEY)
