from __future__ import annotations

import math
import os
import time
import types

import pytest
import torch
import torch.nn.functional as F

from vstar_model.tar import attention, cpu_kernel
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


def test_probs_are_distributions_and_give_the_output():
    query, key, value = _qkv(batch=10)
    band = gaussian_band(6, 1.0, dtype=torch.float64)
    probs = tar_attention_probs(query, key, band)
    torch.testing.assert_close(probs.sum(-1), torch.ones(10, 2, 6, dtype=torch.float64))
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


def _layout(layout, batch, heads, frames, head_dim, dtype=torch.float64):
    if layout == "diffusers":
        return [t.to(dtype) for t in _diffusers_layout(batch, heads, frames, head_dim)]
    query, key, value = _qkv(batch, heads, frames, head_dim, dtype=dtype)
    if layout == "contiguous":
        return query, key, value
    # heads outermost in memory, batch inside: neither SDPA's layout nor diffusers'
    return [t.transpose(0, 1).contiguous().transpose(0, 1) for t in (query, key, value)]


@pytest.fixture(params=["fused", "eager"])
def cpu_path(request, monkeypatch):
    """Each CPU path of tar_attention: the fused kernel (float32) and eager PyTorch without it."""
    if request.param == "eager":
        monkeypatch.setattr(attention.cpu_kernel, "load_kernel", lambda: None)
    return request.param


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("layout", ["diffusers", "contiguous", "head-major"])
def test_every_layout_gives_the_reference(cpu_path, heads, layout):
    """Strided or not, each path equals eq. 3 row by row, in SDPA's output layout."""
    query, key, value = _layout(layout, 5, heads, 6, 4, dtype=torch.float32)
    band = gaussian_band(6, 1.0)
    out = tar_attention(query, key, value, band)
    torch.testing.assert_close(out.double(), _reference(query, key, value, band), atol=2e-6, rtol=1e-5)
    assert out.transpose(1, 2).is_contiguous()  # SDPA's output layout, whatever came in


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("layout", ["diffusers", "contiguous"])
def test_masks_give_the_reference_in_every_layout(heads, layout):
    """A different mask per video and head (each frame may attend to itself), so rows must line up."""
    query, key, value = _layout(layout, 5, heads, 6, 4)
    band = gaussian_band(6, 1.0, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    mask = (torch.rand(5, heads, 6, 6, generator=generator) > 0.5) | torch.eye(6, dtype=torch.bool)
    expected = tar_attention_probs(query, key, band, attn_mask=mask) @ value
    for dtype in (torch.float64, torch.float32):
        out = tar_attention(query.to(dtype), key.to(dtype), value.to(dtype), band.to(dtype), attn_mask=mask)
        torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "frames, head_dim, value_dim",
    [(5, 8, 8), (16, 64, 64), (17, 20, 12), (24, 64, 64), (40, 16, 16), (64, 64, 64), (130, 24, 40)],
)
def test_the_fused_kernel_gives_the_reference_at_every_row_length(frames, head_dim, value_dim):
    """Rows shorter than, equal to and longer than a vector, with and without a tail, map rows
    longer and shorter than the value's (normalised before or after the product), negative and
    positive row maxima, a non-Toeplitz band: all as eq. 3 in float64."""
    generator = torch.Generator().manual_seed(frames)
    query = torch.randn(3, 2, frames, head_dim, generator=generator).abs() * 3
    query[0] = -query[0]  # with keys of one sign, one video's rows are all negative
    key = torch.randn(3, 2, frames, head_dim, generator=generator).abs()
    value = torch.randn(3, 2, frames, value_dim, generator=generator)
    band = torch.rand(frames, frames, generator=generator)  # e.g. a measured similarity matrix
    assert cpu_kernel.load_kernel() is not None
    out = tar_attention(query, key, value, band)
    row_max = (query @ key.transpose(-1, -2)).amax(-1)
    assert bool((row_max[0] < 0).all()) and bool((row_max[1:] > 0).all())
    torch.testing.assert_close(out.double(), _reference(query, key, value, band), atol=1e-5, rtol=1e-5)


def test_float32_on_cpu_runs_the_fused_kernel_and_everything_else_the_eager_pass(monkeypatch):
    kernel = cpu_kernel.load_kernel()
    assert kernel is not None, "the fused CPU TAR kernel did not build on this machine"
    calls = []
    spy = types.SimpleNamespace(tar_attention=lambda *args: calls.append(args) or kernel.tar_attention(*args))
    monkeypatch.setattr(attention.cpu_kernel, "load_kernel", lambda: spy)
    query, key, value = _diffusers_layout(4, 3, 6, 4)
    band = gaussian_band(6, 1.0)
    tar_attention(query.float(), key.float(), value.float(), band)
    assert len(calls) == 1
    tar_attention(query, key, value, band.double())  # float64
    tar_attention(query.float(), key.float(), value.float(), band, attn_mask=torch.ones(6, 6, dtype=torch.bool))
    leaf = query.float().requires_grad_()  # the kernel has no autograd graph to give
    assert tar_attention(leaf, key.float(), value.float(), band).requires_grad
    assert len(calls) == 1


def test_a_kernel_that_cannot_be_built_is_named_in_one_line_and_eager_tar_runs(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def failing_build(**_):
        raise RuntimeError("Error building extension 'x': [1/2] c++ ...\ncpu_kernel.cpp:1:1: error: no compiler\nninja: build stopped")

    monkeypatch.setattr(cpp_extension, "load", failing_build)
    monkeypatch.setattr(cpu_kernel, "_loaded", {})
    with caplog.at_level("WARNING", logger=cpu_kernel.__name__):
        assert cpu_kernel.load_kernel() is None
        assert cpu_kernel.load_kernel() is None  # tried once a process
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "vstar's fused CPU TAR kernel could not be built (cpu_kernel.cpp:1:1: error: no compiler); "
        "TAR on CPU runs in eager PyTorch, slower"
    ]
    query, key, value = _qkv(dtype=torch.float32)
    band = gaussian_band(6, 1.0)
    torch.testing.assert_close(tar_attention(query, key, value, band), tar_attention_probs(query, key, band) @ value)


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


def test_a_build_lock_left_by_a_killed_build_is_removed_and_a_live_one_kept(monkeypatch, tmp_path):
    """torch's builder waits on its lock file without end; a dead build's lock must not hang TAR."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    directory = cpu_kernel._build_directory("kernel")
    assert directory.is_relative_to(tmp_path) and torch.__version__ in str(directory)
    lock = directory / "lock"
    lock.touch()
    assert cpu_kernel._build_directory("kernel") == directory and lock.exists()  # a build under way
    old = time.time() - cpu_kernel.STALE_LOCK_SECONDS - 1
    os.utime(lock, (old, old))
    cpu_kernel._build_directory("kernel")
    assert not lock.exists()
