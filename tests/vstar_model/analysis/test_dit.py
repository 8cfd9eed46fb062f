"""Frame-to-frame attention maps of a DiT's full self-attention, their capture, band scores and plots."""

from __future__ import annotations

import math

import pytest
import torch

from vstar_model.analysis.dit import block_maps, capture_dit_attention, dit_attention_rows, frame_attention_map
from vstar_model.analysis.plots import attention_grid_figure, band_score_figure
from vstar_model.analysis.temporal_attention import band_score
from vstar_model.tar import full_attention
from vstar_model.tar.bands import gaussian_band
from vstar_model.tar.dit import apply_dit_tar

FRAMES, TOKENS = 4, 6
LATENT_FRAMES, HEIGHT, WIDTH = 5, 8, 12  # tiny Wan input; patch (1, 2, 2) → 24 tokens per frame


def _qk(batch=2, heads=3, head_dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, FRAMES * TOKENS, head_dim)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(2)]


def _dense_frame_map(query, key, band=None, strength=1.0):
    """From the whole L×L map: probabilities summed per key frame, averaged per query frame."""
    logits = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    frame = torch.arange(FRAMES * TOKENS) // TOKENS
    if band is not None:
        logits = logits + strength * logits.amax(-1, keepdim=True) * band[frame][:, frame]
    probs = logits.softmax(-1)  # [batch, heads, L, L]
    per_key_frame = probs.unflatten(-1, (FRAMES, TOKENS)).sum(-1)  # [batch, heads, L, F]
    return per_key_frame.unflatten(-2, (FRAMES, TOKENS)).mean(dim=(0, 3))  # [heads, F, F]


@pytest.mark.parametrize("band", [None, gaussian_band(FRAMES, 1.0, dtype=torch.float64)])
def test_frame_map_matches_the_dense_map_in_tiles(monkeypatch, band):
    query, key = _qk()
    expected = _dense_frame_map(query, key, band, strength=0.7)
    monkeypatch.setattr(full_attention, "_CPU_TILE_ELEMENTS", 2 * 3 * FRAMES * TOKENS * 5)  # 5-query tiles
    per_head = frame_attention_map(query, key, FRAMES, band=band, strength=0.7, per_head=True)
    assert per_head.shape == (3, FRAMES, FRAMES) and per_head.dtype == torch.float32
    torch.testing.assert_close(per_head.double(), expected, atol=1e-6, rtol=1e-6)
    mean = frame_attention_map(query, key, FRAMES, band=band, strength=0.7)
    torch.testing.assert_close(mean.double(), expected.mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mean.sum(-1), torch.ones(FRAMES))


def test_tar_in_the_frame_map_moves_mass_to_near_frames():
    query, key = _qk()
    plain = frame_attention_map(query, key, FRAMES)
    regularised = frame_attention_map(query, key, FRAMES, band=gaussian_band(FRAMES, 0.5))
    assert float(band_score(regularised)) > float(band_score(plain)) + 0.1


def _inputs(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, LATENT_FRAMES, HEIGHT, WIDTH, generator=generator),
        torch.randn(batch, 7, 16, generator=generator),
    )


@torch.no_grad()
def _run(transformer, latents, text, timestep=500.0):
    return transformer(latents, torch.full((latents.shape[0],), timestep), encoder_hidden_states=text,
                       return_dict=False)[0]  # fmt: skip


def test_capture_records_each_block_and_call_and_leaves_the_output_bit_identical(wan_transformer):
    latents, text = _inputs()
    stock = _run(wan_transformer, latents, text, timestep=700.0)
    before = wan_transformer.attn_processors
    with capture_dit_attention(wan_transformer) as recorder:
        assert torch.equal(_run(wan_transformer, latents, text, timestep=700.0), stock)
        _run(wan_transformer, latents, text, timestep=300.0)
    assert recorder.steps == [0, 1] and recorder.timesteps == {0: 700.0, 1: 300.0}
    assert recorder.blocks == {f"blocks.{i}.attn1.processor": i for i in range(3)}
    for attention in recorder.maps.values():
        assert attention.shape == (LATENT_FRAMES, LATENT_FRAMES)
        torch.testing.assert_close(attention.sum(-1), torch.ones(LATENT_FRAMES))
    assert all(wan_transformer.attn_processors[name] is p for name, p in before.items())


def test_capture_under_tar_records_the_regularised_map_and_keeps_tar_output(wan_transformer):
    latents, text = _inputs()
    with apply_dit_tar(wan_transformer, "b0-2D1"):
        with_tar = _run(wan_transformer, latents, text)
        with capture_dit_attention(wan_transformer) as inside:
            assert torch.equal(_run(wan_transformer, latents, text), with_tar)
    with capture_dit_attention(wan_transformer) as outside:
        with apply_dit_tar(wan_transformer, "b0-2D1"):
            assert torch.equal(_run(wan_transformer, latents, text), with_tar)
        _run(wan_transformer, latents, text)  # TAR removed: the plain map
    for name in inside.blocks:
        torch.testing.assert_close(outside.maps[(0, name)], inside.maps[(0, name)])
        assert not torch.allclose(outside.maps[(1, name)], outside.maps[(0, name)], atol=1e-3)


def test_recorded_map_is_the_layers_own_map(wan_transformer):
    """The map recorded equals frame_attention_map of the query and key that attn1 really used."""
    latents, text = _inputs(batch=1)
    seen = {}
    config = "b1D1s0.5"
    with apply_dit_tar(wan_transformer, config) as handle:
        processor = wan_transformer.attn_processors["blocks.1.attn1.processor"]
        processor.probe = lambda q, k, **kw: seen.update(q=q.clone(), k=k.clone(), **kw)
        with capture_dit_attention(wan_transformer) as recorder:
            _run(wan_transformer, latents, text)
        assert handle.active
    assert seen["strength"] == 0.5 and seen["num_frames"] == LATENT_FRAMES
    expected = frame_attention_map(seen["q"], seen["k"], LATENT_FRAMES, band=gaussian_band(LATENT_FRAMES, 1.0),
                                   strength=0.5)  # fmt: skip
    torch.testing.assert_close(recorder.maps[(0, "blocks.1.attn1.processor")], expected)


def test_small_sigma_tar_makes_the_dit_map_more_band_like(wan_transformer):
    latents, text = _inputs(batch=1)
    with capture_dit_attention(wan_transformer) as plain:
        _run(wan_transformer, latents, text)
    with capture_dit_attention(wan_transformer) as regularised, apply_dit_tar(wan_transformer, "b0-2D0.5"):
        _run(wan_transformer, latents, text)
    plain_scores = {name: float(band_score(m)) for name, m in plain.maps_at(0).items()}
    tar_scores = {name: float(band_score(m)) for name, m in regularised.maps_at(0).items()}
    for name in plain_scores:
        assert tar_scores[name] > plain_scores[name] + 0.05, (name, plain_scores, tar_scores)


def test_the_frame_max_approximation_is_what_is_recorded(wan_transformer):
    latents, text = _inputs(batch=1)
    with capture_dit_attention(wan_transformer) as exact, apply_dit_tar(wan_transformer, "b0D1"):
        _run(wan_transformer, latents, text)
    with capture_dit_attention(wan_transformer) as approximate, apply_dit_tar(wan_transformer, "b0D1_framemax"):
        _run(wan_transformer, latents, text)
    name = "blocks.0.attn1.processor"
    assert not torch.equal(exact.maps[(0, name)], approximate.maps[(0, name)])


def test_steps_batch_index_and_per_head(wan_transformer):
    latents, text = _inputs(batch=2)
    with capture_dit_attention(wan_transformer, steps=[1], batch_index=1, reduce="per_head") as one:
        _run(wan_transformer, latents, text)
        _run(wan_transformer, latents, text)
    with capture_dit_attention(wan_transformer) as alone:
        _run(wan_transformer, latents[1:], text[1:])
    assert one.steps == [1]
    for name, attention in one.maps_at(1).items():
        assert attention.shape == (2, LATENT_FRAMES, LATENT_FRAMES)
        torch.testing.assert_close(attention.mean(0), alone.maps[(0, name)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(reduce="max"), "unknown attention reduce mode 'max'"),
        (dict(batch_index=True), "batch_index must be an int or None"),
        (dict(steps=[-1]), "capture steps must be ints >= 0"),
    ],
)
def test_invalid_capture_settings(wan_transformer, kwargs, message):
    with pytest.raises(ValueError, match=message), capture_dit_attention(wan_transformer, **kwargs):
        pass


def test_batch_index_outside_the_batch(wan_transformer):
    latents, text = _inputs(batch=1)
    with pytest.raises(ValueError, match="batch_index 1 is outside the transformer's batch of 1"):
        with capture_dit_attention(wan_transformer, batch_index=1):
            _run(wan_transformer, latents, text)


def test_a_unet_is_rejected(image_unet):
    with pytest.raises(ValueError, match="UNet2DConditionModel has no transformer blocks with self-attention"):
        with capture_dit_attention(image_unet):
            pass


def test_rows_block_maps_and_plots_per_block(wan_transformer):
    latents, text = _inputs(batch=1)
    with capture_dit_attention(wan_transformer) as recorder:
        _run(wan_transformer, latents, text)
    maps = recorder.maps_at(0)
    rows = dit_attention_rows(maps, recorder.blocks, run_id="r", condition="off")
    assert [row["block"] for row in rows] == [0, 1, 2]
    assert all("level" not in row and row["num_frames"] == LATENT_FRAMES and row["run_id"] == "r" for row in rows)
    assert rows[0]["band_score"] == pytest.approx(float(band_score(maps["blocks.0.attn1.processor"])))
    by_block = block_maps(maps, recorder.blocks)
    assert list(by_block) == [0, 1, 2]
    figure = attention_grid_figure({"generated": by_block}, unit="block")
    titles = [ax.get_title().split(":")[0] for ax in figure.axes if ax.get_title()]
    assert titles == ["block 0", "block 1", "block 2"]
    bars = band_score_figure({"off": {b: 0.1 * b for b in by_block}}, unit="block")
    assert bars.axes[0].get_xlabel() == "block"
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == ["0", "1", "2"]
    with pytest.raises(ValueError, match="no block known for layer"):
        block_maps({"blocks.9.attn1.processor": by_block[0]}, recorder.blocks)
    with pytest.raises(ValueError, match="'block' would overwrite"):
        dit_attention_rows(maps, recorder.blocks, block=1)



def test_calls_per_step_records_the_first_call_of_each_step(wan_transformer):
    inputs = [_inputs(batch=1, seed=seed) for seed in range(4)]
    with capture_dit_attention(wan_transformer, calls_per_step=2) as grouped:
        for latents, text in inputs:
            _run(wan_transformer, latents, text)
    singles = []
    for latents, text in (inputs[0], inputs[2]):
        with capture_dit_attention(wan_transformer) as single:
            _run(wan_transformer, latents, text)
        singles.append(single.maps_at(0))
    assert grouped.steps == [0, 1]
    for step, expected in enumerate(singles):
        for name, attention in grouped.maps_at(step).items():
            torch.testing.assert_close(attention, expected[name])
    with pytest.raises(ValueError, match="calls_per_step must be an int >= 1"):
        with capture_dit_attention(wan_transformer, calls_per_step=0):
            pass


@pytest.fixture(scope="module")
def tiny_wan(tiny_wan_dir):
    from vstar_model.backbones.loading import load_backbone

    return load_backbone("tiny-wan", path=tiny_wan_dir)


def test_generated_video_maps_are_the_conditional_calls_of_each_step(tiny_wan):
    from vstar_model.analysis.dit import generated_video_dit_attention
    from vstar_model.sampling.dit import FlowMatchingConfig, generate_video

    config = FlowMatchingConfig(num_frames=17, height=32, width=32, num_inference_steps=3)
    conditional_timesteps = []
    hook = tiny_wan.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: conditional_timesteps.append(float(kwargs["timestep"][0])), with_kwargs=True
    )
    try:
        plain = generate_video(tiny_wan, ["snow", "spring"], config, seed=0)
    finally:
        hook.remove()
    video, recorder = generated_video_dit_attention(tiny_wan, ["snow", "spring"], config, seed=0, tar="b0D1")
    assert recorder.steps == [0, 1, 2]
    assert [recorder.timesteps[s] for s in recorder.steps] == conditional_timesteps[::2]
    assert set(recorder.blocks.values()) == {0, 1}
    assert not torch.equal(video.frames, plain.frames)  # TAR was active
    _, untouched = generated_video_dit_attention(tiny_wan, ["snow", "spring"], config, seed=0)
    assert float(band_score(recorder.maps[(0, "blocks.0.attn1.processor")])) > float(
        band_score(untouched.maps[(0, "blocks.0.attn1.processor")])
    )


def test_real_clip_maps_come_from_the_noised_latent(tiny_wan):
    from vstar_model.analysis.dit import encode_wan_frames, real_video_dit_attention

    frames = torch.randint(0, 255, (17, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    latents = encode_wan_frames(tiny_wan, frames)
    assert latents.shape == (1, 4, 5, 4, 4)
    maps = real_video_dit_attention(tiny_wan, frames, timestep=500, seed=0)
    assert set(maps) == {"blocks.0.attn1.processor", "blocks.1.attn1.processor"}
    for attention in maps.values():
        assert attention.shape == (5, 5)
        torch.testing.assert_close(attention.sum(-1), torch.ones(5))
    other_noise = real_video_dit_attention(tiny_wan, frames, timestep=500, seed=1)
    assert not torch.allclose(other_noise["blocks.0.attn1.processor"], maps["blocks.0.attn1.processor"])
    with pytest.raises(ValueError, match="makes 4k\\+1 frames"):
        encode_wan_frames(tiny_wan, frames[:16])
    with pytest.raises(ValueError, match="timestep must be an int in \\[0, 1000\\)"):
        real_video_dit_attention(tiny_wan, frames, timestep=1000)
