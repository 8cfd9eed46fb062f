"""Temporal attention analysis: capture, real-video maps, band scores and rows (issue 7)."""

from __future__ import annotations

import math

import pytest
import torch

from vstar_model.analysis import temporal_attention as analysis
from vstar_model.analysis.temporal_attention import (
    attention_rows,
    band_mass,
    band_score,
    capture_attention,
    encode_frames,
    gaussian_band_fit,
    generated_video_attention,
    level_maps,
    mean_attention_map,
    real_video_attention,
    resize_frames,
)
from vstar_model.tar.attention import tar_attention_probs
from vstar_model.backbones.loading import load_backbone
from vstar_model.tar.bands import gaussian_band
from vstar_model.sampling.unet import SamplingConfig, encode_text, generate_video
from vstar_model.tar.unet import TARConfig, apply_tar, temporal_attention_levels

FRAMES = 8
STEPS = 3
# The first level-64 temporal layer of a UNet3DConditionModel.
STEM_LAYER = "transformer_in.transformer_blocks.0.attn1.processor"
# The first level-64 temporal layer that TAR regularises (it leaves the stem alone).
BLOCK_LAYER = "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.processor"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_backbone("tiny", path=tiny_model_dir)


def _config(frames=FRAMES, steps=STEPS):
    return SamplingConfig(num_frames=frames, height=64, width=64, num_inference_steps=steps)


def _unet_inputs(tiny, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, FRAMES, 8, 8, generator=generator)
    text = encode_text(tiny, ["", "a red fox", "a blue whale"][:batch])
    return sample, text


def _clip(frames=FRAMES, size=64, seed=0):
    """A smooth moving gradient, so neighbouring frames look alike (as in a real clip)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(base, size=(size, 2 * size), mode="bilinear")[0]
    shifted = torch.stack([images[:, :, i * 2 : i * 2 + size] for i in range(frames)])
    return (shifted * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# --- mean_attention_map -----------------------------------------------------------------------


def _qk(positions=10, heads=2, frames=6, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(positions, heads, frames, dim, generator=generator) * 2 for _ in range(2)]


@pytest.mark.parametrize("band", [None, gaussian_band(6, 1.0)], ids=["plain", "tar"])
def test_mean_map_is_the_mean_of_the_maps_in_chunks(monkeypatch, band):
    query, key = _qk()
    probs = tar_attention_probs(query, key, band)
    monkeypatch.setattr(analysis, "_CPU_CHUNK_ELEMENTS", 2 * 6 * 6 * 3)  # chunks of 3, last one short
    torch.testing.assert_close(mean_attention_map(query, key, band=band), probs.mean(dim=(0, 1)))
    per_head = mean_attention_map(query, key, band=band, per_head=True)
    torch.testing.assert_close(per_head, probs.mean(dim=0))


def test_mean_map_applies_the_mask():
    query, key = _qk()
    allowed = torch.ones(6, 6, dtype=torch.bool).triu()  # a frame may not look back
    masked = mean_attention_map(query, key, attn_mask=allowed)
    assert float(masked.tril(-1).abs().max()) == 0.0
    torch.testing.assert_close(masked.sum(-1), torch.ones(6))


@pytest.mark.parametrize(
    ("replace", "expected"), [("identity", torch.eye(6)), ("ones", torch.full((6, 6), 1 / 6))]
)
def test_mean_map_of_a_replaced_map_is_that_map(replace, expected):
    query, key = _qk()
    assert torch.equal(mean_attention_map(query, key, replace=replace), expected)
    per_head = mean_attention_map(query, key, replace=replace, per_head=True)
    assert torch.equal(per_head, expected.expand(2, 6, 6))


# --- capture ----------------------------------------------------------------------------------


def test_captured_maps_are_row_stochastic_n_by_n_per_layer_and_step(tiny):
    video, recorder = generated_video_attention(tiny, ["a fox", "a wolf"], _config(), seed=0)
    levels = temporal_attention_levels(tiny.unet)
    assert recorder.levels == levels
    assert recorder.steps == list(range(STEPS))
    assert set(recorder.maps) == {(step, name) for step in range(STEPS) for name in levels}
    assert len(set(recorder.timesteps.values())) == STEPS  # one timestep per denoising step
    for attention in recorder.maps.values():
        assert attention.shape == (FRAMES, FRAMES) and attention.dtype == torch.float32
        assert float(attention.min()) >= 0.0
        torch.testing.assert_close(attention.sum(dim=-1), torch.ones(FRAMES))
    assert video.frames.shape == (FRAMES, 64, 64, 3)


@pytest.mark.parametrize("tar", [None, "64D1_32D8"])
def test_capture_leaves_the_video_bit_identical(tiny, tar):
    before = tiny.unet.attn_processors
    plain = generate_video(tiny, ["a fox", "a wolf"], _config(steps=2), seed=3, tar=tar).frames
    captured, recorder = generated_video_attention(
        tiny, ["a fox", "a wolf"], _config(steps=2), seed=3, tar=tar
    )
    assert recorder.maps and torch.equal(captured.frames, plain)
    after = tiny.unet.attn_processors  # capture off again: the model's own processors
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)


@torch.no_grad()
@pytest.mark.parametrize(
    "tar", [None, "64D1", TARConfig(sigmas={32: 1.0}, replace="ones")], ids=["off", "64D1", "replace-32"]
)
def test_capture_leaves_the_unet_output_bit_identical(tiny, tar):
    sample, text = _unet_inputs(tiny)
    with apply_tar(tiny.unet, tar):
        plain = tiny.unet(sample, 500, encoder_hidden_states=text).sample
        with capture_attention(tiny.unet, reduce="per_head") as recorder:
            captured = tiny.unet(sample, 500, encoder_hidden_states=text).sample
    assert recorder.maps and torch.equal(captured, plain)


def test_only_the_chosen_steps_are_recorded(tiny):
    _, recorder = generated_video_attention(tiny, ["a fox"], _config(), seed=0, steps=[1])
    assert recorder.steps == [1] and set(recorder.timesteps) == {1}
    assert len(recorder.maps) == len(recorder.levels)
    with pytest.raises(ValueError, match=r"step 0 was not recorded; recorded steps: \[1\]"):
        recorder.maps_at(0)


@torch.no_grad()
@pytest.mark.parametrize(("layer", "regularised"), [(BLOCK_LAYER, True), (STEM_LAYER, False)], ids=["block", "stem"])
def test_recorded_map_under_tar_is_the_regularised_map(tiny, layer, regularised):
    """A' of one layer, recomputed from the hidden states that layer received; the stem
    (``transformer_in``), which TAR leaves alone, keeps its plain map."""
    attn = tiny.unet.get_submodule(layer.removesuffix(".processor"))
    seen = []
    hook = attn.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    sample, text = _unet_inputs(tiny)
    try:
        with apply_tar(tiny.unet, {64: 1.0}), capture_attention(tiny.unet) as recorder:
            tiny.unet(sample, 500, encoder_hidden_states=text)
        with capture_attention(tiny.unet) as plain:
            tiny.unet(sample, 500, encoder_hidden_states=text)
    finally:
        hook.remove()
    heads = attn.heads

    def split(x):
        return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    def plain_map(hidden):
        query, key = split(attn.to_q(hidden)), split(attn.to_k(hidden))
        return torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]), dim=-1).mean(dim=(0, 1))

    query, key = split(attn.to_q(seen[0])), split(attn.to_k(seen[0]))
    expected = tar_attention_probs(query, key, gaussian_band(FRAMES, 1.0)).mean(dim=(0, 1))
    torch.testing.assert_close(recorder.maps[(0, layer)], expected if regularised else plain_map(seen[0]))
    torch.testing.assert_close(plain.maps[(0, layer)], plain_map(seen[1]))
    assert not torch.allclose(expected, plain_map(seen[0]), atol=1e-4)  # A' and A differ here


@torch.no_grad()
def test_tar_entered_inside_or_outside_the_capture_records_the_same(tiny):
    sample, text = _unet_inputs(tiny)
    with capture_attention(tiny.unet) as outside, apply_tar(tiny.unet, "64D1"):
        tiny.unet(sample, 500, encoder_hidden_states=text)
    with apply_tar(tiny.unet, "64D1"), capture_attention(tiny.unet) as inside:
        tiny.unet(sample, 500, encoder_hidden_states=text)
    assert outside.maps.keys() == inside.maps.keys()
    for key, attention in outside.maps.items():
        assert torch.equal(attention, inside.maps[key]), key
    assert not any(getattr(p, "probe", None) for p in tiny.unet.attn_processors.values())


def test_small_sigma_tar_makes_the_maps_more_band_like(tiny):
    """Where TAR is active (level 64, step 0) the captured maps' band score rises."""
    config = TARConfig(sigmas={64: 1.0}, active_steps=1)
    _, plain = generated_video_attention(tiny, ["a fox"], _config(steps=2), seed=0)
    _, regularised = generated_video_attention(tiny, ["a fox"], _config(steps=2), seed=0, tar=config)

    def scores(recorder, step):
        by_level = level_maps(recorder.maps_at(step), recorder.levels)
        return {level: float(band_score(attention)) for level, attention in by_level.items()}

    assert scores(regularised, 0)[64] > scores(plain, 0)[64] + 0.02


@pytest.mark.parametrize("replace", ["identity", "ones"])
def test_replacement_records_exactly_the_replacing_map(tiny, replace):
    config = TARConfig(sigmas={64: 1.0, 16: 1.0}, replace=replace, active_steps=1)
    _, recorder = generated_video_attention(tiny, ["a fox"], _config(steps=2), seed=0, tar=config)
    expected = torch.eye(FRAMES) if replace == "identity" else torch.full((FRAMES, FRAMES), 1 / FRAMES)
    replaced = temporal_attention_levels(tiny.unet, include_stem=False)  # the stem is left alone too
    for (step, name), attention in recorder.maps.items():
        if step == 0 and replaced.get(name) in (64, 16):
            assert torch.equal(attention, expected), name
        else:
            assert not torch.equal(attention, expected), (step, name)


@torch.no_grad()
def test_batch_index_records_one_video_of_the_batch(tiny):
    sample, text = _unet_inputs(tiny, batch=3)
    with capture_attention(tiny.unet, batch_index=1) as second, capture_attention(tiny.unet) as everything:
        tiny.unet(sample, 500, encoder_hidden_states=text)
    with capture_attention(tiny.unet) as alone:
        tiny.unet(sample[1:2], 500, encoder_hidden_states=text[1:2])
    with capture_attention(tiny.unet, reduce="per_head", batch_index=-2) as per_head:
        tiny.unet(sample, 500, encoder_hidden_states=text)
    for key, attention in alone.maps.items():
        torch.testing.assert_close(second.maps[key], attention, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(per_head.maps[key].mean(dim=0), attention, atol=1e-5, rtol=1e-5)
    heads = tiny.unet.get_submodule(STEM_LAYER.removesuffix(".processor")).heads
    assert per_head.maps[(0, STEM_LAYER)].shape == (heads, FRAMES, FRAMES)
    assert not torch.allclose(everything.maps[(0, STEM_LAYER)], alone.maps[(0, STEM_LAYER)], atol=1e-4)
    with pytest.raises(ValueError, match="batch_index 3 is outside the UNet's batch of 3 video"):
        with capture_attention(tiny.unet, batch_index=3):
            tiny.unet(sample, 500, encoder_hidden_states=text)


def test_layers_called_outside_a_unet_call_are_not_recorded(tiny):
    attn = tiny.unet.get_submodule(STEM_LAYER.removesuffix(".processor"))
    with torch.no_grad(), capture_attention(tiny.unet) as recorder:
        attn(torch.randn(4, FRAMES, attn.to_q.in_features))
    assert recorder.maps == {}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduce": "max"}, "unknown attention reduce mode 'max'"),
        ({"steps": [0, -1]}, r"ints >= 0, got \[-1\]"),
        ({"steps": "01"}, "collection of step indices or None, got '01'"),
        ({"batch_index": 1.0}, "batch_index must be an int or None, got 1.0"),
    ],
)
def test_invalid_capture_settings(tiny, kwargs, message):
    with pytest.raises(ValueError, match=message):
        with capture_attention(tiny.unet, **kwargs):
            pass


def test_an_image_unet_is_rejected(image_unet):
    with pytest.raises(ValueError, match="UNet2DConditionModel has no temporal attention layers to capture"):
        with capture_attention(image_unet):
            pass


# --- real videos ------------------------------------------------------------------------------


def test_real_video_maps_come_from_the_noised_clip(tiny):
    clip = _clip()
    seen = []
    hook = tiny.unet.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(args), with_kwargs=True)
    try:
        maps = real_video_attention(tiny, clip, prompt="a sunset", timestep=300, seed=4)
    finally:
        hook.remove()
    sample, timestep = seen[0][:2]
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(tiny.scheduler.config)
    latents = encode_frames(tiny, clip)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(sample, scheduler.add_noise(latents, noise, torch.tensor([300])))
    assert timestep.tolist() == [300]
    assert set(maps) == set(temporal_attention_levels(tiny.unet))
    for attention in maps.values():
        assert attention.shape == (FRAMES, FRAMES)
        torch.testing.assert_close(attention.sum(dim=-1), torch.ones(FRAMES))
    again = real_video_attention(tiny, clip, prompt="a sunset", timestep=300, seed=4)
    noisier = real_video_attention(tiny, clip, prompt="a sunset", timestep=900, seed=4)
    assert all(torch.equal(again[name], maps[name]) for name in maps)
    assert not torch.allclose(noisier[STEM_LAYER], maps[STEM_LAYER], atol=1e-5)


def test_encode_frames_uses_the_vae_posterior_mean_and_scaling_factor(tiny):
    clip = _clip(frames=3)
    latents = encode_frames(tiny, clip, chunk_size=2)
    assert latents.shape == (1, 4, 3, 8, 8)
    images = clip.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        expected = tiny.vae.encode(images).latent_dist.mean * tiny.vae.config.scaling_factor
    torch.testing.assert_close(latents[0].permute(1, 0, 2, 3), expected)


def test_real_video_attention_on_animatediff(tiny_animatediff_dir):
    model = load_backbone("animatediff", path=tiny_animatediff_dir)
    maps = real_video_attention(model, _clip(frames=4), timestep=100)
    assert set(maps) == set(temporal_attention_levels(model.unet))
    assert all(m.shape == (4, 4) for m in maps.values())


@pytest.mark.parametrize(
    ("frames", "kwargs", "message"),
    [
        (torch.zeros(4, 60, 64, 3, dtype=torch.uint8), {}, "frames are 60×64; .* must be multiples of 8"),
        (torch.zeros(4, 64, 64, 3), {}, "must be a uint8 tensor"),
        (torch.zeros(4, 64, 64, dtype=torch.uint8), {}, r"got shape \(4, 64, 64\)"),
        (torch.zeros(4, 64, 64, 3, dtype=torch.uint8), {"timestep": 1000}, r"in \[0, 1000\), got 1000"),
    ],
)
def test_invalid_real_video_inputs(tiny, frames, kwargs, message):
    with pytest.raises(ValueError, match=message):
        real_video_attention(tiny, frames, **kwargs)


def test_resize_frames_covers_then_centre_crops():
    frames = torch.zeros(2, 40, 100, 3, dtype=torch.uint8)
    frames[:, :, 45:55] = 255  # a bright column in the middle
    out = resize_frames(frames, 64, 64)
    assert out.shape == (2, 64, 64, 3) and out.dtype == torch.uint8
    assert int(out[0, 32, 32, 0]) == 255 and int(out[0, 32, 0, 0]) == 0  # the centre survives the crop
    assert torch.equal(resize_frames(out, 64, 64), out)


# --- scores -----------------------------------------------------------------------------------


def _row_normalised(matrix):
    return matrix / matrix.sum(dim=-1, keepdim=True)


def test_band_score_of_reference_maps():
    n = 16
    assert float(band_score(torch.eye(n))) == pytest.approx(1.0)
    assert float(band_score(torch.full((n, n), 1 / n))) == pytest.approx(0.0, abs=1e-12)
    assert float(band_mass(torch.eye(n), width=0)) == pytest.approx(1.0)
    offsets = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
    avoids_neighbours = _row_normalised((offsets > 1).double())
    assert float(band_mass(avoids_neighbours)) == 0.0 and float(band_score(avoids_neighbours)) < 0


def test_band_score_falls_as_the_band_widens_and_compares_across_lengths():
    for n in (16, 48):
        scores = [float(band_score(_row_normalised(gaussian_band(n, s)))) for s in (0.5, 1.0, 2.0, 8.0)]
        assert scores == sorted(scores, reverse=True) and 0 < scores[-1] < scores[0] <= 1
    narrow_16 = float(band_score(_row_normalised(gaussian_band(16, 1.0))))
    narrow_48 = float(band_score(_row_normalised(gaussian_band(48, 1.0))))
    assert narrow_16 == pytest.approx(narrow_48, abs=0.05)  # same band, same score at any length


def test_band_scores_batch_over_leading_dimensions():
    maps = torch.stack([torch.eye(8), torch.full((8, 8), 1 / 8)])
    assert band_score(maps).shape == (2,)
    torch.testing.assert_close(band_score(maps), torch.stack([band_score(m) for m in maps]))


@pytest.mark.parametrize(
    ("attention", "width", "message"),
    [
        (torch.eye(4), 3, "band width 3 covers every frame of a 4-frame map"),
        (torch.eye(4), -1, "band width must be an int >= 0, got -1"),
        (torch.eye(4), 1.5, "got 1.5"),
        (torch.ones(3, 4), 1, r"must be \[\.\.\., N, N\], got shape \(3, 4\)"),
    ],
)
def test_band_score_rejects_bad_inputs(attention, width, message):
    with pytest.raises(ValueError, match=message):
        band_score(attention, width=width)


def test_gaussian_fit_recovers_the_band():
    for sigma in (1.7, 5.0):
        fit = gaussian_band_fit(gaussian_band(16, sigma))
        assert fit.sigma == pytest.approx(sigma, rel=0.05) and fit.correlation > 0.999
    assert gaussian_band_fit(torch.eye(16)).sigma < 0.5
    assert math.isnan(gaussian_band_fit(torch.full((8, 8), 1 / 8)).correlation)
    with pytest.raises(ValueError, match=r"one map \[N, N\], got shape \(2, 4, 4\)"):
        gaussian_band_fit(torch.ones(2, 4, 4))


# --- rows -------------------------------------------------------------------------------------


def test_rows_carry_context_level_and_scores():
    levels = {"a.processor": 64, "b.processor": 8}
    maps = {"a.processor": torch.eye(8), "b.processor": torch.full((8, 8), 1 / 8)}
    rows = attention_rows(maps, levels, width=2, run_id="r1", source="real", timestep=500)
    assert [row["layer"] for row in rows] == ["a.processor", "b.processor"]
    first, second = rows
    assert {k: first[k] for k in ("run_id", "source", "timestep", "level", "num_frames", "band_width")} == {
        "run_id": "r1",
        "source": "real",
        "timestep": 500,
        "level": 64,
        "num_frames": 8,
        "band_width": 2,
    }
    assert first["band_score"] == pytest.approx(1.0) and first["band_mass"] == pytest.approx(1.0)
    assert second["band_score"] == pytest.approx(0.0, abs=1e-12) and second["level"] == 8
    assert first["gaussian_sigma"] < 0.5 and math.isnan(second["gaussian_correlation"])


@pytest.mark.parametrize(
    ("maps", "context", "message"),
    [
        ({"a": torch.eye(4)}, {"level": 3}, r"context field\(s\) \['level'\] would overwrite"),
        ({"zzz": torch.eye(4)}, {}, "no level known for layer 'zzz'"),
        ({"a": torch.ones(2, 4, 4)}, {}, r"rows need maps \[N, N\], got shape \(2, 4, 4\)"),
    ],
)
def test_rows_reject_bad_inputs(maps, context, message):
    with pytest.raises(ValueError, match=message):
        attention_rows(maps, {"a": 64}, **context)


def test_level_maps_average_the_layers_of_a_level():
    levels = {"a": 32, "b": 64, "c": 64}
    maps = {"a": torch.eye(3), "b": torch.zeros(3, 3), "c": torch.ones(3, 3)}
    by_level = level_maps(maps, levels)
    assert list(by_level) == [64, 32]
    assert torch.equal(by_level[64], torch.full((3, 3), 0.5)) and torch.equal(by_level[32], torch.eye(3))
    with pytest.raises(ValueError, match=r"no level known for layer\(s\) \['d'\]"):
        level_maps({"d": torch.eye(3)}, levels)
