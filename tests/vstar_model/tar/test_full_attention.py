from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vstar_model.tar import full_attention
from vstar_model.tar.bands import gaussian_band, ones_band
from vstar_model.tar.full_attention import (
    attention_row_max,
    flex_tar_attention_3d,
    frame_row_max,
    tar_attention_3d,
)

FRAMES, TOKENS = 5, 6  # L = 30


def _qkv(batch=2, heads=3, frames=FRAMES, tokens=TOKENS, head_dim=8, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, heads, frames * tokens, head_dim)
    return [torch.randn(shape, generator=generator, dtype=dtype) for _ in range(3)]


def _dense(query, key, value, band, num_frames, *, strength=1.0, row_max=None, scale=None, use_abs=False):
    """The definition on the whole L×L map, in float64: softmax(φ + strength·m·ΔA[f(i), f(j)])·V."""
    query, key, value, band = (x.double() for x in (query, key, value, band))
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = query @ key.transpose(-1, -2) * scale
    m = logits.amax(dim=-1) if row_max is None else row_max.double()
    if use_abs:
        m = m.abs()
    frame = torch.arange(query.shape[-2]) // (query.shape[-2] // num_frames)
    bias = strength * m[..., None] * band[frame][:, frame]
    return torch.softmax(logits + bias, dim=-1) @ value


def _negative_and_positive_rows(head_dim=8):
    """Batch 0: every logit negative (so every row max is); batch 1: positive row maxima."""
    generator = torch.Generator().manual_seed(1)
    direction = torch.rand(head_dim, generator=generator, dtype=torch.float64) + 0.5
    shape = (1, 2, FRAMES * TOKENS, head_dim)
    noise = lambda: 0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)  # noqa: E731
    query = torch.cat([direction + noise(), direction + noise()])
    key = torch.cat([-direction + noise(), direction + noise()])
    value = torch.randn(2, 2, FRAMES * TOKENS, head_dim, generator=generator, dtype=torch.float64)
    return query, key, value


@pytest.mark.parametrize(("sigma", "strength"), [(0.5, 1.0), (1.0, 1.0), (1.0, 0.3), (4.0, 2.5)])
def test_float32_matches_the_dense_definition(sigma, strength):
    query, key, value = _qkv()
    band = gaussian_band(FRAMES, sigma, dtype=torch.float64)
    expected = _dense(query, key, value, band, FRAMES, strength=strength)
    out = tar_attention_3d(query.float(), key.float(), value.float(), band.float(), FRAMES, strength=strength)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, F.scaled_dot_product_attention(query, key, value), atol=1e-3)


def test_band_rows_are_query_frames_and_columns_key_frames():
    query, key, value = _qkv()
    band = gaussian_band(FRAMES, 1.0, dtype=torch.float64) + 0.5 * torch.ones(FRAMES, FRAMES).triu(1).double()
    expected = _dense(query, key, value, band, FRAMES)
    torch.testing.assert_close(tar_attention_3d(query, key, value, band, FRAMES), expected)
    assert not torch.allclose(expected, _dense(query, key, value, band.T, FRAMES), atol=1e-3)


def test_negative_row_maxima_keep_their_sign():
    query, key, value = _negative_and_positive_rows()
    row_max = attention_row_max(query, key)
    assert bool((row_max[0] < 0).all()) and bool((row_max[1] > 0).all())  # the setting under test
    band = gaussian_band(FRAMES, 1.0, dtype=torch.float64)
    expected = _dense(query, key, value, band, FRAMES)
    assert not torch.allclose(expected[0], _dense(query, key, value, band, FRAMES, use_abs=True)[0], atol=1e-3)
    out = tar_attention_3d(query.float(), key.float(), value.float(), band.float(), FRAMES)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_tiles_that_cut_through_frames(monkeypatch):
    query, key, value = _qkv()
    band = gaussian_band(FRAMES, 1.0, dtype=torch.float64)
    expected = _dense(query, key, value, band, FRAMES)
    # 4 query rows per tile: tiles start mid-frame (tokens per frame = 6) and the last one is short.
    monkeypatch.setattr(full_attention, "_CPU_TILE_ELEMENTS", 2 * 3 * FRAMES * TOKENS * 4)
    torch.testing.assert_close(tar_attention_3d(query, key, value, band, FRAMES), expected)
    torch.testing.assert_close(attention_row_max(query, key), (query @ key.transpose(-1, -2) / math.sqrt(8)).amax(-1))
    # frame_row_max tiles by whole frames: 1 frame per tile here.
    monkeypatch.setattr(full_attention, "_CPU_TILE_ELEMENTS", 2 * 3 * TOKENS)
    torch.testing.assert_close(frame_row_max(query, key, FRAMES), _per_frame_max(query, key))


def _per_frame_max(query, key):
    logits = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    frame = torch.arange(query.shape[-2]) // TOKENS
    same_frame = frame[:, None] == frame[None, :]
    return logits.masked_fill(~same_frame, -math.inf).amax(-1)


def test_all_ones_band_is_plain_attention():
    query, key, value = _qkv()
    torch.testing.assert_close(
        tar_attention_3d(query, key, value, ones_band(FRAMES, dtype=torch.float64), FRAMES),
        F.scaled_dot_product_attention(query, key, value),
    )


def test_strength_multiplies_the_row_max():
    query, key, value = _qkv()
    band = gaussian_band(FRAMES, 1.0, dtype=torch.float64)
    torch.testing.assert_close(
        tar_attention_3d(query, key, value, band, FRAMES, strength=0.5),
        tar_attention_3d(query, key, value, band * 0.5, FRAMES),
    )


def test_explicit_scale():
    query, key, value = _qkv()
    band = gaussian_band(FRAMES, 2.0, dtype=torch.float64)
    expected = _dense(query, key, value, band, FRAMES, scale=0.05)
    torch.testing.assert_close(tar_attention_3d(query, key, value, band, FRAMES, scale=0.05), expected)
    expected_max = (query @ key.transpose(-1, -2) * 0.05).amax(-1)
    torch.testing.assert_close(attention_row_max(query, key, scale=0.05), expected_max)


def test_batch_elements_and_heads_are_independent():
    query, key, value = _qkv(batch=3)
    query[1:] *= 7  # very different logit ranges: a max shared across elements would couple them
    band = gaussian_band(FRAMES, 1.0, dtype=torch.float64)
    together = tar_attention_3d(query, key, value, band, FRAMES)
    apart = torch.cat(
        [tar_attention_3d(query[i : i + 1], key[i : i + 1], value[i : i + 1], band, FRAMES) for i in range(3)]
    )
    torch.testing.assert_close(together, apart)


def test_frame_row_max_is_the_own_frame_max_and_never_above_the_exact_one():
    query, key, _ = _qkv()
    approximate, exact = frame_row_max(query, key, FRAMES), attention_row_max(query, key)
    torch.testing.assert_close(approximate, _per_frame_max(query, key))
    # (Up to rounding: the two matmuls may round one logit differently.)
    assert bool((approximate <= exact + 1e-12).all()) and bool((approximate < exact - 1e-6).any())
    # A query whose largest logit is in its own frame gets the exact max.
    assert bool(torch.isclose(approximate, exact).any())


def test_a_given_row_max_replaces_the_exact_one():
    query, key, value = _qkv()
    band = gaussian_band(FRAMES, 1.0, dtype=torch.float64)
    row_max = frame_row_max(query, key, FRAMES)
    expected = _dense(query, key, value, band, FRAMES, row_max=row_max)
    torch.testing.assert_close(tar_attention_3d(query, key, value, band, FRAMES, row_max=row_max), expected)
    assert not torch.allclose(expected, _dense(query, key, value, band, FRAMES), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    query, key, value = _qkv(dtype=torch.float32)
    band = gaussian_band(FRAMES, 1.0)
    expected = tar_attention_3d(query, key, value, band, FRAMES)
    out = tar_attention_3d(query.to(dtype), key.to(dtype), value.to(dtype), band, FRAMES)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


def test_value_may_have_its_own_head_dim():
    query, key, _ = _qkv()
    value = torch.randn(2, 3, FRAMES * TOKENS, 5, dtype=torch.float64)
    band = gaussian_band(FRAMES, 1.0, dtype=torch.float64)
    expected = _dense(query, key, value, band, FRAMES)
    torch.testing.assert_close(tar_attention_3d(query, key, value, band, FRAMES), expected)


def test_shape_errors():
    query, key, value = _qkv()
    band = gaussian_band(FRAMES, 1.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="30 tokens do not split into 4 frames"):
        tar_attention_3d(query, key, value, gaussian_band(4, 1.0), 4)
    with pytest.raises(ValueError, match=r"band has shape \(6, 6\) but the video has 5 latent frames"):
        tar_attention_3d(query, key, value, gaussian_band(6, 1.0), FRAMES)
    with pytest.raises(ValueError, match="must share"):
        tar_attention_3d(query, key[:, :, :12], value, band, FRAMES)
    with pytest.raises(ValueError, match=r"row_max must be \[batch, heads, L\]"):
        tar_attention_3d(query, key, value, band, FRAMES, row_max=torch.zeros(2, 3, 29))
    with pytest.raises(ValueError, match="num_frames must be a positive int"):
        tar_attention_3d(query, key, value, band, 0)
    with pytest.raises(ValueError, match=r"must be \[batch, heads, L, head_dim\]"):
        frame_row_max(query[0], key[0], FRAMES)


# FlexAttention is compiled on first use (about 25 s on 2 CPU cores, less with inductor's on-disk
# cache): one shape, one test, every check on it.
@pytest.mark.compiled
def test_fused_flex_path_matches_the_reference():
    query, key, value = (x.float() for x in _negative_and_positive_rows())
    # Not symmetric, so that query and key frames swapped in the score_mod would show.
    band = gaussian_band(FRAMES, 1.0) + 0.5 * torch.ones(FRAMES, FRAMES).triu(1)
    expected = tar_attention_3d(query, key, value, band, FRAMES, strength=0.7)
    fused = flex_tar_attention_3d(query, key, value, band, FRAMES, strength=0.7)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    row_max = frame_row_max(query, key, FRAMES)
    torch.testing.assert_close(
        flex_tar_attention_3d(query, key, value, band, FRAMES, strength=0.7, row_max=row_max),
        tar_attention_3d(query, key, value, band, FRAMES, strength=0.7, row_max=row_max),
        atol=1e-5,
        rtol=1e-5,
    )
