"""Generation faults: NaN latents and a transient crash, each confined to its own video."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.reliability.conftest import run_flow
from vstar_data.manifest import list_runs, read_manifest, verify_manifest
from vstar_data.runs import CachePaths
from vstar_data.schemas import read_table
from vstar_data.storage import exists
from vstar_model.sampling.unet import SamplingConfig, generate_video

CATALOG = """\
- id: poisoned
  prompt: a POISON cloud drifting
  synopsis: [a POISON cloud, a wider POISON cloud]
- id: flaky
  prompt: a kettle coming to the boil
  synopsis: [a cold kettle, a steaming kettle]
- id: steady
  prompt: a snowman melting
  synopsis: [a snowman, a puddle with a carrot]
"""


def _poison_text_encoder(monkeypatch) -> None:
    """Text embeddings of any text with POISON become NaN, as an fp16 overflow would make them."""
    from vstar_model.sampling import unet as sampling

    real = sampling.encode_text

    def encode_text(model, texts):
        embeddings = real(model, texts)
        return embeddings.fill_(float("nan")) if any("POISON" in t for t in texts) else embeddings

    monkeypatch.setattr(sampling, "encode_text", encode_text)


def test_nan_latents_raise_instead_of_becoming_a_video(tiny_model_dir, monkeypatch):
    from vstar_model.backbones.loading import load_backbone

    _poison_text_encoder(monkeypatch)
    model = load_backbone("tiny", path=str(tiny_model_dir))
    config = SamplingConfig(num_frames=4, height=64, width=64, num_inference_steps=1)
    with pytest.raises(FloatingPointError, match="non-finite latents"):
        generate_video(model, ["a POISON cloud"], config, seed=0)
    video = generate_video(model, ["a clear sky"], config, seed=0)
    assert torch.is_tensor(video.frames) and video.frames.shape[0] == 4


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_nan_video_fails_alone_and_a_transient_crash_is_retried(tiny_model_dir, tmp_path, monkeypatch):
    from tasks import generate

    _poison_text_encoder(monkeypatch)
    real = generate.generate_video
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def crashes_once_for_the_kettle(model, states, config, **kwargs):
        with lock:
            calls[states[0]] = calls.get(states[0], 0) + 1
            first = calls[states[0]] == 1
        if first and "kettle" in states[0]:
            raise RuntimeError("CUDA error: unspecified launch failure (injected, transient)")
        return real(model, states, config, **kwargs)

    monkeypatch.setattr(generate, "generate_video", crashes_once_for_the_kettle)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    root = str(tmp_path / "out")
    run_dir = run_flow(catalog, root, tiny_model_dir)

    rows = {r["catalog_id"]: r for r in read_table(f"{run_dir}/samples.parquet").to_pylist()}
    assert set(rows) == {"poisoned", "flaky", "steady"}  # rows lost: 0
    assert rows["poisoned"]["status"] == "failed" and rows["poisoned"]["video_uri"] is None
    assert "FloatingPointError" in rows["poisoned"]["error"] and "non-finite" in rows["poisoned"]["error"]
    assert calls["a cold kettle"] == 2 and rows["flaky"]["status"] == "ok"
    assert rows["steady"]["status"] == "ok"
    # A failed video leaves no cache record, so the next run tries it again.
    assert not exists(CachePaths(root).sample_record(rows["poisoned"]["sample_key"]))
    assert exists(CachePaths(root).sample_record(rows["flaky"]["sample_key"]))
    assert read_manifest(run_dir)["failures"] == {
        "synopses_fallback": 0, "synopses_failed": 0, "samples_failed": 1,
    }
    run = list_runs(root).to_pylist()[0]
    assert (run["status"], run["num_samples"], run["num_failed"]) == ("partial", 3, 1)
    assert verify_manifest(run_dir) == []
