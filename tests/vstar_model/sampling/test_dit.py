"""Our flow-matching loop for Wan 2.1 on the tiny random Wan: one pass, any 4k+1 length, VSP, CFG, RIFLEx."""

import pytest
import torch

from vstar_model.backbones.loading import load_backbone
from vstar_model.sampling import generate_video
from vstar_model.sampling.dit import FlowMatchingConfig, encode_text
from vstar_model.vsp.dit import cross_attention_layers


@pytest.fixture(scope="module")
def tiny_wan(tiny_wan_dir):
    return load_backbone("tiny-wan", path=tiny_wan_dir)


def _config(frames=17, steps=3, size=32, **overrides):
    return FlowMatchingConfig(num_frames=frames, height=size, width=size, num_inference_steps=steps, **overrides)


@pytest.mark.parametrize("frames", [17, 33])
def test_one_pass_makes_the_frames_asked_for(tiny_wan, frames):
    calls = []
    video = generate_video(tiny_wan, ["snow", "spring"], _config(frames, size=64), seed=0,
                           progress=lambda done, total: calls.append((done, total)))
    assert video.frames.shape == (frames, 64, 64, 3) and video.frames.dtype == torch.uint8
    assert calls == [(i, 3) for i in range(1, 4)]
    assert set(video.timings) == {"encode_text_seconds", "denoise_seconds", "decode_seconds"}
    assert video.frames.float().std() > 1  # a decoded video, not a constant


@pytest.mark.parametrize("frames", [161, 241])
def test_long_clips_run_in_one_pass(tiny_wan, frames):
    """Twice and three times Wan's 81 trained frames, one denoising pass over all 41 / 61 latent frames."""
    seen = []
    hook = tiny_wan.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].shape[2]), with_kwargs=True)
    try:
        video = generate_video(tiny_wan, ["dawn", "noon", "dusk"], _config(frames, steps=1, size=16), seed=0)
    finally:
        hook.remove()
    assert video.frames.shape == (frames, 16, 16, 3)
    assert seen == [1 + (frames - 1) // 4] * 2  # one conditional and one unconditional call, all frames at once


def test_same_seed_same_video_other_seed_differs(tiny_wan):
    a = generate_video(tiny_wan, ["a", "b"], _config(), seed=5).frames
    b = generate_video(tiny_wan, ["a", "b"], _config(), seed=5).frames
    c = generate_video(tiny_wan, ["a", "b"], _config(), seed=6).frames
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_identical_states_equal_the_plain_prompt(tiny_wan):
    plain = generate_video(tiny_wan, ["a red fox"], _config(), seed=1).frames
    per_frame = generate_video(tiny_wan, ["a red fox"] * 3, _config(), seed=1).frames
    assert (plain.int() - per_frame.int()).abs().max() <= 1  # float rounding of another batch at most
    other = generate_video(tiny_wan, ["a blue whale"], _config(), seed=1).frames
    assert (plain.int() - other.int()).abs().max() > 1


def test_vsp_processors_are_installed_only_during_generation(tiny_wan):
    seen = []
    transformer = tiny_wan.transformer
    hook = transformer.blocks[0].attn2.register_forward_pre_hook(
        lambda module, args: seen.append((type(module.processor).__name__, args[1].shape[1])))
    try:
        generate_video(tiny_wan, ["winter", "spring"], _config(17, steps=1), seed=0)
    finally:
        hook.remove()
    text = encode_text(tiny_wan, ["x"]).shape[1]
    # conditional call: one text per latent frame (5 × L tokens); unconditional: the negative prompt once
    assert seen == [("PerFrameCrossAttnProcessor", 5 * text), ("PerFrameCrossAttnProcessor", text)]
    assert {type(layer.processor).__name__ for layer in cross_attention_layers(transformer)} == {"WanAttnProcessor"}


def test_the_negative_prompt_steers_the_unconditional_branch(tiny_wan):
    a = generate_video(tiny_wan, ["a cat"], _config(guidance_scale=5.0), seed=0).frames
    b = generate_video(tiny_wan, ["a cat"], _config(guidance_scale=5.0, negative_prompt="static, blurred"), seed=0).frames
    assert not torch.equal(a, b)
    # At guidance 1 the unconditional prediction cancels out: the negative prompt no longer matters.
    c = generate_video(tiny_wan, ["a cat"], _config(guidance_scale=1.0), seed=0).frames
    d = generate_video(tiny_wan, ["a cat"], _config(guidance_scale=1.0, negative_prompt="static, blurred"), seed=0).frames
    assert (c.int() - d.int()).abs().max() <= 1


def test_the_flow_shift_reaches_the_schedule(tiny_wan, monkeypatch):
    sigmas = {}
    scheduler_class = type(tiny_wan.scheduler)  # the loop makes a fresh one of the checkpoint's class
    original = scheduler_class.set_timesteps

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        sigmas[self.config.flow_shift] = self.sigmas.clone()

    monkeypatch.setattr(scheduler_class, "set_timesteps", recording)
    three = generate_video(tiny_wan, ["a"], _config(flow_shift=3.0), seed=0).frames
    five = generate_video(tiny_wan, ["a"], _config(flow_shift=5.0), seed=0).frames
    assert not torch.equal(three, five)
    # σ' = s·σ / (1 + (s − 1)·σ): a larger shift keeps the schedule noisier for longer
    assert (sigmas[5.0][1:-1] > sigmas[3.0][1:-1]).all() and sigmas[3.0][0] == sigmas[5.0][0]


def test_text_embeddings_are_zero_after_each_texts_tokens(tiny_wan):
    text = encode_text(tiny_wan, ["a cat", "a much longer prompt about a cat"])
    tokens = tiny_wan.tokenizer(["a cat"]).input_ids[0]
    assert text[0, len(tokens):].abs().max() == 0 and text[0, len(tokens) - 1].abs().max() > 0
    assert text.shape[1] == tiny_wan.tokenizer.model_max_length


def test_riflex_changes_a_clip_past_its_period_only(tiny_wan):
    short = dict(frames=17, steps=1, size=16)
    assert torch.equal(generate_video(tiny_wan, ["a"], _config(**short), seed=0).frames,
                       generate_video(tiny_wan, ["a"], _config(**short, riflex=True), seed=0).frames)
    long = dict(frames=161, steps=1, size=16)  # 41 latent frames > the tiny RoPE's period of 29
    assert not torch.equal(generate_video(tiny_wan, ["a"], _config(**long), seed=0).frames,
                           generate_video(tiny_wan, ["a"], _config(**long, riflex=True), seed=0).frames)


def test_bad_settings_are_refused_with_reasons(tiny_wan):
    with pytest.raises(ValueError, match=r"4k\+1 frames.*16 frames is not one; use 13 or 17"):
        generate_video(tiny_wan, ["a"], _config(frames=16), seed=0)
    with pytest.raises(ValueError, match="height=40 must be a positive multiple of 16"):
        generate_video(tiny_wan, ["a"], _config(size=40), seed=0)
    with pytest.raises(ValueError, match="6 states cannot be spread over 5 latent frames"):
        generate_video(tiny_wan, list("abcdef"), _config(frames=17), seed=0)


def test_nan_latents_raise_instead_of_becoming_a_video(tiny_wan, monkeypatch):
    from vstar_model.sampling import dit

    real = dit.encode_text
    monkeypatch.setattr(dit, "encode_text", lambda model, texts: real(model, texts).fill_(float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite latents"):
        generate_video(tiny_wan, ["a"], _config(steps=1), seed=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_the_same_loop(tiny_wan_dir, tiny_wan, dtype):
    """bf16/fp16 as on a GPU (here on CPU kernels): transformer, text encoder and VSP in that dtype,
    the VAE in float32; the video close to float32's."""
    model = load_backbone("tiny-wan", path=tiny_wan_dir, dtype=dtype)
    half = generate_video(model, ["snow", "spring"], _config(), seed=0).frames.float()
    full = generate_video(tiny_wan, ["snow", "spring"], _config(), seed=0).frames.float()
    assert (half - full).abs().mean() < 4.0  # of 255: rounding, not a different video
