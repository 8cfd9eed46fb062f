"""Test isolation: no home Prefect database, no network, no hub, one Prefect harness."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports prefect, litellm or huggingface_hub.
_HOME = Path(tempfile.mkdtemp(prefix="vstar-tests-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.update(
    PREFECT_HOME=str(_HOME / "prefect"),
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_LOGGING_TO_API_ENABLED="false",
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_HOME=str(_HOME / "hf"),
    LITELLM_LOCAL_MODEL_COST_MAP="True",
    DO_NOT_TRACK="1",
    VSTAR_CACHE_DIR=str(_HOME / "cache"),
)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_API_KEY", None)

import pytest  # noqa: E402

import vstar_model  # noqa: E402,F401  (torchvision compat before any other import)
from tests import network_guard  # noqa: E402

network_guard.install()


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test harness (a temporary API and database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny text-to-video model saved in diffusers' layout (built once per session)."""
    from vstar_model.backbones.tiny import save_tiny_text_to_video

    return save_tiny_text_to_video(tmp_path_factory.mktemp("tiny-t2v"), seed=0)


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> Path:
    """The tiny random Wan 2.1 saved in diffusers' layout (built once per session)."""
    from vstar_model.backbones.tiny_wan import save_tiny_wan

    return save_tiny_wan(tmp_path_factory.mktemp("tiny-wan"), seed=0)


@pytest.fixture(scope="session")
def tiny_animatediff_dir(tmp_path_factory) -> Path:
    from vstar_model.backbones.tiny import save_tiny_animatediff

    return save_tiny_animatediff(tmp_path_factory.mktemp("tiny-animatediff"), seed=0)


@pytest.fixture(scope="session")
def random_dreamsim_cache(tmp_path_factory) -> Path:
    """DreamSim's open_clip_vitb32 cache with random weights: the package's real code runs offline."""
    from vstar_model.evaluation.dreamsim_weights import missing_files, save_random_dreamsim_cache, uses_random_weights

    cache = tmp_path_factory.getbasetemp() / "random-dreamsim-open_clip_vitb32"
    if not (uses_random_weights(cache) and not missing_files(cache, "open_clip_vitb32")):
        save_random_dreamsim_cache(cache, "open_clip_vitb32", seed=0)
    return cache


@pytest.fixture
def llm_server(monkeypatch):
    """A fresh scripted OpenAI-compatible server on 127.0.0.1, with a fake key in OPENAI_API_KEY."""
    from tests.llm_server import TEST_API_KEY, FakeLLMServer

    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    with FakeLLMServer() as server:
        yield server
