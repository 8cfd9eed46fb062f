"""Fixtures for the LLM side of Video Synopsis Prompting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.llm_server import TEST_API_KEY, FakeLLMServer


@pytest.fixture
def llm_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    """A fresh scripted OpenAI-compatible server on 127.0.0.1, with a fake key in OPENAI_API_KEY."""
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    with FakeLLMServer() as server:
        yield server
