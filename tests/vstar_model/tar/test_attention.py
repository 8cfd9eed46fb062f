from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vstar_model.tar import attention
from vstar_model.tar.attention import replaced_attention, tar_attention, tar_attention_probs
from vstar_model.tar.bands import gaussian_band, identity_band, ones_band


def _qkv(batch=3, heads=2, frames=6, head_dim=8, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, frames, head_dim, generator=generator, dtype=dtype) for _ in range(3)]


def _reference(query, key, value, band, scale=None, use_abs=False):
    """Eq. 3 row by row, straight from the paper's definition, in float64."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    batch, heads, frames, _ = query.shape
    out = torch.empty(batch, heads, frames, value.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(frames):
                row = [float(query[b, h, i].double() @ key[b, h, j].double()) * scale for j in range(frames)]
                row_max = max(row)
                weight = abs(row_max) if use_abs else row_max
                biased = torch.tensor(
                    [row[j] + weight * float(band[i, j]) for j in range(frames)], dtype=torch.float64
                )
                out[b, h, i] = torch.softmax(biased, dim=0) @ value[b, h].double()
    return out


def _negative_and_positive_rows(frames=6, head_dim=8):
    """Queries/keys where batch 0 has only negative logits and batch 1 mostly positive row maxima."""
    generator = torch.Generator().manual_seed(1)
    direction = torch.rand(head_dim, generator=generator, dtype=torch.float64) + 0.5
    noise = lambda: 0.1 * torch.randn(2, 1, frames, head_dim, generator=generator, dtype=torch.float64)  # noqa: E731
    query = direction + noise()
    key = torch.cat([-direction + noise()[:1], direction + noise()[1:]])
    value = torch.randn(2, 1, frames, head_dim, generator=generator, dtype=torch.float64)
    return query, key, value


def test_no_band_is_sdpa():
    query, key, value = _qkv(dtype=torch.float32)
    assert torch.equal(
        tar_attention(query, key, value, None), F.scaled_dot_product_attention(query, key, value)
    )


@pytest.mark.parametrize(
    "band", [ones_band(6, dtype=torch.float64), gaussian_band(6, 1e6, dtype=torch.float64)]
)
def test_all_ones_band_adds_a_row_constant_so_equals_vanilla(band):
    query, key, value = _qkv()
    torch.testing.assert_close(
        tar_attention(query, key, value, band), F.scaled_dot_product_attention(query, key, value)
    )


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0])
def test_matches_row_by_row_reference(sigma):
    query, key, value = _qkv()
    band = gaussian_band(6, sigma, dtype=torch.float64)
    torch.testing.assert_close(tar_attention(query, key, value, band), _reference(query, key, value, band))


def test_row_max_keeps_its_sign():
    query, key, value = _negative_and_positive_rows()
    logits = query @ key.transpose(-1, -2) / math.sqrt(8)
    row_max = logits.amax(dim=-1)
    assert bool((row_max[0] < 0).all()) and bool((row_max[1] > 0).all())  # the setting under test
    band = gaussian_band(6, 1.0, dtype=torch.float64)
    expected = _reference(query, key, value, band)
    with_abs = _reference(query, key, value, band, use_abs=True)
    assert not torch.allclose(expected[0], with_abs[0], atol=1e-3)  # abs() would be caught
    torch.testing.assert_close(tar_attention(query, key, value, band), expected)


def test_identity_band_raises_self_attention_for_positive_rows_and_lowers_it_for_negative():
    query, key, _ = _negative_and_positive_rows()
    vanilla = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(8), dim=-1)
    regularised = tar_attention_probs(query, key, identity_band(6, dtype=torch.float64))
    self_vanilla, self_regularised = (
        torch.diagonal(vanilla, dim1=-2, dim2=-1),
        torch.diagonal(regularised, dim1=-2, dim2=-1),
    )
    assert bool((self_regularised[0] < self_vanilla[0]).all())
    assert bool((self_regularised[1] > self_vanilla[1]).all())


def test_probs_are_distributions_and_give_the_output(monkeypatch):
    query, key, value = _qkv(batch=10)
    band = gaussian_band(6, 1.0, dtype=torch.float64)
    probs = tar_attention_probs(query, key, band)
    torch.testing.assert_close(probs.sum(-1), torch.ones(10, 2, 6, dtype=torch.float64))
    monkeypatch.setattr(attention, "_cpu_chunk_elements", lambda frames: 2 * 6 * 6 * 3)  # chunks of 3, last one short
    torch.testing.assert_close(tar_attention(query, key, value, band), probs @ value)


def test_explicit_scale():
    query, key, value = _qkv()
    band = gaussian_band(6, 2.0, dtype=torch.float64)
    expected = _reference(query, key, value, band, scale=0.05)
    torch.testing.assert_close(tar_attention(query, key, value, band, scale=0.05), expected)
    assert not torch.allclose(tar_attention(query, key, value, band), expected)


def test_batch_elements_are_independent():
    query, key, value = _qkv(batch=4)
    query[2:] *= 7  # very different logit ranges per element: a global max would couple them
    band = gaussian_band(6, 1.0, dtype=torch.float64)
    together = tar_attention(query, key, value, band)
    apart = torch.cat(
        [tar_attention(query[i : i + 1], key[i : i + 1], value[i : i + 1], band) for i in range(4)]
    )
    torch.testing.assert_close(together, apart)


def test_output_is_laid_out_for_free_head_merging():
    query, key, value = _qkv(dtype=torch.float32)
    out = tar_attention(query, key, value, gaussian_band(6, 1.0))
    assert out.shape == (3, 2, 6, 8)
    assert out.transpose(1, 2).is_contiguous()


def _diffusers_layout(batch, heads, frames, head_dim, seed=0):
    """What AttnProcessor2_0 passes: each projection [batch, N, heads·d] viewed per head."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, frames, heads * head_dim, generator=generator, dtype=torch.float64)
        .view(batch, -1, heads, head_dim)
        .transpose(1, 2)
        for _ in range(3)
    ]


@pytest.mark.parametrize("heads_in_place", [True, False])
@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("layout", ["diffusers", "contiguous", "head-major"])
def test_every_layout_and_chunking_gives_the_reference(monkeypatch, heads, layout, heads_in_place):
    """Strided inputs, folded, copied or per-head multiplied heads, chunks of videos or of heads
    whose last one is short: all equal ``tar_attention_probs(...) @ value`` (with a mask, too)."""
    monkeypatch.setattr(attention, "_multiplies_heads_in_place", lambda *operands, **_: heads_in_place)
    if layout == "diffusers":
        query, key, value = _diffusers_layout(5, heads, 6, 4)
    elif layout == "contiguous":
        query, key, value = _qkv(batch=5, heads=heads, frames=6, head_dim=4)
    else:  # heads outermost in memory, batch inside: neither SDPA's layout nor diffusers'
        query, key, value = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in _qkv(5, heads, 6, 4))
    band = gaussian_band(6, 1.0, dtype=torch.float64)
    # A different mask per video and head (each frame may attend to itself), so rows must line up.
    generator = torch.Generator().manual_seed(3)
    mask = (torch.rand(5, heads, 6, 6, generator=generator) > 0.5) | torch.eye(6, dtype=torch.bool)
    expected = tar_attention_probs(query, key, band) @ value
    masked = tar_attention_probs(query, key, band, attn_mask=mask) @ value
    # Chunks of one head, two heads (of three: the last chunk short), one, two and five videos.
    for chunk_maps in (1, 2, heads, 2 * heads, 5 * heads):
        monkeypatch.setattr(attention, "_cpu_chunk_elements", lambda frames, maps=chunk_maps: maps * 6 * 6)
        out = tar_attention(query, key, value, band)
        torch.testing.assert_close(out, expected)
        assert out.transpose(1, 2).is_contiguous()  # SDPA's output layout, whatever came in
        torch.testing.assert_close(tar_attention(query, key, value, band, attn_mask=mask), masked)


def test_the_accelerator_path_gives_the_reference_too():
    """The one-pass path that GPUs take, run here on CPU tensors."""
    query, key, value = _diffusers_layout(4, 3, 6, 4)
    band = gaussian_band(6, 1.0, dtype=torch.float64)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    for attn_mask in (None, mask.expand(4, 3, 6, 6)):
        output = torch.empty(4, 6, 3, 4, dtype=torch.float64).transpose(1, 2)
        out = attention._tar_attention_batched(query, key, value, band, 0.5, attn_mask, output)
        expected = tar_attention_probs(query, key, band, scale=0.5, attn_mask=attn_mask) @ value
        torch.testing.assert_close(out, expected)
        assert out.data_ptr() == output.data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    query, key, value = _qkv(dtype=torch.float32)
    band = gaussian_band(6, 1.0)
    expected = tar_attention(query, key, value, band)
    out = tar_attention(query.to(dtype), key.to(dtype), value.to(dtype), band.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


def test_bool_and_float_masks():
    query, key, value = _qkv()
    band = gaussian_band(6, 1.0, dtype=torch.float64)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()  # causal
    probs = tar_attention_probs(query, key, band, attn_mask=allowed)
    assert bool((probs.masked_select(~allowed.expand_as(probs)) == 0).all())
    float_mask = torch.zeros(6, 6, dtype=torch.float64).masked_fill(~allowed, -math.inf)
    torch.testing.assert_close(tar_attention(query, key, value, band, attn_mask=allowed), probs @ value)
    torch.testing.assert_close(tar_attention(query, key, value, band, attn_mask=float_mask), probs @ value)
    # The mask is applied after the row max: the bias equals the unmasked reference on allowed keys.
    full = tar_attention_probs(query, key, band)
    renormalised = full.masked_fill(~allowed, 0)
    torch.testing.assert_close(probs, renormalised / renormalised.sum(-1, keepdim=True))


def test_band_must_match_the_frames():
    query, key, value = _qkv()
    with pytest.raises(ValueError, match=r"band has shape \(5, 5\) but the attention map is 6×6"):
        tar_attention(query, key, value, gaussian_band(5, 1.0, dtype=torch.float64))


def test_replace_identity_is_value():
    _, _, value = _qkv()
    torch.testing.assert_close(
        replaced_attention(value, "identity"), identity_band(6, dtype=torch.float64) @ value
    )


def test_replace_ones_is_the_mean_frame():
    _, _, value = _qkv()
    expected = (ones_band(6, dtype=torch.float64) / 6) @ value
    torch.testing.assert_close(replaced_attention(value, "ones"), expected)


def test_unknown_replace_mode():
    _, _, value = _qkv()
    with pytest.raises(ValueError, match="unknown TAR replace mode 'zeros'"):
        replaced_attention(value, "zeros")


def test_heads_are_multiplied_in_place_only_in_chunks_of_8_videos_with_rows_less_than_4_kib_apart():
    """Diffusers' views are multiplied head by head where a chunk holds ≥ 8 videos and a head's
    rows are < 4 KiB apart (heads·d·element size: 16 heads of 64 in float32), else copied first."""
    def views(heads, dtype=torch.float32):
        return [torch.empty(2, 16, heads * 64, dtype=dtype).view(2, 16, heads, 64).transpose(1, 2)] * 3

    assert attention._multiplies_heads_in_place(*views(5), videos=51)  # ModelScope's level 64
    assert attention._multiplies_heads_in_place(*views(10), videos=8)  # and level 32
    assert not attention._multiplies_heads_in_place(*views(10), videos=7)
    assert not attention._multiplies_heads_in_place(*views(16), videos=16)
    assert not attention._multiplies_heads_in_place(*views(8, torch.float64), videos=16)
