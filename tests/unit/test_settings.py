"""Settings from the environment: a tier's variables change the default tier one setting at a time."""

from __future__ import annotations

import pytest

from core.settings import ModelTier, Settings

pytestmark = pytest.mark.unit


def test_one_tier_variable_keeps_the_rest_of_the_default_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    default = Settings().large
    monkeypatch.setenv("SIEVE_LARGE__THREADS", "2")
    monkeypatch.setenv("SIEVE_LARGE__SYSTEM_PROMPT", "Answer Yes or No first.")
    large = Settings().large
    assert large.threads == 2 and large.system_prompt == "Answer Yes or No first."
    assert large.model == default.model and large.gguf == default.gguf


def test_an_endpoint_tier_replaces_what_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEVE_SMALL__URL", "http://small:8080/v1")
    monkeypatch.setenv("SIEVE_SMALL__MODEL", "my-small")
    small = Settings().small
    assert (small.url, small.model) == ("http://small:8080/v1", "my-small")
    given = ModelTier(model="x", url="http://y/v1")
    assert Settings(small=given).small == given  # a whole tier object is taken as it is
