"""Wan 2.1 presets, the tiny random Wan, and loading them with the real from_pretrained code."""

import json

import pytest
import torch

from vstar_model.backbones.loading import BackboneNotFound, files_to_download, load_backbone, resolve_location
from vstar_model.backbones.presets import PRESETS, WAN_NEGATIVE_PROMPT, get_preset
from vstar_model.backbones.tiny_wan import build_tiny_wan_transformer, save_tiny_wan


def test_wan_presets_carry_wans_defaults():
    for name, repo in (("wan2.1-1.3b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"), ("wan2.1-14b", "Wan-AI/Wan2.1-T2V-14B-Diffusers")):
        preset = get_preset(name)
        assert (preset.family, preset.source) == ("wan", repo)
        assert (preset.height, preset.width, preset.num_frames, preset.num_inference_steps) == (480, 832, 81, 50)
        assert (preset.guidance_scale, preset.flow_shift, preset.fps, preset.dtype) == (5.0, 3.0, 16, "bfloat16")
        assert preset.negative_prompt == WAN_NEGATIVE_PROMPT
        assert preset.latent_frames(81) == 21
        assert "transformer" in preset.components and "unet" not in preset.components
    assert get_preset("tiny-wan").source == "builtin:tiny-wan"


def test_wan_presets_default_to_the_dit_tar_preset_and_tiny_wan_to_both_its_blocks():
    from vstar_model.tar.dit import DEFAULT_PRESET, parse_dit_tar

    assert get_preset("wan2.1-1.3b").default_tar == DEFAULT_PRESET  # the first 10 of its 30 blocks
    assert get_preset("wan2.1-14b").default_tar == "b0-12D1s0.5"  # the first third of its 40
    tiny = parse_dit_tar(get_preset("tiny-wan").default_tar)
    assert sorted(tiny.blocks) == list(range(len(build_tiny_wan_transformer().blocks)))


@pytest.mark.parametrize("frames", [16, 18, 80])
def test_wan_refuses_frame_counts_its_vae_cannot_make_and_names_the_nearest(frames):
    below = frames - (frames - 1) % 4
    with pytest.raises(ValueError, match=rf"4k\+1 frames.*{frames} frames is not one; use {below} or {below + 4}"):
        get_preset("tiny-wan").check_frames(frames)


def test_wan_frame_counts_map_to_latent_frames_and_unets_keep_theirs():
    wan = get_preset("tiny-wan")
    assert [wan.latent_frames(n) for n in (1, 5, 17, 33, 81, 161, 241)] == [1, 2, 5, 9, 21, 41, 61]
    assert get_preset("tiny").latent_frames(16) == 16  # no temporal compression in the UNets' VAE
    with pytest.raises(ValueError, match="limit of 32"):
        get_preset("animatediff").check_frames(33)


def test_tiny_wan_is_saved_in_the_hub_layout(tiny_wan_dir):
    index = json.loads((tiny_wan_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_wan_dir / sub).is_dir(), sub
    scheduler = json.loads((tiny_wan_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "UniPCMultistepScheduler"
    assert (scheduler["prediction_type"], scheduler["use_flow_sigmas"], scheduler["flow_shift"]) == (
        "flow_prediction", True, 3.0)


def test_tiny_wan_weights_are_deterministic_and_seeded(tmp_path):
    first, second = save_tiny_wan(tmp_path / "a", seed=3), save_tiny_wan(tmp_path / "b", seed=3)
    for sub in ("transformer", "vae", "text_encoder"):
        (fa,) = (first / sub).glob("*.safetensors")
        (fb,) = (second / sub).glob("*.safetensors")
        assert fa.read_bytes() == fb.read_bytes(), sub
    a, c = build_tiny_wan_transformer(3), build_tiny_wan_transformer(4)
    assert not torch.equal(a.proj_out.weight, c.proj_out.weight)


def test_tiny_wan_tokenizer_loads_with_autotokenizer_offline(tiny_wan_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_wan_dir / "tokenizer")
    tokens = tokenizer("a cat in the snow", padding="max_length", max_length=32, return_attention_mask=True)
    assert tokens.input_ids[tokens.attention_mask.index(0) - 1] == tokenizer.eos_token_id == 1
    assert tokenizer.pad_token_id == 0 and tokens.input_ids[-1] == 0
    assert tokenizer.decode(tokens.input_ids, skip_special_tokens=True) == "a cat in the snow"


def test_tiny_wan_loads_through_load_backbone(tiny_wan_dir):
    model = load_backbone("tiny-wan", path=tiny_wan_dir)
    assert type(model.transformer).__name__ == "WanTransformer3DModel"
    assert type(model.vae).__name__ == "AutoencoderKLWan" and model.vae.dtype == torch.float32
    assert type(model.text_encoder).__name__ == "UMT5EncoderModel"
    assert type(model.scheduler).__name__ == "UniPCMultistepScheduler"
    assert len(model.transformer.blocks) >= 2  # block presets of TAR need more than one block
    assert (model.vae_scale_factor, model.temporal_compression) == (8, 4)
    assert model.location == str(tiny_wan_dir) and model.family == "wan"


def test_builtin_tiny_wan_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSTAR_CACHE_DIR", str(tmp_path))
    first = resolve_location(get_preset("tiny-wan"))
    assert first.unet == first.base / "transformer" and str(first) == str(first.base)
    stamp = (first.unet / "config.json").stat().st_mtime_ns
    assert resolve_location(get_preset("tiny-wan")).unet == first.unet
    assert (first.unet / "config.json").stat().st_mtime_ns == stamp


def test_half_precision_loads_transformer_and_text_encoder_but_keeps_the_vae_in_float32(tiny_wan_dir):
    model = load_backbone("tiny-wan", path=tiny_wan_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert model.transformer.proj_out.weight.dtype == torch.bfloat16
    assert model.text_encoder.dtype == torch.bfloat16 and model.vae.dtype == torch.float32


def test_missing_wan_weights_name_the_preset_and_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(BackboneNotFound) as info:
        load_backbone("wan2.1-1.3b")
    assert "'wan2.1-1.3b'" in str(info.value)
    assert "huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in str(info.value)


def test_a_local_folder_without_a_transformer_is_incomplete(tiny_wan_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_wan_dir, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(BackboneNotFound, match="'tiny-wan': incomplete weights"):
        load_backbone("tiny-wan", path=broken)


def test_hub_download_takes_the_loaded_folders_of_a_wan_repository():
    listing = [
        "model_index.json", "README.md", "assets/logo.png",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
        "tokenizer/spiece.model", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors.index.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "Wan2.1_VAE.pth", "diffusion_pytorch_model.safetensors",  # single-file checkpoints at the root
    ]
    chosen = set(files_to_download(listing, PRESETS["wan2.1-1.3b"].components))
    weights = {name for name in chosen if name.endswith((".safetensors", ".pth"))}
    assert weights == {
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    assert {"tokenizer/spiece.model", "scheduler/scheduler_config.json", "model_index.json"} <= chosen
