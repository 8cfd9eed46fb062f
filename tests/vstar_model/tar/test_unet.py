from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch

from vstar_model.tar.attention import tar_attention
from vstar_model.tar.bands import gaussian_band, make_band
from vstar_model.tar.unet import (
    TARAttnProcessor,
    TARConfig,
    TARSchedule,
    apply_tar,
    parse_tar,
    temporal_attention_levels,
)
from vstar_model.backbones.tiny import TINY_CROSS_ATTENTION_DIM, build_tiny_unet3d

FRAMES = 8


@pytest.fixture(scope="module")
def unet3d():
    return build_tiny_unet3d(seed=0)


@pytest.fixture(scope="module")
def motion_unet(tiny_animatediff_dir):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet2d = UNet2DConditionModel.from_pretrained(tiny_animatediff_dir / "base" / "unet")
    adapter = MotionAdapter.from_pretrained(tiny_animatediff_dir / "motion_adapter")
    return UNetMotionModel.from_unet2d(unet2d, adapter).eval()


def _inputs(batch=2, height=16, width=24, seed=0):
    """A CFG-sized batch with a non-square latent (three 2× downsamplings: 16×24 → 2×3)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, FRAMES, height, width, generator=generator)
    text = torch.randn(batch, 5, TINY_CROSS_ATTENTION_DIM, generator=generator)
    return latents, text


@torch.no_grad()
def _run(unet, latents, text):
    return unet(latents, torch.tensor(500), encoder_hidden_states=text).sample


@torch.no_grad()
def _run_motion(unet, latents, text):
    # UNetMotionModel (diffusers 0.42) expects the text already repeated per frame: (B·F, L, C).
    text = text.repeat_interleave(latents.shape[2], dim=0)
    return unet(latents, torch.tensor(500), encoder_hidden_states=text).sample


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "sigmas"),
    [
        ("64D1", {64: 1.0}),
        ("64D4", {64: 4.0}),
        ("64D1_32D8", {64: 1.0, 32: 8.0}),
        ("32d2.5_8D16", {32: 2.5, 8: 16.0}),
    ],
)
def test_presets(preset, sigmas):
    config = TARConfig.from_preset(preset)
    assert config.sigmas == sigmas and config.mode == "gaussian" and config.replace is None
    assert not config.include_stem
    assert parse_tar(preset).sigmas == sigmas


@pytest.mark.parametrize("preset", ["64D1+stem", " 64D1_32D8+STEM "])
def test_stem_suffix_includes_transformer_in(preset):
    config = parse_tar(preset)
    assert config.include_stem and 64 in config.sigmas


def test_settings_are_plain_values_equal_for_equal_configs():
    settings = parse_tar("64D1_32D8").settings()
    assert settings == parse_tar("32d8.0_64D1").settings()
    assert settings == {
        "sigmas": {"32": 8.0, "64": 1.0}, "mode": "gaussian", "replace": None, "matrix": None,
        "active_steps": 0.56, "include_stem": False,
    }
    assert parse_tar("64D1+stem").settings()["include_stem"] is True
    assert TARConfig(sigmas={64: 1.0}, active_steps=5).settings()["active_steps"] == 5


@pytest.mark.parametrize("spec", [None, "off", "none", " OFF ", "None"])
def test_off(spec):
    assert parse_tar(spec) is None


def test_parse_mapping_and_config():
    assert parse_tar({64: 1, 16: 2.0}).sigmas == {64: 1.0, 16: 2.0}
    config = TARConfig(sigmas={32: 3.0}, active_steps=5)
    assert parse_tar(config) is config


def test_config_copies_the_mapping():
    sigmas = {64: 1.0}
    config = TARConfig(sigmas=sigmas)
    sigmas[32] = 2.0
    assert config.sigmas == {64: 1.0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("64X1", "unknown TAR preset '64X1'"),
        ("fast", "unknown TAR preset 'fast'"),
        ("128D1", "unknown TAR level 128"),
        ("64D0", "sigma must be > 0, got 0.0"),
        ("64D1_64D2", "'64D1_64D2' names level 64 twice"),
        ("64D1+stem+stem", "unknown TAR preset"),
        ("+stem", "unknown TAR preset"),
        ({64: -1.0}, "sigma must be > 0, got -1.0"),
        ({64: math.nan}, "sigma must be > 0, got nan"),
        ({64: 0}, "sigma must be > 0, got 0"),
        ({48: 1.0}, "unknown TAR level 48"),
        ({"64": 1.0}, "unknown TAR level '64'"),
        ({}, "non-empty mapping"),
        (3, "cannot read a TAR setting from 3"),
    ],
)
def test_invalid_specs_name_the_bad_value(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_tar(spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "cosine"}, "unknown TAR mode 'cosine'"),
        ({"replace": "zeros"}, "unknown TAR replace mode 'zeros'"),
        ({"mode": "matrix"}, "'matrix' needs matrix"),
        ({"matrix": torch.eye(4)}, "'gaussian' takes no matrix"),
        ({"mode": "matrix", "matrix": torch.ones(2, 3)}, r"got shape \(2, 3\)"),
        ({"active_steps": 0}, "step count must be >= 1, got 0"),
        ({"active_steps": 0.0}, r"fraction must be in \(0, 1\], got 0.0"),
        ({"active_steps": 1.5}, r"got 1.5"),
        ({"active_steps": math.nan}, r"got nan"),
        ({"active_steps": True}, "got True"),
        ({"active_steps": "half"}, "got 'half'"),
        ({"include_stem": 1}, "include_stem must be True or False, got 1"),
    ],
)
def test_invalid_config_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TARConfig(sigmas={64: 1.0}, **kwargs)


@pytest.mark.parametrize(
    ("active_steps", "num_steps", "expected"),
    [(0.56, 25, 14), (0.5, 25, 13), (1.0, 25, 25), (0.01, 10, 0), (14, 25, 14), (40, 25, 25), (3, 50, 3)],
)
def test_num_active_steps(active_steps, num_steps, expected):
    assert TARConfig(sigmas={64: 1.0}, active_steps=active_steps).num_active_steps(num_steps) == expected


# --- levels -----------------------------------------------------------------------------------


def test_unet3d_levels(unet3d):
    levels = temporal_attention_levels(unet3d)
    temporal = {
        n for n in unet3d.attn_processors if n.startswith("transformer_in.") or ".temp_attentions." in n
    }
    assert set(levels) == temporal
    # ModelScope layout, 1 layer per block: transformer_in + down 0 + up 3 (two temporal blocks)
    # at 64, down 1 + up 2 at 32, down 2 + up 1 at 16, mid only at 8; attn1 and attn2 each.
    assert Counter(levels.values()) == {64: 8, 32: 6, 16: 6, 8: 2}
    prefixes = {64: ("transformer_in", "down_blocks.0", "up_blocks.3"), 8: ("mid_block",)}
    for name, level in levels.items():
        if level in prefixes:
            assert name.startswith(prefixes[level]), name


def _modelscope_layout_unet():
    """A UNet3D with ModelScope's block layout (2 layers per block, 4 levels), on the meta device:
    its module names without memory for 1.4 B parameters."""
    from diffusers import UNet3DConditionModel

    with torch.device("meta"):
        return UNet3DConditionModel(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=1024,
            attention_head_dim=64,
        )


def _block_temporal_layers(prefix: str, transformers: int) -> set[str]:
    return {
        f"{prefix}.temp_attentions.{i}.transformer_blocks.0.{attn}.processor"
        for i in range(transformers)
        for attn in ("attn1", "attn2")
    }


def test_tar_regularises_the_authors_layer_set_on_the_modelscope_layout():
    """The authors' code patches attn1 and attn2 of the 16 temporal transformers in the down, mid
    and up blocks (32 layers) and never the initial one (``transformer_in``, LVDM's init_attn)."""
    unet = _modelscope_layout_unet()
    down = [_block_temporal_layers(f"down_blocks.{i}", 2) for i in range(3)]  # DownBlock3D has none
    up = [set()] + [_block_temporal_layers(f"up_blocks.{i}", 3) for i in (1, 2, 3)]  # UpBlock3D: none
    mid = _block_temporal_layers("mid_block", 1)
    everywhere = TARConfig(sigmas=dict.fromkeys((64, 32, 16, 8), 1.0))
    with apply_tar(unet, everywhere) as handle:
        assert set(handle.levels) == set().union(*down, *up, mid) and len(handle.levels) == 32
    with apply_tar(unet, "64D1") as handle:
        assert set(handle.levels) == down[0] | up[3] and len(handle.levels) == 10
    stem = {f"transformer_in.transformer_blocks.0.{attn}.processor" for attn in ("attn1", "attn2")}
    with apply_tar(unet, "64D1+stem") as handle:
        assert set(handle.levels) == down[0] | up[3] | stem
    assert not any(isinstance(p, TARAttnProcessor) for p in unet.attn_processors.values())
    # The analysis still sees the stem: 34 temporal layers, as in the authors' patched count.
    assert len(temporal_attention_levels(unet)) == 34
    assert set(temporal_attention_levels(unet, include_stem=False)) == set().union(*down, *up, mid)


def test_motion_unet_levels(motion_unet):
    levels = temporal_attention_levels(motion_unet)
    assert set(levels) == {n for n in motion_unet.attn_processors if ".motion_modules." in n}
    # Motion modules in every down (1) and up (2) block; the mid block's sits at level 8.
    assert Counter(levels.values()) == {64: 6, 32: 6, 16: 6, 8: 8}


def _record_batch_per_level(unet, run, latents, text) -> dict[int, set[int]]:
    """The batch size (video batch × h × w) each temporal layer actually receives, by level."""
    seen: dict[int, set[int]] = {}
    hooks = []
    for name, level in temporal_attention_levels(unet).items():
        module = unet.get_submodule(name.removesuffix(".processor"))
        hook = module.register_forward_pre_hook(
            lambda _m, args, level=level: seen.setdefault(level, set()).add(args[0].shape[0])
        )
        hooks.append(hook)
    try:
        run(unet, latents, text)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 8, 8), (2, 16, 24), (3, 24, 16)])
def test_levels_are_the_true_resolutions(unet3d, motion_unet, batch, height, width):
    latents, text = _inputs(batch, height, width)
    for unet, run in ((unet3d, _run), (motion_unet, _run_motion)):
        seen = _record_batch_per_level(unet, run, latents, text)
        expected = {
            level: {batch * (height * level // 64) * (width * level // 64)} for level in (64, 32, 16, 8)
        }
        assert seen == expected, type(unet).__name__


# --- installation -----------------------------------------------------------------------------


def test_installs_on_exactly_the_chosen_temporal_layers(unet3d):
    before = unet3d.attn_processors
    levels = temporal_attention_levels(unet3d)
    with apply_tar(unet3d, "64D1_32D8") as handle:
        during = unet3d.attn_processors
        tar_names = {n for n, p in during.items() if isinstance(p, TARAttnProcessor)}
        expected = {n for n, level in levels.items() if level in (64, 32) and not n.startswith("transformer_in.")}
        assert tar_names == expected
        assert len(tar_names) == 12 and handle.levels == {n: levels[n] for n in tar_names}
        assert all(during[n] is before[n] for n in during if n not in tar_names)
        one = during[next(n for n in tar_names if levels[n] == 64)].band(
            5, torch.device("cpu"), torch.float64
        )
        eight = during[next(n for n in tar_names if levels[n] == 32)].band(
            5, torch.device("cpu"), torch.float64
        )
        torch.testing.assert_close(one, gaussian_band(5, 1.0, dtype=torch.float64))
        torch.testing.assert_close(eight, gaussian_band(5, 8.0, dtype=torch.float64))
    after = unet3d.attn_processors
    assert all(after[n] is before[n] for n in before)


def test_remove_restores_only_its_own_layers(unet3d):
    from diffusers.models.attention_processor import AttnProcessor

    spatial = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"
    original = unet3d.attn_processors[spatial]
    handle = apply_tar(unet3d, "64D1")
    other = AttnProcessor()
    unet3d.get_submodule(spatial.removesuffix(".processor")).set_processor(other)
    try:
        handle.remove()
        assert unet3d.attn_processors[spatial] is other
        assert not any(isinstance(p, TARAttnProcessor) for p in unet3d.attn_processors.values())
    finally:
        unet3d.get_submodule(spatial.removesuffix(".processor")).set_processor(original)


def test_off_installs_nothing(unet3d):
    before = unet3d.attn_processors
    with apply_tar(unet3d, "off") as handle:
        handle.set_step(0, 25)
        assert not handle.active and handle.levels == {}
        assert all(p is before[n] for n, p in unet3d.attn_processors.items())


def test_levels_absent_from_the_model_are_rejected():
    from diffusers import UNet3DConditionModel

    three_levels = UNet3DConditionModel(
        sample_size=8,
        block_out_channels=(8, 16, 16),
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=4,
    )
    assert set(temporal_attention_levels(three_levels).values()) == {64, 32, 16}
    with pytest.raises(ValueError, match=r"level\(s\) \[8\] have no temporal attention layers"):
        apply_tar(three_levels, {8: 1.0})


def test_image_unet_is_rejected(image_unet):
    with pytest.raises(ValueError, match="UNet2DConditionModel has no temporal attention layers"):
        apply_tar(image_unet, "64D1")


# --- processor numerics -----------------------------------------------------------------------


def _temporal_attention(unet3d):
    """The first temporal layer TAR regularises at level 64 (not the stem, which it leaves alone)."""
    return unet3d.get_submodule("down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1")


def _manual_heads(attn, hidden):
    heads = attn.heads
    split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    return split(attn.to_q(hidden)), split(attn.to_k(hidden)), split(attn.to_v(hidden))


def _manual_out(attn, per_head):
    merged = per_head.transpose(1, 2).reshape(per_head.shape[0], per_head.shape[2], -1)
    return attn.to_out[1](attn.to_out[0](merged)) / attn.rescale_output_factor


@torch.no_grad()
def test_processor_applies_tar_inside_diffusers_attention(unet3d):
    attn = _temporal_attention(unet3d)
    hidden = torch.randn(6, FRAMES, attn.to_q.in_features)
    with apply_tar(unet3d, {64: 1.5}) as handle:
        out = attn(hidden)
        handle.set_step(20, 25)
        inactive = attn(hidden)
    query, key, value = _manual_heads(attn, hidden)
    expected = _manual_out(attn, tar_attention(query, key, value, gaussian_band(FRAMES, 1.5)))
    torch.testing.assert_close(out, expected)
    vanilla = attn(hidden)  # diffusers' own processor again
    assert torch.equal(inactive, vanilla)
    assert not torch.allclose(out, vanilla, atol=1e-4)


@torch.no_grad()
def test_processor_keeps_the_layer_dtype(unet3d):
    attn = copy.deepcopy(_temporal_attention(unet3d))
    hidden = torch.randn(6, FRAMES, attn.to_q.in_features)
    schedule = TARSchedule(TARConfig(sigmas={64: 1.0}))
    attn.set_processor(TARAttnProcessor(schedule, band=make_band("gaussian", sigma=1.0)))
    expected = attn(hidden)
    out = attn.to(torch.bfloat16)(hidden.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


@torch.no_grad()
@pytest.mark.parametrize("replace", ["identity", "ones"])
def test_replace_mode_processor(unet3d, replace):
    attn = _temporal_attention(unet3d)
    hidden = torch.randn(6, FRAMES, attn.to_q.in_features)
    with apply_tar(unet3d, TARConfig(sigmas={64: 1.0}, replace=replace)):
        out = attn(hidden)
    _, _, value = _manual_heads(attn, hidden)
    frame_map = torch.eye(FRAMES) if replace == "identity" else torch.full((FRAMES, FRAMES), 1 / FRAMES)
    torch.testing.assert_close(out, _manual_out(attn, frame_map @ value))


# --- whole UNet -------------------------------------------------------------------------------


def test_inactive_tar_is_vanilla_and_step_window(unet3d):
    latents, text = _inputs()
    vanilla = _run(unet3d, latents, text)
    with apply_tar(unet3d, "64D1_32D8") as handle:
        first = _run(unet3d, latents, text)  # before any set_step: step 0
        active = []
        for step in range(25):
            handle.set_step(step, 25)
            active.append(handle.active)
        assert active == [True] * 14 + [False] * 11
        handle.set_step(14, 25)
        assert torch.equal(_run(unet3d, latents, text), vanilla)
        handle.set_step(13, 25)
        torch.testing.assert_close(_run(unet3d, latents, text), first)
    assert not torch.allclose(first, vanilla, atol=1e-4)
    assert torch.equal(_run(unet3d, latents, text), vanilla)


@pytest.mark.parametrize(("step", "num_steps"), [(25, 25), (-1, 25), (0, 0)])
def test_set_step_outside_the_schedule(unet3d, step, num_steps):
    with apply_tar(unet3d, "64D1") as handle, pytest.raises(ValueError, match=f"step {step} is outside"):
        handle.set_step(step, num_steps)


@pytest.mark.parametrize(
    "config",
    [
        TARConfig(sigmas=dict.fromkeys((64, 32, 16, 8), math.inf)),
        TARConfig(sigmas=dict.fromkeys((64, 32, 16, 8), 1.0), mode="ones"),
    ],
    ids=["sigma-inf", "ones"],
)
def test_all_ones_band_everywhere_is_vanilla(unet3d, config):
    latents, text = _inputs()
    vanilla = _run(unet3d, latents, text)
    with apply_tar(unet3d, config):
        torch.testing.assert_close(_run(unet3d, latents, text), vanilla, atol=1e-5, rtol=1e-5)


def test_both_cfg_branches_are_regularised_independently(unet3d):
    latents, text = _inputs(batch=2)
    vanilla = _run(unet3d, latents, text)
    with apply_tar(unet3d, "64D1"):
        together = _run(unet3d, latents, text)
        apart = torch.cat([_run(unet3d, latents[i : i + 1], text[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-5)
    for branch in range(2):
        assert not torch.allclose(together[branch], vanilla[branch], atol=1e-4)


def test_only_the_chosen_level_changes_the_output(unet3d):
    latents, text = _inputs()
    vanilla = _run(unet3d, latents, text)
    outputs = {}
    for level in (64, 8):
        with apply_tar(unet3d, {level: 1.0}):
            outputs[level] = _run(unet3d, latents, text)
        assert not torch.allclose(outputs[level], vanilla, atol=1e-5)
    assert not torch.allclose(outputs[64], outputs[8], atol=1e-5)


def test_matrix_mode(unet3d):
    latents, text = _inputs()
    with apply_tar(unet3d, TARConfig(sigmas={64: 1.0}, mode="identity")):
        identity = _run(unet3d, latents, text)
    with apply_tar(unet3d, TARConfig(sigmas={64: 1.0}, mode="matrix", matrix=torch.eye(FRAMES))):
        torch.testing.assert_close(_run(unet3d, latents, text), identity)
    wrong_size = TARConfig(sigmas={64: 1.0}, mode="matrix", matrix=torch.eye(FRAMES + 1))
    message = f"{FRAMES + 1}×{FRAMES + 1} but the video has {FRAMES} frames"
    with apply_tar(unet3d, wrong_size), pytest.raises(ValueError, match=message):
        _run(unet3d, latents, text)


def test_replace_mode_changes_the_model(unet3d):
    latents, text = _inputs()
    vanilla = _run(unet3d, latents, text)
    with apply_tar(unet3d, TARConfig(sigmas={64: 1.0}, replace="ones")):
        assert not torch.allclose(_run(unet3d, latents, text), vanilla, atol=1e-5)


def test_motion_unet(motion_unet):
    latents, text = _inputs()
    before = motion_unet.attn_processors
    vanilla = _run_motion(motion_unet, latents, text)
    with apply_tar(motion_unet, "64D1") as handle:
        assert len(handle.levels) == 6 and set(handle.levels.values()) == {64}
        regularised = _run_motion(motion_unet, latents, text)
        handle.set_step(24, 25)
        assert torch.equal(_run_motion(motion_unet, latents, text), vanilla)
    assert not torch.allclose(regularised, vanilla, atol=1e-5)
    assert all(p is before[n] for n, p in motion_unet.attn_processors.items())
