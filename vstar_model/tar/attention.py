"""Temporal attention with TAR (paper §3.4, eq. 3) and the map replacement of the paper's Fig. 5.

Tensors are laid out like ``torch.nn.functional.scaled_dot_product_attention``:
``[batch, heads, frames, head_dim]``, where for temporal layers ``batch`` is
``video batch × latent height × latent width``. On CPU, float32 TAR runs in a fused kernel
(:mod:`vstar_model.tar.cpu_kernel`); everywhere else in one batched eager pass.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from vstar_model.tar import cpu_kernel

ReplaceMode = Literal["identity", "ones"]
REPLACE_MODES: tuple[str, ...] = ("identity", "ones")


def _check_band(band: torch.Tensor, num_queries: int, num_keys: int) -> None:
    if band.shape != (num_queries, num_keys):
        raise ValueError(
            f"TAR band has shape {tuple(band.shape)} but the attention map is {num_queries}×{num_keys}"
        )


def _regularise_logits_(
    logits: torch.Tensor, band: torch.Tensor | None, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """In place on the scaled logits φ ``[..., N, N]``: ``φ + rowmax(φ)·ΔA (+ mask)``.

    The max is per query row over the key frames and keeps its sign (a row whose largest logit is
    negative gets a negative bias), as in the authors' implementation; the mask does not enter it.
    Without a band only the mask is applied.
    """
    if band is not None:
        logits.addcmul_(torch.amax(logits, dim=-1, keepdim=True), band)
    if attn_mask is None:
        return logits
    if attn_mask.dtype == torch.bool:  # SDPA's convention: True = may attend
        return logits.masked_fill_(~attn_mask, float("-inf"))
    return logits.add_(attn_mask)


def tar_attention_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    band: torch.Tensor | None,
    *,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The regularised attention map ``A' = softmax(φ + rowmax(φ)·ΔA)`` with ``φ = QKᵀ·scale``.

    Args:
        query: ``[..., N, D]``.
        key: ``[..., N, D]`` (self-attention: as many keys as queries).
        band: ΔA ``[N, N]``, in the dtype and on the device of ``query``, or ``None`` for the
            plain map ``A = softmax(φ)`` (eq. 1) that SDPA uses.
        scale: logit scale, ``1/√D`` by default (as SDPA).
        attn_mask: optional SDPA-style mask broadcastable to ``[..., N, N]`` (bool: True = attend;
            float: added to the logits).

    Returns:
        ``[..., N, N]`` attention probabilities (rows sum to 1) in the dtype of ``query``.
    """
    if band is not None:
        _check_band(band, query.shape[-2], key.shape[-2])
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    return _regularise_logits_(logits, band, attn_mask).softmax(dim=-1)


def tar_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    band: torch.Tensor | None,
    *,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(QKᵀ·scale + rowmax·ΔA)·V``; with ``band=None`` exactly SDPA's result.

    Args:
        query, key, value: ``[batch, heads, N, head_dim]`` as for
            ``torch.nn.functional.scaled_dot_product_attention``, in any strides (diffusers passes
            ``[batch, N, heads·head_dim]`` projections viewed per head).
        band: ΔA ``[N, N]`` (see :mod:`vstar_model.tar.bands`) or ``None`` for plain attention.
        scale: logit scale, ``1/√head_dim`` by default.
        attn_mask: optional SDPA-style mask broadcastable to ``[batch, heads, N, N]``.

    Returns:
        ``[batch, heads, N, head_dim]``, the same as ``tar_attention_probs(...) @ value``, laid
        out in memory as ``[batch, N, heads, head_dim]`` like SDPA's output, so that merging
        the heads afterwards needs no copy.
    """
    if band is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale)
    batch, heads, num_queries, _ = query.shape
    num_keys = key.shape[-2]
    _check_band(band, num_queries, num_keys)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if attn_mask is not None:
        attn_mask = attn_mask.expand(batch, heads, num_queries, num_keys)
    output = value.new_empty(batch, num_queries, heads, value.shape[-1]).transpose(1, 2)
    if _fused_cpu_kernel_applies(query, key, value, band, attn_mask):
        kernel = cpu_kernel.load_kernel()
        if kernel is not None:
            kernel.tar_attention(query, key, value, band.contiguous(), scale, output)
            return output
    logits = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    probs = _regularise_logits_(logits, band, attn_mask).softmax(dim=-1)
    return output.copy_(torch.matmul(probs, value))


def _fused_cpu_kernel_applies(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    band: torch.Tensor,
    attn_mask: torch.Tensor | None,
) -> bool:
    """Whether :mod:`vstar_model.tar.cpu_kernel` computes this call: float32 CPU operands with unit
    last strides, no mask, nothing to differentiate (the kernel has no backward). Elsewhere (GPUs,
    other dtypes, masks) one batched eager pass over all the logits does."""
    operands = (query, key, value, band)
    return (
        attn_mask is None
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in operands)
        and all(t.stride(-1) == 1 for t in operands[:3])
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in operands))
    )


def replaced_attention(value: torch.Tensor, replace: ReplaceMode) -> torch.Tensor:
    """Attention output when the map itself is replaced (paper Fig. 5): ``I·V`` or ``(J_N/N)·V``.

    Args:
        value: ``[..., N, head_dim]``.
        replace: ``"identity"`` (every frame sees only itself: frames independent) or ``"ones"``
            (every frame sees the mean of all frames: a static video).

    Returns:
        ``[..., N, head_dim]``, computed without building the N×N map.
    """
    if replace == "identity":
        return value
    if replace == "ones":
        return value.mean(dim=-2, keepdim=True).expand_as(value)
    raise ValueError(f"unknown TAR replace mode {replace!r}; expected one of {', '.join(REPLACE_MODES)}")
