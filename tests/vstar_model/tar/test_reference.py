"""ΔA from a real video (Fig. 9): the clip's similarity matrix, resampled, as TAR's matrix band."""

from __future__ import annotations

import pytest
import torch

from vstar_model.backbones.tiny import TINY_CROSS_ATTENTION_DIM, build_tiny_unet3d
from vstar_model.evaluation.similarity import PixelEmbedder
from vstar_model.tar.bands import gaussian_band
from vstar_model.tar.dit import apply_dit_tar
from vstar_model.tar.reference import reference_band, reference_band_dit_tar, reference_band_tar, resample_band
from vstar_model.tar.unet import apply_tar


def test_resampling_keeps_a_matrix_of_the_same_size():
    matrix = torch.rand(5, 5, dtype=torch.float64)
    assert torch.equal(resample_band(matrix, 5), matrix)


@pytest.mark.parametrize("size", [3, 8, 17])
def test_resampling_maps_the_clips_time_onto_the_videos(size):
    """Bilinear interpolation is exact on a bilinear function of the (normalised) frame times."""

    def bilinear(n):
        times = torch.linspace(0, 1, n, dtype=torch.float64)
        return 0.2 + 0.5 * times[:, None] - 0.3 * times[None, :] + 0.7 * times[:, None] * times[None, :]

    torch.testing.assert_close(resample_band(bilinear(size), 11), bilinear(11))


def test_a_symmetric_matrix_stays_symmetric_with_its_corners():
    matrix = torch.rand(7, 7, dtype=torch.float64)
    matrix = (matrix + matrix.T) / 2
    resampled = resample_band(matrix, 16)
    torch.testing.assert_close(resampled, resampled.T)
    assert resampled[0, 0] == matrix[0, 0] and resampled[-1, 0] == matrix[-1, 0]


def _panning(frames):
    texture = torch.nn.functional.interpolate(
        torch.rand(1, 3, 4, 24, generator=torch.Generator().manual_seed(0)), size=(32, 192), mode="bilinear"
    )
    texture = (texture[0].permute(1, 2, 0) * 255).to(torch.uint8)
    return torch.stack([texture[:, 4 * i : 4 * i + 32] for i in range(frames)])


def test_band_of_a_moving_clip_is_high_near_the_diagonal():
    band = reference_band(_panning(12), PixelEmbedder(), 12)
    assert band.shape == (12, 12) and band.dtype == torch.float64
    torch.testing.assert_close(torch.diagonal(band), torch.ones(12, dtype=torch.float64))
    assert float(torch.diagonal(band, 1).mean()) > float(torch.diagonal(band, 8).mean())
    assert reference_band(_panning(12), PixelEmbedder(), 20).shape == (20, 20)


def test_the_band_is_tar_in_matrix_mode_at_the_presets_levels():
    unet = build_tiny_unet3d(seed=0)
    band = reference_band(_panning(8), PixelEmbedder(), 8)
    config = reference_band_tar("64D4_32D8", band)
    assert config.mode == "matrix" and config.levels == {64, 32}
    torch.testing.assert_close(config.matrix, band)
    sample = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, TINY_CROSS_ATTENTION_DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = unet(sample, 500, encoder_hidden_states=text).sample
        with apply_tar(unet, config):
            regularised = unet(sample, 500, encoder_hidden_states=text).sample
        with apply_tar(unet, "64D4_32D8"):
            gaussian = unet(sample, 500, encoder_hidden_states=text).sample
    assert not torch.allclose(plain, regularised) and not torch.allclose(gaussian, regularised)
    with pytest.raises(ValueError, match="needs TAR levels"):
        reference_band_tar("off", band)


# --- on a DiT: the band over pixel frames, resampled to the latent frames attention sees ------------


def _wan_inputs():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 5, 8, 12, generator=generator)  # 5 latent frames of a 17-frame video
    return latents, torch.randn(1, 7, 16, generator=generator)


@torch.no_grad()
def _wan_run(transformer, latents, text):
    return transformer(latents, torch.full((1,), 500.0), encoder_hidden_states=text, return_dict=False)[0]


def _symmetric(frames):
    matrix = torch.rand(frames, frames, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return (matrix + matrix.T) / 2


def test_the_dit_band_is_the_matrix_resampled_to_latent_frames_at_the_presets_blocks():
    matrix = _symmetric(17)
    config = reference_band_dit_tar("b0-1D4s0.5_w0.3_framemax", matrix, 5)
    assert config.preset == "b0-1D4s0.5_w0.3_framemax"  # blocks, strength, window and row max kept
    assert config.matrix.shape == (5, 5)
    torch.testing.assert_close(config.matrix, resample_band(matrix, 5))
    assert config.matrix[0, -1] == matrix[0, -1] and config.matrix[-1, -1] == matrix[-1, -1]  # corners on corners
    with pytest.raises(ValueError, match="needs TAR blocks"):
        reference_band_dit_tar("off", matrix, 5)


def test_the_dit_processor_attends_with_the_resampled_matrix_not_the_gaussian(wan_transformer):
    matrix = _symmetric(17)
    latents, text = _wan_inputs()
    seen = []
    with apply_dit_tar(wan_transformer, reference_band_dit_tar("b0D1", matrix, 5)) as handle:
        (processor,) = [wan_transformer.attn_processors[name] for name in handle.blocks]
        processor.probe = lambda query, key, **kwargs: seen.append(kwargs["band"])
        _wan_run(wan_transformer, latents, text)
    (band,) = seen
    torch.testing.assert_close(band, resample_band(matrix, 5).float())
    assert not torch.allclose(band, gaussian_band(5, 1.0), atol=1e-2)


def test_a_dit_band_leaves_other_blocks_and_steps_outside_its_window_bit_identical(wan_transformer):
    latents, text = _wan_inputs()
    block_inputs = {}
    hooks = [block.register_forward_pre_hook(lambda module, args, i=i: block_inputs.__setitem__(i, args[0]))
             for i, block in enumerate(wan_transformer.blocks)]
    try:
        stock_output = _wan_run(wan_transformer, latents, text)
        stock = dict(block_inputs)
        with apply_dit_tar(wan_transformer, reference_band_dit_tar("b1D1_w0.5", _symmetric(17), 5)) as handle:
            handle.set_step(0, 4)
            _wan_run(wan_transformer, latents, text)
            regularised = dict(block_inputs)
            handle.set_step(2, 4)  # outside the window: steps 0–1 of 4
            inactive = _wan_run(wan_transformer, latents, text)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(regularised[0], stock[0]) and torch.equal(regularised[1], stock[1])  # block 0 untouched
    assert not torch.allclose(regularised[2], stock[2], atol=1e-4)  # block 1 regularised
    assert torch.equal(inactive, stock_output)


def test_a_constant_dit_band_is_the_plain_layer_and_the_gaussian_is_not(wan_transformer):
    """A constant ΔA adds one value per row of logits: attention is unchanged. The Gaussian band
    at the same blocks changes it, so the matrix really replaces the band."""
    latents, text = _wan_inputs()
    stock = _wan_run(wan_transformer, latents, text)
    with apply_dit_tar(wan_transformer, reference_band_dit_tar("b0-2D1", torch.full((17, 17), 0.7), 5)):
        constant = _wan_run(wan_transformer, latents, text)
    with apply_dit_tar(wan_transformer, "b0-2D1"):
        gaussian = _wan_run(wan_transformer, latents, text)
    torch.testing.assert_close(constant, stock, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(gaussian, constant, atol=1e-3)


def test_a_dit_band_for_another_length_is_a_clear_error(wan_transformer):
    latents, text = _wan_inputs()
    with apply_dit_tar(wan_transformer, reference_band_dit_tar("b0D1", _symmetric(17), 9)):
        with pytest.raises(ValueError, match="band matrix is 9×9 but the video has 5 frames"):
            _wan_run(wan_transformer, latents, text)
