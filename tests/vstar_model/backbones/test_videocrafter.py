import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from vstar_model.backbones.loading import load_backbone

from vstar_model.backbones.presets import get_preset
from vstar_model.sampling.unet import SamplingConfig, generate_video
from vstar_model.backbones.tiny import build_tiny_unet3d, build_tiny_videocrafter_unet, save_tiny_videocrafter
from vstar_model.backbones.videocrafter import UNet3DVideoCrafterConditionModel, rescale_ddim_step, signal_scale


@pytest.fixture(scope="module")
def tiny_videocrafter_dir(tmp_path_factory) -> Path:
    return save_tiny_videocrafter(tmp_path_factory.mktemp("tiny-vc2"), seed=0)


def unet_inputs(batch: int = 2, frames: int = 5):
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, 4, frames, 8, 8, generator=generator)
    text = torch.randn(batch, 7, 32, generator=generator)
    return sample, torch.tensor(500), text


@torch.no_grad()
def test_fps_embedding_is_the_only_difference_from_unet3d():
    videocrafter = build_tiny_videocrafter_unet(seed=3)
    plain = build_tiny_unet3d(seed=3)
    missing, unexpected = plain.load_state_dict(videocrafter.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == [
        "fps_embedding.linear_1.bias", "fps_embedding.linear_1.weight",
        "fps_embedding.linear_2.bias", "fps_embedding.linear_2.weight",
    ]
    sample, t, text = unet_inputs()
    at_28 = videocrafter(sample, t, text, fps=28).sample
    assert not torch.allclose(at_28, videocrafter(sample, t, text, fps=8).sample)  # fps conditions the output
    assert not torch.allclose(at_28, plain(sample, t, text).sample)
    videocrafter.fps_embedding.linear_2.weight.zero_()
    videocrafter.fps_embedding.linear_2.bias.zero_()
    torch.testing.assert_close(videocrafter(sample, t, text, fps=28).sample, plain(sample, t, text).sample)


@torch.no_grad()
def test_fps_per_video_of_the_batch():
    unet = build_tiny_videocrafter_unet(seed=0)
    sample, t, text = unet_inputs(batch=2)
    mixed = unet(sample, t, text, fps=torch.tensor([8, 28])).sample
    torch.testing.assert_close(mixed[1:], unet(sample[1:], t, text[1:], fps=28).sample)
    torch.testing.assert_close(mixed[:1], unet(sample[:1], t, text[:1], fps=8).sample)


def test_missing_fps_is_a_clear_error():
    sample, t, text = unet_inputs()
    with pytest.raises(ValueError, match="fps"):
        build_tiny_videocrafter_unet()(sample, t, text)


@torch.no_grad()
def test_saved_like_the_public_conversion_and_loaded_back(tmp_path):
    unet = build_tiny_videocrafter_unet(seed=0)
    unet.save_pretrained(tmp_path)  # at the folder's root, as in adamdad/videocrafterv2_diffusers
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "UNet3DVideoCrafterConditionModel" and config["fps_cond"] is True
    loaded = UNet3DVideoCrafterConditionModel.from_pretrained(tmp_path)
    sample, t, text = unet_inputs()
    torch.testing.assert_close(loaded(sample, t, text, fps=28).sample, unet(sample, t, text, fps=28).sample)


def test_signal_scale_is_lvdms():
    scale = signal_scale()
    assert scale.shape == (1000,)
    torch.testing.assert_close(scale[:400], torch.linspace(1.0, 0.7, 400))
    assert torch.all(scale[400:] == 0.7)
    with pytest.raises(ValueError, match="1001"):
        signal_scale(ramp_steps=1001)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_rescaled_step_is_lvdms_ddim_update(tiny_model_dir, eta):
    """Against LVDM's p_sample_ddim written out: x̂₀ /= s_t; x_prev = √ᾱ_prev·s_prev·x̂₀ + dir + σ·z."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(tiny_model_dir / "scheduler")
    scheduler.set_timesteps(25)
    scale = signal_scale()
    generator = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(1, 4, 3, 4, 4, generator=generator) for _ in range(3))
    alphas = scheduler.alphas_cumprod
    # first step, the step into the ramp of s (t=401 → 361, s 0.7 → 0.73) and the last (t=1 → ᾱ₀, s₀ = 1)
    for t in scheduler.timesteps[[0, 14, -1]]:
        t = int(t)
        prev_t = t - 40
        a_t = alphas[t]
        a_prev = alphas[prev_t] if prev_t >= 0 else alphas[0]
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        pred_x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt() / scale[t]
        expected = a_prev.sqrt() * scale[max(prev_t, 0)] * pred_x0 + (1 - a_prev - sigma**2).sqrt() * eps + sigma * z
        out = scheduler.step(eps, t, x, eta=eta, variance_noise=z)
        actual = rescale_ddim_step(out.prev_sample, out.pred_original_sample, scheduler, t, scale)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_rescaled_step_refuses_clipped_samples():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(clip_sample=True)
    scheduler.set_timesteps(25)
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="clip_sample"):
        rescale_ddim_step(x, x, scheduler, 961, signal_scale())


def test_videocrafter2_preset_has_the_authors_defaults():
    preset = get_preset("videocrafter2")
    assert (preset.height, preset.width, preset.num_inference_steps, preset.guidance_scale) == (320, 512, 25, 12.0)
    assert preset.fps_condition == 28 and preset.rescaled_schedule and preset.family == "videocrafter"


def test_videocrafter2_generates_a_long_video_with_vsp_and_tar(tiny_videocrafter_dir):
    model = load_backbone("videocrafter2", path=tiny_videocrafter_dir)
    assert type(model.unet).__name__ == "UNet3DVideoCrafterConditionModel"
    config = SamplingConfig(num_frames=48, height=64, width=64, num_inference_steps=3)
    video = generate_video(model, ["snow", "melting snow", "spring flowers"], config, seed=0, tar="64D1_32D8")
    assert video.frames.shape == (48, 64, 64, 3)
    again = generate_video(model, ["snow", "melting snow", "spring flowers"], config, seed=0, tar="64D1_32D8")
    assert torch.equal(video.frames, again.frames)


def test_fps_condition_and_rescaled_schedule_reach_generation(tiny_videocrafter_dir):
    config = SamplingConfig(num_frames=8, height=64, width=64, num_inference_steps=3)
    preset = get_preset("videocrafter2")

    def frames(**changes):
        model = load_backbone(dataclasses.replace(preset, **changes), path=tiny_videocrafter_dir)
        return generate_video(model, ["a red ball"], config, seed=0).frames.float()

    reference = frames()
    assert not torch.equal(reference, frames(fps_condition=8))
    assert not torch.equal(reference, frames(rescaled_schedule=False))


def _hub_snapshot(hf_home: Path, repo: str, commit: str) -> Path:
    """A repository in the hub cache's layout (what ``huggingface-cli download`` leaves)."""
    cache = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    snapshot = cache / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def test_videocrafter2_loads_from_the_hub_cache_unet_and_components_from_two_repos(
    tiny_videocrafter_dir, tmp_path, monkeypatch
):
    hf_home = tmp_path / "hf"
    base = _hub_snapshot(hf_home, "cerspense/zeroscope_v2_576w", "a" * 40)
    for component in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(tiny_videocrafter_dir / component, base / component)
    shutil.copy(tiny_videocrafter_dir / "model_index.json", base)
    unet_repo = _hub_snapshot(hf_home, "adamdad/videocrafterv2_diffusers", "b" * 40)
    shutil.copytree(tiny_videocrafter_dir / "unet", unet_repo, dirs_exist_ok=True)  # config + weights at the root
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hf_home / "hub"))  # read at import

    model = load_backbone("videocrafter2", device="cpu")
    assert type(model.unet).__name__ == "UNet3DVideoCrafterConditionModel"
    assert model.revision == "a" * 40 + "+" + "b" * 40
    assert "adamdad--videocrafterv2_diffusers" in model.location



def test_tar_finds_the_same_temporal_layers_and_levels_as_in_unet3d():
    from vstar_model.tar.unet import temporal_attention_levels

    levels = temporal_attention_levels(build_tiny_videocrafter_unet())
    assert levels == temporal_attention_levels(build_tiny_unet3d())
    assert set(levels.values()) == {64, 32, 16, 8}


# config.json of adamdad/videocrafterv2_diffusers (the public conversion), key for key.
VIDEOCRAFTER2_CONFIG = {
    "_class_name": "UNet3DVideoCrafterConditionModel", "_diffusers_version": "0.26.3", "act_fn": "silu",
    "attention_head_dim": 64, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1, "fps_cond": True, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "out_channels": 4, "sample_size": None,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}


def test_the_public_conversions_config_builds_the_full_size_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(VIDEOCRAFTER2_CONFIG))
    config = UNet3DVideoCrafterConditionModel.load_config(tmp_path)
    with torch.device("meta"):  # shapes only: no memory for 1.4 B parameters
        unet = UNet3DVideoCrafterConditionModel.from_config(config)
    assert unet.config.fps_cond and unet.config.sample_size is None
    assert unet.fps_embedding.linear_1.weight.shape == (1280, 320)
    assert unet.fps_embedding.linear_2.weight.shape == (1280, 1280)
    assert 1.3e9 < sum(p.numel() for p in unet.parameters()) < 1.5e9  # VideoCrafter2's UNet: ~1.4 B
