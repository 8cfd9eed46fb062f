"""ΔA from a real video (Fig. 9): the clip's similarity matrix, resampled, as TAR's matrix band."""

from __future__ import annotations

import pytest
import torch

from vstar_model.backbones.tiny import TINY_CROSS_ATTENTION_DIM, build_tiny_unet3d
from vstar_model.evaluation.similarity import PixelEmbedder
from vstar_model.tar.reference import reference_band, reference_band_tar, resample_band
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
