from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from vstar_model.tar.dit import (
    DEFAULT_PRESET,
    PRESETS,
    BlockRange,
    DiTSelfAttnProcessor,
    DiTTARConfig,
    apply_dit_tar,
    dit_self_attention_blocks,
    parse_dit_tar,
)

FRAMES, HEIGHT, WIDTH = 5, 8, 12  # latent; patch (1, 2, 2) → 5 frames × 24 tokens


def _inputs(batch=2, frames=FRAMES, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, frames, HEIGHT, WIDTH, generator=generator)
    text = torch.randn(batch, 7, 16, generator=generator)
    return latents, text


@torch.no_grad()
def _run(transformer, latents, text):
    timestep = torch.full((latents.shape[0],), 500.0)
    return transformer(latents, timestep, encoder_hidden_states=text, return_dict=False)[0]


# --- presets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "ranges"),
    [
        ("b0-9D1", [BlockRange(0, 9, 1.0)]),
        ("b0-9D1_b10-19D4", [BlockRange(0, 9, 1.0), BlockRange(10, 19, 4.0)]),
        ("b0-9D1s0.5", [BlockRange(0, 9, 1.0, 0.5)]),
        ("b3D2.5s.25", [BlockRange(3, 3, 2.5, 0.25)]),
        (" b2-4d1 ", [BlockRange(2, 4, 1.0)]),
    ],
)
def test_presets(preset, ranges):
    config = parse_dit_tar(preset)
    assert list(config.ranges) == ranges
    assert config.row_max == "exact" and config.active_steps == 0.56
    assert parse_dit_tar(config.preset) == config


def test_window_and_frame_max_options_and_the_canonical_string():
    config = parse_dit_tar("b0-1D1s0.5_w0.4_framemax")
    assert config.active_steps == 0.4 and config.row_max == "frame"
    assert config.preset == "b0-1D1s0.5_w0.4_framemax"
    assert parse_dit_tar("b0-0D1_w1").preset == "b0D1_w1"
    assert config.blocks == {0: BlockRange(0, 1, 1.0, 0.5), 1: BlockRange(0, 1, 1.0, 0.5)}


def test_documented_presets_parse():
    for preset in (*PRESETS, DEFAULT_PRESET):
        assert parse_dit_tar(preset).preset == preset


@pytest.mark.parametrize("spec", [None, "off", "none", " OFF "])
def test_off(spec):
    assert parse_dit_tar(spec) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("64D1", r"unknown DiT TAR preset '64D1' \(at '64D1'\); expected b<first>-<last>D<sigma>"),
        ("b0-9", r"at 'b0-9'"),
        ("b0-9D1_", r"at ''"),
        ("b0-9D1_w0.5_w0.3", r"at 'w0.3'"),
        ("b0-9D1_framemax_framemax", r"at 'framemax'"),
        ("w0.5", "names no blocks"),
        ("b0-9D1_b5-12D4", r"'b0-9D1_b5-12D4': DiT TAR names block\(s\) 5–9 twice"),
        ("b9-0D1", "b9-0 ends before it starts"),
        ("b0-9D0", "sigma must be > 0"),
        ("b0-9D1s0", "strength must be a finite number > 0, got 0.0"),
        ("b0-9D1_w0", r"active_steps must be a fraction of the steps in \(0, 1\], got 0.0"),
        ("b0-9D1_w1.5", "got 1.5"),
    ],
)
def test_invalid_presets_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_dit_tar(spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ranges=()), "non-empty sequence of BlockRange"),
        (dict(ranges=(BlockRange(0, 1, 1.0),), row_max="lse"), "unknown DiT TAR row max 'lse'"),
        (dict(ranges=(BlockRange(0, 1, 1.0),), kernel="cuda"), "unknown DiT TAR kernel 'cuda'"),
        (dict(ranges=(BlockRange(0, 1, 1.0),), active_steps=10), "a fraction of the steps in \\(0, 1\\], got 10"),
    ],
)
def test_invalid_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiTTARConfig(**kwargs)


def test_not_a_preset():
    with pytest.raises(ValueError, match="cannot read a DiT TAR setting from {0: 1.0}"):
        parse_dit_tar({0: 1.0})


@pytest.mark.parametrize(
    ("active_steps", "num_steps", "expected"), [(0.56, 25, 14), (0.56, 50, 28), (1.0, 4, 4), (0.1, 4, 0)]
)
def test_num_active_steps(active_steps, num_steps, expected):
    config = DiTTARConfig(ranges=(BlockRange(0, 0, 1.0),), active_steps=active_steps)
    assert config.num_active_steps(num_steps) == expected


# --- installing -------------------------------------------------------------------------------


def test_blocks_of_a_wan_transformer(wan_transformer, image_unet):
    assert dit_self_attention_blocks(wan_transformer) == {f"blocks.{i}.attn1.processor": i for i in range(3)}
    assert dit_self_attention_blocks(image_unet) == {}
    with pytest.raises(ValueError, match="UNet2DConditionModel has no transformer blocks with self-attention"):
        apply_dit_tar(image_unet, "b0D1")


def test_installs_on_exactly_the_chosen_attn1_and_removes_cleanly(wan_transformer):
    before = wan_transformer.attn_processors
    with apply_dit_tar(wan_transformer, "b0D1_b2D4s0.5") as handle:
        assert handle.blocks == {"blocks.0.attn1.processor": 0, "blocks.2.attn1.processor": 2}
        now = wan_transformer.attn_processors
        changed = {name for name in before if now[name] is not before[name]}
        assert changed == set(handle.blocks)
        assert now["blocks.2.attn1.processor"].tar.part == BlockRange(2, 2, 4.0, 0.5)
        assert handle.active
    after = wan_transformer.attn_processors
    assert all(after[name] is before[name] for name in before)
    assert not wan_transformer._forward_pre_hooks  # the layout hook went with the processors


def test_off_installs_nothing(wan_transformer):
    before = wan_transformer.attn_processors
    with apply_dit_tar(wan_transformer, "off") as handle:
        assert handle.blocks == {} and not handle.active
        handle.set_step(0, 4)
        assert all(wan_transformer.attn_processors[name] is p for name, p in before.items())


def test_blocks_absent_from_the_model_are_rejected(wan_transformer):
    message = r"DiT TAR block\(s\) 3–9 are not in WanTransformer3DModel, which has blocks 0–2"
    with pytest.raises(ValueError, match=message):
        apply_dit_tar(wan_transformer, "b0-9D1")
    assert all(isinstance(p, WanAttnProcessor) for p in wan_transformer.attn_processors.values())


# --- what the processors compute --------------------------------------------------------------


def test_inactive_steps_and_other_blocks_are_bit_identical_to_diffusers(wan_transformer):
    latents, text = _inputs()
    stock = _run(wan_transformer, latents, text)
    with apply_dit_tar(wan_transformer, "b1D1_w0.5") as handle:
        handle.set_step(0, 4)
        regularised = _run(wan_transformer, latents, text)
        handle.set_step(1, 4)
        assert handle.active
        handle.set_step(2, 4)  # outside the window: steps 0–1 of 4
        assert not handle.active
        inactive = _run(wan_transformer, latents, text)
    assert torch.equal(inactive, stock)
    assert not torch.allclose(regularised, stock, atol=1e-4)


def test_a_processor_without_tar_is_bit_identical_to_diffusers(wan_transformer):
    latents, text = _inputs()
    stock = _run(wan_transformer, latents, text)
    from vstar_model.tar.dit import TokenLayout

    layout = TokenLayout(wan_transformer.config.patch_size)
    hook = wan_transformer.register_forward_pre_hook(layout.hook, with_kwargs=True)
    seen = []
    for block in wan_transformer.blocks:
        block.attn1.set_processor(DiTSelfAttnProcessor(layout, probe=lambda q, k, **kw: seen.append(kw["num_frames"])))
    try:
        assert torch.equal(_run(wan_transformer, latents, text), stock)
    finally:
        hook.remove()
    assert seen == [FRAMES] * 3


def test_the_attention_backend_stays_diffusers_choice(wan_transformer):
    latents, text = _inputs()
    wan_transformer.set_attention_backend("_native_math")
    stock = _run(wan_transformer, latents, text)
    with apply_dit_tar(wan_transformer, "b0-2D1") as handle:
        processors = [wan_transformer.attn_processors[name] for name in handle.blocks]
        assert all(p._attention_backend.value == "_native_math" for p in processors)
        handle.set_step(3, 4)
        assert torch.equal(_run(wan_transformer, latents, text), stock)


def test_all_ones_band_is_the_plain_layer(wan_transformer):
    """σ = ∞ gives ΔA = J: a row constant, so the model equals diffusers' (the processor's own
    projections, norms and RoPE are diffusers')."""
    latents, text = _inputs()
    stock = _run(wan_transformer, latents, text)
    config = DiTTARConfig(ranges=(BlockRange(0, 2, float("inf")),))
    with apply_dit_tar(wan_transformer, config):
        torch.testing.assert_close(_run(wan_transformer, latents, text), stock, atol=1e-5, rtol=1e-5)


def test_the_band_follows_latent_frames(wan_transformer):
    """With a near-identity band and a large strength each token attends almost only to its own latent
    frame, so changing the last frame's input barely moves the first frame's attention output."""
    latents, text = _inputs(batch=1)
    changed = latents.clone()
    changed[:, :, -1] += 3 * torch.randn_like(changed[:, :, -1])
    attn = wan_transformer.blocks[0].attn1
    outputs = {}
    hook = attn.register_forward_hook(lambda module, args, output: outputs.__setitem__("attn1", output))
    config = DiTTARConfig(ranges=(BlockRange(0, 0, 0.25, 20.0),), active_steps=1.0)

    def first_frame_shift(tar):
        with apply_dit_tar(wan_transformer, tar):
            _run(wan_transformer, latents, text)
            before = outputs["attn1"][:, :24]  # tokens of latent frame 0
            _run(wan_transformer, changed, text)
            return float((outputs["attn1"][:, :24] - before).norm() / before.norm())

    try:
        plain, regularised = first_frame_shift(None), first_frame_shift(config)
    finally:
        hook.remove()
    assert plain > 0.05
    assert regularised < plain / 10


def test_both_guidance_branches_are_regularised_independently(wan_transformer):
    latents, text = _inputs(batch=2)
    with apply_dit_tar(wan_transformer, "b0-2D1"):
        together = _run(wan_transformer, latents, text)
        apart = torch.cat([_run(wan_transformer, latents[i : i + 1], text[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-5)


def test_only_the_chosen_block_changes(wan_transformer):
    latents, text = _inputs(batch=1)
    block_inputs = {}
    hooks = [
        block.register_forward_pre_hook(lambda module, args, i=i: block_inputs.__setitem__(i, args[0]))
        for i, block in enumerate(wan_transformer.blocks)
    ]
    try:
        _run(wan_transformer, latents, text)
        stock = dict(block_inputs)
        with apply_dit_tar(wan_transformer, "b1D1"):
            _run(wan_transformer, latents, text)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(block_inputs[0], stock[0]) and torch.equal(block_inputs[1], stock[1])
    assert not torch.allclose(block_inputs[2], stock[2], atol=1e-4)  # block 1's output differs


def test_non_square_latents_and_other_lengths(wan_transformer):
    """The layout comes from each call's input, so one handle serves any length and size."""
    with apply_dit_tar(wan_transformer, "b0D1") as handle:
        processor = wan_transformer.attn_processors["blocks.0.attn1.processor"]
        for frames, height, width in [(3, 8, 12), (9, 4, 6)]:
            latents = torch.randn(1, 4, frames, height, width)
            _run(wan_transformer, latents, torch.randn(1, 7, 16))
            assert (processor.layout.num_frames, processor.layout.tokens_per_frame) == (frames, height * width // 4)
        assert handle.active


def test_frame_max_approximation_runs_through_the_processor(wan_transformer):
    latents, text = _inputs(batch=1)
    with apply_dit_tar(wan_transformer, "b0-2D1"):
        exact = _run(wan_transformer, latents, text)
    with apply_dit_tar(wan_transformer, "b0-2D1_framemax"):
        approximate = _run(wan_transformer, latents, text)
    stock = _run(wan_transformer, latents, text)
    assert not torch.equal(approximate, exact)
    # The approximation stays much closer to exact TAR than TAR is to no TAR.
    assert float((approximate - exact).norm()) < 0.5 * float((exact - stock).norm())


def test_calling_a_block_outside_the_transformer_is_a_clear_error(wan_transformer):
    with apply_dit_tar(wan_transformer, "b0D1"):
        attn = wan_transformer.blocks[0].attn1
        with pytest.raises(RuntimeError, match="only inside a call of the whole transformer"):
            attn(torch.randn(1, 10, 24))


def test_low_precision_keeps_the_layer_dtype(wan_transformer):
    wan_transformer.to(torch.bfloat16)
    latents, text = _inputs(batch=1)
    with apply_dit_tar(wan_transformer, "b0-2D1"):
        out = _run(wan_transformer, latents.bfloat16(), text.bfloat16())
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())


# --- through the Wan sampling loop and presets --------------------------------------------------


def test_wan_presets_default_to_a_dit_preset_that_fits_their_blocks(tiny_wan_dir):
    from vstar_model.backbones.loading import load_backbone
    from vstar_model.backbones.presets import get_preset

    # Block counts of the published configs (transformer/config.json "num_layers"): not loadable offline.
    for name, num_layers in [("wan2.1-1.3b", 30), ("wan2.1-14b", 40)]:
        blocks = parse_dit_tar(get_preset(name).default_tar).blocks
        assert blocks and max(blocks) < num_layers and len(blocks) == num_layers // 3
    tiny = load_backbone("tiny-wan", path=tiny_wan_dir)
    with apply_dit_tar(tiny.transformer, get_preset("tiny-wan").default_tar) as handle:
        assert list(handle.blocks.values()) == [0, 1]


def test_tar_runs_in_the_sampling_loops_step_window_in_both_guidance_calls(tiny_wan_dir):
    from vstar_model.backbones.loading import load_backbone
    from vstar_model.sampling.dit import FlowMatchingConfig, generate_video

    tiny = load_backbone("tiny-wan", path=tiny_wan_dir)
    config = FlowMatchingConfig(num_frames=17, height=32, width=32, num_inference_steps=4)
    regularised_calls = []

    class Watch(DiTSelfAttnProcessor):
        """Installed before TAR: apply_dit_tar carries its probe over to the TAR processor."""

    from vstar_model.tar.dit import TokenLayout

    attn = tiny.transformer.blocks[0].attn1
    stock = attn.processor
    attn.set_processor(
        Watch(TokenLayout((1, 2, 2)), probe=lambda q, k, *, band, **_: regularised_calls.append(band is not None))
    )
    try:
        with_tar = generate_video(tiny, ["snow", "spring"], config, seed=0, tar="b0D1_w0.5").frames
    finally:
        attn.set_processor(stock)
    assert regularised_calls == [True] * 4 + [False] * 4  # steps 0–1 of 4, conditional and unconditional
    without = generate_video(tiny, ["snow", "spring"], config, seed=0, tar="off").frames
    assert not torch.equal(with_tar, without)
