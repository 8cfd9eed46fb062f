from __future__ import annotations

import uuid

import fsspec
import pytest


@pytest.fixture
def memory_root():
    """A fresh ``memory://`` directory, removed after the test."""
    root = f"memory://test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root.removeprefix("memory://")
    if fs.exists(path):
        fs.rm(path, recursive=True)
