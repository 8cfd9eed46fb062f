import pytest
import torch

from vstar_model.backbones.loading import load_backbone
from vstar_model.vsp.unet import spatial_cross_attention_layers
from vstar_model.sampling.unet import SamplingConfig, encode_text, generate_video


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_backbone("tiny", path=tiny_model_dir)


def _config(frames=16, steps=3):
    return SamplingConfig(num_frames=frames, height=64, width=64, num_inference_steps=steps, guidance_scale=9.0)


@pytest.mark.parametrize("frames", [16, 48, 64])
def test_one_pass_any_length(tiny, frames):
    calls = []
    video = generate_video(
        tiny, ["snow", "spring"], _config(frames), seed=0, progress=lambda d, t: calls.append((d, t))
    )
    assert video.frames.shape == (frames, 64, 64, 3) and video.frames.dtype == torch.uint8
    assert calls == [(i, 3) for i in range(1, 4)]
    assert set(video.timings) == {"encode_text_seconds", "denoise_seconds", "decode_seconds"}


def test_same_seed_same_video_other_seed_differs(tiny):
    a = generate_video(tiny, ["a", "b"], _config(8), seed=5).frames
    b = generate_video(tiny, ["a", "b"], _config(8), seed=5).frames
    c = generate_video(tiny, ["a", "b"], _config(8), seed=6).frames
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_vsp_off_equals_plain_prompt_on_every_frame(tiny):
    """Per-frame conditioning with identical states is exactly the backbone's own repeat."""
    plain = generate_video(tiny, ["a red fox"], _config(), seed=1).frames
    per_frame = generate_video(tiny, ["a red fox", "a red fox", "a red fox"], _config(), seed=1).frames
    # The text encoder's batch differs (2 vs 4 texts), so float rounding may move a pixel by one level.
    assert (plain.int() - per_frame.int()).abs().max() <= 1
    other = generate_video(tiny, ["a blue whale"], _config(), seed=1).frames
    assert (plain.int() - other.int()).abs().max() > 1


def test_identical_states_through_frame_hooks_equal_the_backbones_repeat(tiny):
    from vstar_model.vsp.unet import frame_batch, per_frame_text

    text = encode_text(tiny, ["", "a red fox"])
    sample = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        native = tiny.unet(sample, 500, encoder_hidden_states=text).sample
        with per_frame_text(tiny.unet, frame_batch(text[:1], text[1:].expand(8, -1, -1))):
            hooked = tiny.unet(sample, 500, encoder_hidden_states=text).sample
        with per_frame_text(tiny.unet, frame_batch(text[:1], torch.randn(8, 77, text.shape[-1]))):
            other = tiny.unet(sample, 500, encoder_hidden_states=text).sample
    assert torch.equal(native, hooked)
    assert not torch.allclose(native, other)


def test_last_state_changes_late_frames_more_than_early_ones(tiny):
    frames = 32
    base = generate_video(tiny, ["winter forest", "summer forest"], _config(frames), seed=2).frames.float()
    other = generate_video(tiny, ["winter forest", "burning desert at night"], _config(frames), seed=2).frames.float()
    change = (base - other).abs().mean(dim=(1, 2, 3))
    early, late = change[: frames // 4].mean(), change[-frames // 4 :].mean()
    assert late > 2 * early, (early.item(), late.item())


def test_unconditional_branch_sees_one_embedding_per_frame(tiny):
    frames = 8
    seen = []
    layer = spatial_cross_attention_layers(tiny.unet)[0]
    original = layer.processor

    def recording(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        seen.append(encoder_hidden_states.clone())  # what the attention itself receives
        return original(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    layer.set_processor(recording)
    try:
        generate_video(tiny, ["dawn", "noon", "dusk"], _config(frames, steps=1), seed=0)
    finally:
        layer.set_processor(original)
    (ehs,) = seen
    text = encode_text(tiny, ["", "dawn", "noon", "dusk"])  # the same batch the sampler encodes
    uncond, states = text[0], text[1:]
    assert ehs.shape[0] == 2 * frames
    assert all(torch.equal(row, uncond) for row in ehs[:frames])
    assert torch.equal(ehs[frames], states[0]) and torch.equal(ehs[-1], states[-1])
    assert not torch.equal(ehs[frames + 1], states[0])


def test_invalid_requests_are_named(tiny):
    with pytest.raises(ValueError, match="height=60"):
        generate_video(tiny, ["x"], SamplingConfig(num_frames=8, height=60, width=64), seed=0)
    with pytest.raises(ValueError, match="3 states cannot be spread over 2 frames"):
        generate_video(tiny, ["a", "b", "c"], _config(frames=2), seed=0)
    with pytest.raises(ValueError, match="at least one"):
        generate_video(tiny, [], _config(), seed=0)


def test_animatediff_refuses_clips_past_its_positional_embedding(tiny_animatediff_dir):
    model = load_backbone("animatediff", path=tiny_animatediff_dir)
    with pytest.raises(ValueError, match="limit of 32"):
        generate_video(model, ["x"], SamplingConfig(num_frames=40, height=64, width=64), seed=0)
    video = generate_video(
        model, ["a", "b"], SamplingConfig(num_frames=8, height=64, width=64, num_inference_steps=2), seed=0
    )
    assert video.frames.shape == (8, 64, 64, 3)


def _first_guided_step(tiny, monkeypatch, guidance_scale: float) -> dict:
    """What ``generate_video``'s first DDIM step received: the guided noise and the latents."""
    from diffusers import DDIMScheduler

    seen = {}
    real_step = DDIMScheduler.step

    def recording_step(self, model_output, timestep, sample, *args, **kwargs):
        seen.setdefault("noise", model_output.clone())
        seen.setdefault("latents", sample.clone())
        seen.setdefault("timestep", timestep)
        return real_step(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(DDIMScheduler, "step", recording_step)
    config = SamplingConfig(
        num_frames=8, height=64, width=64, num_inference_steps=2, guidance_scale=guidance_scale,
        negative_prompt="a blurry still photo",
    )
    generate_video(tiny, ["a red fox running"], config, seed=0)
    return seen


@pytest.mark.parametrize("guidance_scale", [0.0, 1.0, 9.0])
def test_guided_noise_is_uncond_plus_g_times_cond_minus_uncond(tiny, monkeypatch, guidance_scale):
    """One guided step against ε_u + g·(ε_c − ε_u), each branch its own UNet call on its own text:
    the unconditional branch is the negative prompt, g = 0 gives it, g = 1 the conditional
    prediction, and larger g goes past ε_c, away from ε_u."""
    seen = _first_guided_step(tiny, monkeypatch, guidance_scale)
    latents, timestep = seen["latents"], seen["timestep"]
    with torch.no_grad():
        uncond, cond = (
            tiny.unet(latents, timestep, encoder_hidden_states=encode_text(tiny, [text])).sample
            for text in ("a blurry still photo", "a red fox running")
        )
    assert (cond - uncond).abs().mean() > 1e-3  # the two branches really differ
    expected = uncond + guidance_scale * (cond - uncond)
    torch.testing.assert_close(seen["noise"], expected, atol=1e-4, rtol=1e-4)
    if guidance_scale == 1.0:
        torch.testing.assert_close(seen["noise"], cond, atol=1e-5, rtol=1e-5)
    if guidance_scale > 1.0:  # pushed towards the conditional prediction and beyond it
        towards = torch.nn.functional.cosine_similarity((seen["noise"] - cond).flatten(), (cond - uncond).flatten(), dim=0)
        assert towards > 0.999


def test_tar_is_applied_in_the_step_window_only(tiny, monkeypatch):
    import vstar_model.tar.unet as tar_module

    calls = []
    real = tar_module.tar_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tar_module, "tar_attention", counting)
    config = tar_module.TARConfig(sigmas={64: 1.0}, active_steps=2)
    with_tar = generate_video(tiny, ["a", "b"], _config(8, steps=4), seed=0, tar=config).frames
    levels = tar_module.temporal_attention_levels(tiny.unet, include_stem=False)  # TAR's layers
    layers_at_64 = sum(level == 64 for level in levels.values())
    assert len(calls) == 2 * layers_at_64  # two of four steps, every level-64 temporal layer
    calls.clear()
    without = generate_video(tiny, ["a", "b"], _config(8, steps=4), seed=0, tar=None).frames
    assert calls == []
    assert not torch.equal(with_tar, without)
    assert tiny.unet.attn_processors.keys() and not any(
        isinstance(p, tar_module.TARAttnProcessor) for p in tiny.unet.attn_processors.values()
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_the_same_loop(tiny_model_dir, tiny, dtype):
    """fp16/bf16 as on a GPU (here on CPU kernels): weights, TAR bands and VSP hooks in that dtype,
    the result close to float32's."""
    model = load_backbone("tiny", path=tiny_model_dir, dtype=dtype)
    assert {p.dtype for p in model.unet.parameters()} == {getattr(torch, dtype)}
    config = SamplingConfig(num_frames=16, height=64, width=64, num_inference_steps=4)
    half = generate_video(model, ["snow", "spring"], config, seed=0, tar="64D1").frames.float()
    full = generate_video(tiny, ["snow", "spring"], config, seed=0, tar="64D1").frames.float()
    assert (half - full).abs().mean() < 4.0  # of 255: rounding, not a different video
