"""Temporal attention with TAR (paper §3.4, eq. 3) and the map replacement of the paper's Fig. 5.

Tensors are laid out like ``torch.nn.functional.scaled_dot_product_attention``:
``[batch, heads, frames, head_dim]``, where for temporal layers ``batch`` is
``video batch × latent height × latent width``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

ReplaceMode = Literal["identity", "ones"]
REPLACE_MODES: tuple[str, ...] = ("identity", "ones")


def _cpu_chunk_elements(num_frames: int) -> int:
    """Logits per CPU chunk (float32): 256 KiB up to 16 frames, 512 KiB up to 64, 1 MiB beyond.

    Small enough that a chunk's maps and operands stay in cache between the ops that read them,
    large enough that each op has work for every thread. At 16 frames the operands outweigh the
    maps 16 to 1, so the chunk is halved (TAR/SDPA CPU time, 2 threads, 11 interleaved rounds:
    [5120, 4, 16, 64] as diffusers passes it 1.66 → 1.41, [1280, 16, 16, 64] contiguous
    1.25 → 1.13; a quarter was slower again); beyond 64 frames 512 KiB holds only 2 maps of 256
    frames (8 of 128) and the batched products of so few matrices lose more than the cache gains
    ([20, 16, 256, 64] 1.42 → 1.25, [80, 8, 128, 64] as diffusers passes it 1.46 → 1.24)."""
    return 1 << 16 if num_frames <= 16 else 1 << 17 if num_frames <= 64 else 1 << 18


def _check_band(band: torch.Tensor, num_queries: int, num_keys: int) -> None:
    if band.shape != (num_queries, num_keys):
        raise ValueError(
            f"TAR band has shape {tuple(band.shape)} but the attention map is {num_queries}×{num_keys}"
        )


def _regularise_logits_(
    logits: torch.Tensor,
    band: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    row_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """In place on the scaled logits φ ``[..., N, N]``: ``φ + rowmax(φ)·ΔA (+ mask)``.

    The max is per query row over the key frames and keeps its sign (a row whose largest logit is
    negative gets a negative bias), as in the authors' implementation; the mask does not enter it.
    Without a band only the mask is applied. ``row_max`` (``[..., N, 1]``) is a buffer for the max.
    """
    if band is not None:
        logits.addcmul_(torch.amax(logits, dim=-1, keepdim=True, out=row_max), band)
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
    if query.device.type != "cpu":
        return _tar_attention_batched(query, key, value, band, scale, attn_mask, output)
    return _tar_attention_cpu(query, key, value, band, scale, attn_mask, output)


def _tar_attention_batched(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    band: torch.Tensor,
    scale: float,
    attn_mask: torch.Tensor | None,
    output: torch.Tensor,
) -> torch.Tensor:
    """:func:`tar_attention` in one batched pass over all the logits (fastest on accelerators)."""
    logits = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    probs = _regularise_logits_(logits, band, attn_mask).softmax(dim=-1)
    return output.copy_(torch.matmul(probs, value))


def _tar_attention_cpu(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    band: torch.Tensor,
    scale: float,
    attn_mask: torch.Tensor | None,
    output: torch.Tensor,
) -> torch.Tensor:
    """:func:`tar_attention` on CPU, into ``output`` (``[batch, heads, N, d_v]``).

    Temporal attention is a huge batch (video batch × h × w) of small N×N maps, so the work goes
    in chunks of the batch whose logits stay in cache between the ops that read them, into
    buffers reused from chunk to chunk; each op runs once per chunk on all its heads. Batched
    matrix products need the matrices one stride apart, which holds when the heads fold into the
    batch (contiguous heads, or one head), and for diffusers' per-head views of a
    ``[batch, N, heads·d]`` projection within one video (its heads are ``d`` apart). A chunk of
    such views that spans videos does not fold: each head is multiplied in place over the chunk's
    videos (:func:`_tar_attention_cpu_per_head`) where the chunk holds enough videos and a head's
    rows are less than 4 KiB apart (:func:`_multiplies_heads_in_place`); else the chunk is first
    copied into contiguous buffers (rows 4 KiB apart fall in the same cache sets: slow).
    """
    batch, heads, num_queries, head_dim = query.shape
    num_keys, value_dim = key.shape[-2], value.shape[-1]
    fold = heads == 1 or all(t.stride(0) == heads * t.stride(1) for t in (query, key, value))
    # A chunk is `rows` videos × `head_step` heads: whole rows of heads while they fit, else
    # part of one row's heads (long clips, many heads).
    per_head, chunk_elements = num_queries * num_keys, _cpu_chunk_elements(num_queries)
    rows = max(1, min(batch, chunk_elements // (heads * per_head)))
    head_step = heads if rows > 1 else max(1, min(heads, chunk_elements // per_head))
    if not fold and _multiplies_heads_in_place(query, key, value, rows):
        return _tar_attention_cpu_per_head(query, key, value, band, scale, attn_mask, output, rows)
    most = rows * head_step
    logits = query.new_empty(most, num_queries, num_keys)
    row_max = query.new_empty(most, num_queries, 1)
    within_a_video = not fold and rows == 1
    # The products go straight into the output where its chunk is a uniform batch (one head, or
    # heads of one video in diffusers' layout); else via a buffer copied into place.
    staging = None if heads == 1 or within_a_video else value.new_empty(most, num_queries, value_dim)
    copied = not fold and not within_a_video
    contiguous = [t.new_empty(most, t.shape[-2], t.shape[-1]) for t in (query, key, value)] if copied else None
    for start in range(0, batch, rows):
        for first_head in range(0, heads, head_step):
            chunk = (slice(start, start + rows), slice(first_head, first_head + head_step))
            count = min(rows, batch - start) * min(head_step, heads - first_head)
            operands = [t[chunk] for t in (query, key, value)]  # [videos, heads, n, d]
            if contiguous is not None:
                # Copied in the source's memory order (each video's [N, heads, d] block is
                # contiguous): reading 4 KiB apart rows into a contiguous buffer is ~4× slower.
                operands = [
                    buffer[:count].view(t.shape).transpose(1, 2).copy_(t.transpose(1, 2)).transpose(1, 2)
                    for buffer, t in zip(contiguous, operands)
                ]
            chunk_query, chunk_key, chunk_value = (
                t.reshape(count, t.shape[-2], t.shape[-1]) for t in operands
            )
            chunk_logits = logits[:count]
            torch.baddbmm(
                chunk_logits, chunk_query, chunk_key.transpose(1, 2), beta=0, alpha=scale, out=chunk_logits
            )
            mask = None if attn_mask is None else attn_mask[chunk].reshape(count, num_queries, num_keys)
            _regularise_logits_(chunk_logits, band, mask, row_max[:count])
            torch.softmax(chunk_logits, dim=-1, out=chunk_logits)
            target = output[chunk]  # [videos, heads, N, d_v], laid out [videos, N, heads, d_v]
            if staging is None:
                torch.bmm(chunk_logits, chunk_value, out=target.view(count, num_queries, value_dim))
            else:
                products = torch.bmm(chunk_logits, chunk_value, out=staging[:count])
                target.copy_(products.view(target.shape))
    return output


def _multiplies_heads_in_place(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, videos: int) -> bool:
    """Whether chunks of ``videos`` videos of diffusers' views are multiplied one head at a time in
    place: at least 8 videos (each per-head product a batch of 8 or more), and a head's rows
    less than 4 KiB apart in every projection.

    Per-head / copied CPU time, 2 threads, 11 interleaved pairs, ``[batch, heads, N, 64]`` as
    diffusers passes them (videos a chunk): [5120, 2, 16] 0.77 (128), [5120, 5, 16] 0.85 (51),
    [1280, 4, 32] 0.80 (16), [1280, 8, 16] 0.90 (32), [320, 8, 32] 0.87 (8), [320, 4, 64] 0.90 (8),
    [80, 2, 128] 0.92 (8). Fewer videos a chunk lose to the ops' fixed costs ([80, 10, 64] 1.27 (3),
    [80, 5, 128] 1.12 (3)), and rows 4 KiB apart fall in the same cache sets (16 heads of 64:
    [1280, 16, 16] 0.98, [80, 16, 64] 1.18).
    """
    return videos >= 8 and all(t.stride(-2) * t.element_size() < 4096 for t in (query, key, value))


def _tar_attention_cpu_per_head(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    band: torch.Tensor,
    scale: float,
    attn_mask: torch.Tensor | None,
    output: torch.Tensor,
    rows: int,
) -> torch.Tensor:
    """:func:`_tar_attention_cpu` for diffusers' per-head views, ``rows`` videos a chunk, one
    batched product per head on the strided views (a head's matrices are one video apart).

    The chunk's logits are ``[heads, rows, N, N]``, so each head's are one contiguous batch, and
    its products ``[heads, rows, N, d_v]`` are copied into the output once per chunk.
    """
    batch, heads, num_queries, _ = query.shape
    num_keys, value_dim = key.shape[-2], value.shape[-1]
    logits = query.new_empty(heads, rows, num_queries, num_keys)
    row_max = query.new_empty(heads, rows, num_queries, 1)
    products = value.new_empty(heads, rows, num_queries, value_dim)
    for start in range(0, batch, rows):
        videos = slice(start, min(start + rows, batch))
        count = videos.stop - start
        chunk_logits, chunk_max, chunk_products = logits[:, :count], row_max[:, :count], products[:, :count]
        for head in range(heads):
            torch.baddbmm(chunk_logits[head], query[videos, head], key[videos, head].transpose(1, 2),
                          beta=0, alpha=scale, out=chunk_logits[head])
        mask = None if attn_mask is None else attn_mask[videos].transpose(0, 1)  # [heads, videos, N, N]
        _regularise_logits_(chunk_logits, band, mask, chunk_max)
        torch.softmax(chunk_logits, dim=-1, out=chunk_logits)
        for head in range(heads):
            torch.bmm(chunk_logits[head], value[videos, head], out=chunk_products[head])
        output[videos].copy_(chunk_products.transpose(0, 1))
    return output


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
