"""The analyze-attention flow on the tiny model: real and generated maps, conditions, versioned output."""

from __future__ import annotations

import pytest

from flows.analyze import analyze_attention
from tasks.analysis import analysis_settings, condition_tar
from tasks.jobs import ModelSettings
from vstar_data.manifest import verify_manifest
from vstar_data.schemas import read_table
from vstar_data.storage import list_files
from vstar_model.video.writer import encode_mp4

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_analysis_of_real_and_generated_videos_under_conditions(tmp_path, tiny_model_dir):
    import torch

    clips = tmp_path / "real"
    clips.mkdir()
    frames = torch.randint(0, 255, (12, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (clips / "clip.mp4").write_bytes(encode_mp4(frames))
    directory = analyze_attention(
        output_root=str(tmp_path / "out"), frames=[8], conditions=["off", "64D1", "identity@64"],
        real_videos=str(clips), model=ModelSettings(path=str(tiny_model_dir), steps=2),
    )
    assert "/analyses/" in directory
    rows = read_table(f"{directory}/attention.parquet").to_pylist()
    assert {(r["source"], r["condition"]) for r in rows} == {
        ("real", "real"), ("generated", "off"), ("generated", "64D1"), ("generated", "identity@64"),
    }
    generated_off = [r for r in rows if r["condition"] == "off"]
    assert {r["step"] for r in generated_off} == {0, 1}
    assert {r["level"] for r in generated_off} == {64, 32, 16, 8}
    assert all(r["num_frames"] == 8 for r in rows)
    # Replacing the map by the identity at level 64 makes it exactly band-like there (in the
    # layers TAR touches: not the stem, transformer_in, whose map stays the model's own).
    identity_64 = [r for r in rows if r["condition"] == "identity@64" and r["level"] == 64]
    replaced = [r for r in identity_64 if not r["layer"].startswith("transformer_in.")]
    assert replaced and all(r["band_score"] == pytest.approx(1.0) for r in replaced)
    assert all(r["band_score"] != pytest.approx(1.0) for r in identity_64 if r not in replaced)
    assert all(r["step"] is None for r in rows if r["source"] == "real")
    files = list_files(directory)
    assert {"plots/attention_8f.png", "plots/band_scores.png", "plots/delta_a.png"} <= set(files)
    assert {"videos/off__8f.mp4", "videos/64D1__8f.mp4", "videos/identity_at_64__8f.mp4"} <= set(files)
    assert verify_manifest(directory) == []


def test_analysis_of_a_wan_model_per_block(tmp_path, tiny_wan_dir):
    """tiny-wan: frame-to-frame maps per transformer block, real and generated, TAR making them more band-like."""
    import torch

    clips = tmp_path / "real"
    clips.mkdir()
    frames = torch.randint(0, 255, (17, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (clips / "clip.mp4").write_bytes(encode_mp4(frames))
    directory = analyze_attention(
        output_root=str(tmp_path / "out"), frames=[17], conditions=["off", "b0-1D0.5"], real_videos=str(clips),
        model=ModelSettings(preset="tiny-wan", path=str(tiny_wan_dir), steps=2, height=32, width=32),
    )
    rows = read_table(f"{directory}/attention.parquet").to_pylist()
    assert {(r["source"], r["condition"]) for r in rows} == {("real", "real"), ("generated", "off"),
                                                            ("generated", "b0-1D0.5")}
    assert all(r["level"] is None and r["num_frames"] == 5 for r in rows)  # 17 frames → 5 latent frames
    generated = [r for r in rows if r["source"] == "generated"]
    assert {(r["step"], r["block"]) for r in generated if r["condition"] == "off"} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    score = {(r["condition"], r["step"], r["block"]): r["band_score"] for r in generated}
    assert all(score[("b0-1D0.5", step, block)] > score[("off", step, block)] for step, block in [(0, 0), (0, 1)])
    assert {r["block"] for r in rows if r["source"] == "real"} == {0, 1}
    files = list_files(directory)
    assert {"plots/attention_17f.png", "plots/band_scores.png", "videos/b0-1D0.5__17f.mp4"} <= set(files)
    assert verify_manifest(directory) == []


def test_wan_conditions_and_lengths_are_checked():
    wan = ModelSettings(preset="tiny-wan")
    assert analysis_settings(None, None, wan) == ([17, 33], ["off", "b0-1D1s0.5"])
    assert analysis_settings(None, None, ModelSettings()) == ([16, 48], ["off", "64D1", "identity@64", "ones@64"])
    with pytest.raises(ValueError, match="makes 4k\\+1 frames .* use 13 or 17"):
        analysis_settings([16], ["off"], wan)
    with pytest.raises(ValueError, match="'identity@64': map replacements are for UNet levels"):
        analysis_settings([17], ["identity@64"], wan)
    with pytest.raises(ValueError, match="condition '64D1' for a Wan model: unknown DiT TAR preset"):
        analysis_settings([17], ["64D1"], wan)
    with pytest.raises(ValueError, match="unknown TAR preset 'b0D1'"):
        analysis_settings([16], ["b0D1"], ModelSettings())


def test_conditions_are_checked():
    assert condition_tar("off") is None
    assert condition_tar("ones@64_32").replace == "ones"
    with pytest.raises(ValueError, match="'blur'"):
        condition_tar("blur@64")
    with pytest.raises(ValueError, match="'6x'"):
        condition_tar("identity@6x")
