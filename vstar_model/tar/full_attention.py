"""TAR in full spatio-temporal self-attention (diffusion transformers such as Wan 2.1), as pure functions.

A DiT's ``attn1`` attends over all ``L = num_frames × tokens_per_frame`` video tokens, laid out
frame-major (token ``i`` belongs to latent frame ``f(i) = i // tokens_per_frame``). TAR adds
``strength · m_i · ΔA[f(i), f(j)]`` to the scaled logits ``φ_ij = q_i·k_j·scale`` before the softmax,
where ``m_i = max_j φ_ij`` is the signed row max over *all* keys, as the UNet
:func:`vstar_model.tar.attention.tar_attention` does over frames (paper eq. 3).

- :func:`tar_attention_3d` is the exact semantics and the reference for every faster path. It goes
  through the queries in tiles, so it never holds the L×L map (one tile of logits at a time).
- :func:`flex_tar_attention_3d` is the fused path: compiled FlexAttention with a ``score_mod`` that
  adds ``m[b, h, q]·ΔA[f(q), f(kv)]`` from a precomputed row max; no logits in memory at all.
- The row max needs its own pass there: :func:`attention_row_max` (exact, ``QKᵀ`` tiled, half of
  the attention's matmul work) or :func:`frame_row_max`, the documented approximation: the max over
  the keys of the query's own frame only (``1/num_frames`` of that work). It is never above the
  exact max, and equals it whenever a query's largest logit is in its own frame; where it is lower,
  a positive row gets a slightly weaker band.

Tensors are laid out like ``torch.nn.functional.scaled_dot_product_attention``:
``[batch, heads, L, head_dim]``. Bands are ``[num_frames, num_frames]`` (see :mod:`.bands`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

# Logits held at once: a tile of queries × all keys (16 MiB of float32 on CPU, 1 GiB elsewhere).
# Unlike the UNet's many tiny N×N maps (attention.tar_attention, one map a thread), these tiles feed large
# matmuls: on 2 CPU cores at L = 2304, 2^22 elements ran the exact row max 10× and the tiled
# attention 6× faster than 2^18 (more rows per GEMM), and 2^24 was no faster.
_CPU_TILE_ELEMENTS = 1 << 22
_TILE_ELEMENTS = 1 << 28


def tokens_per_frame(query: torch.Tensor, num_frames: int) -> int:
    """``L // num_frames`` for ``query`` ``[batch, heads, L, head_dim]``; a clear error if it does not divide."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if query.ndim != 4:
        raise ValueError(f"attention inputs must be [batch, heads, L, head_dim], got shape {tuple(query.shape)}")
    length = query.shape[-2]
    if length % num_frames:
        raise ValueError(f"{length} tokens do not split into {num_frames} frames of equal size")
    return length // num_frames


def _check_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, band: torch.Tensor, num_frames: int
) -> int:
    tokens = tokens_per_frame(query, num_frames)
    if key.shape != query.shape or value.shape[:-1] != query.shape[:-1]:
        raise ValueError(
            f"full-attention TAR is self-attention: query {tuple(query.shape)}, key {tuple(key.shape)} and "
            f"value {tuple(value.shape)} must share [batch, heads, L]"
        )
    _check_band(band, num_frames)
    return tokens


def _check_band(band: torch.Tensor, num_frames: int) -> None:
    if band.shape != (num_frames, num_frames):
        raise ValueError(f"TAR band has shape {tuple(band.shape)} but the video has {num_frames} latent frames")


def _check_row_max(row_max: torch.Tensor, query: torch.Tensor) -> None:
    if row_max.shape != query.shape[:-1]:
        raise ValueError(f"row_max must be [batch, heads, L] = {tuple(query.shape[:-1])}, got {tuple(row_max.shape)}")


def _scale(query: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale


def _logit_dtype(query: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs (as SDPA accumulates), else the inputs' own dtype."""
    return torch.promote_types(query.dtype, torch.float32)


def _tile_rows(query: torch.Tensor, keys_per_row: int) -> int:
    budget = _CPU_TILE_ELEMENTS if query.device.type == "cpu" else _TILE_ELEMENTS
    batch, heads = query.shape[:2]
    return max(1, budget // (batch * heads * keys_per_row))


def attention_row_max(query: torch.Tensor, key: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """The exact signed row max ``m_i = max_j q_i·k_j·scale`` over all keys.

    Args:
        query, key: ``[batch, heads, L, head_dim]``.
        scale: logit scale, ``1/√head_dim`` by default.

    Returns:
        ``[batch, heads, L]``, float32 (float64 for float64 inputs). ``QKᵀ`` is computed a tile of
        queries at a time (in the inputs' dtype), never the whole L×L map.
    """
    scale = _scale(query, scale)
    length = query.shape[-2]
    row_max = torch.empty(query.shape[:-1], device=query.device, dtype=_logit_dtype(query))
    rows = _tile_rows(query, key.shape[-2])
    key_t = key.transpose(-1, -2)
    for start in range(0, length, rows):
        tile = slice(start, start + rows)
        row_max[..., tile] = torch.matmul(query[..., tile, :], key_t).amax(dim=-1)
    # Scaling after the max keeps its order and sign (scale > 0) and touches L values, not L².
    return row_max.mul_(scale)


def frame_row_max(
    query: torch.Tensor, key: torch.Tensor, num_frames: int, *, scale: float | None = None
) -> torch.Tensor:
    """The approximate row max: ``max_{j in f(i)} q_i·k_j·scale``, over the keys of query i's own frame.

    Never above :func:`attention_row_max` (up to rounding); equal to it for every query whose largest logit lies in
    its own latent frame. Costs ``1/num_frames`` of the exact pass.

    Args:
        query, key: ``[batch, heads, L, head_dim]``, frame-major (L = num_frames × tokens_per_frame).
        num_frames: latent frames.
        scale: logit scale, ``1/√head_dim`` by default.

    Returns:
        ``[batch, heads, L]``, float32 (float64 for float64 inputs).
    """
    tokens = tokens_per_frame(query, num_frames)
    scale = _scale(query, scale)
    # [batch, heads, F, T, head_dim]: each frame's queries against that frame's keys only.
    query_frames = query.unflatten(2, (num_frames, tokens))
    key_frames = key.unflatten(2, (num_frames, tokens)).transpose(-1, -2)
    row_max = torch.empty(query_frames.shape[:-1], device=query.device, dtype=_logit_dtype(query))
    frames_per_tile = max(1, _tile_rows(query, tokens) // tokens)
    for start in range(0, num_frames, frames_per_tile):
        tile = slice(start, start + frames_per_tile)
        row_max[:, :, tile] = torch.matmul(query_frames[:, :, tile], key_frames[:, :, tile]).amax(dim=-1)
    return row_max.flatten(2).mul_(scale)


def tar_attention_3d(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    band: torch.Tensor,
    num_frames: int,
    *,
    scale: float | None = None,
    strength: float = 1.0,
    row_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(φ + strength·m·ΔA[f(i), f(j)])·V`` with ``φ = QKᵀ·scale``: TAR over latent frames, exactly.

    Args:
        query, key, value: ``[batch, heads, L, head_dim]`` (value may have its own head_dim), tokens
            frame-major: token i is in latent frame ``i // (L / num_frames)``.
        band: ΔA ``[num_frames, num_frames]`` (query frame, key frame).
        num_frames: latent frames F; L must be a multiple of F.
        scale: logit scale, ``1/√head_dim`` by default (as SDPA).
        strength: multiplies ``m_i`` (the authors' ``scale``; 1 in all their UNet presets).
        row_max: ``[batch, heads, L]`` to use for ``m`` instead of the exact row max, e.g.
            :func:`frame_row_max` to evaluate that approximation; ``None`` is the exact max.

    Returns:
        ``[batch, heads, L, value_head_dim]`` in the dtype of ``value``. Logits are float32 (float64
        for float64 inputs) and held one tile of queries at a time, never L×L.
    """
    _check_inputs(query, key, value, band, num_frames)
    batch, heads, length, _ = query.shape
    output = value.new_empty(batch, heads, length, value.shape[-1])
    for tile, probs in attention_probability_tiles(
        query, key, num_frames, band=band, scale=scale, strength=strength, row_max=row_max
    ):
        output[..., tile, :] = torch.matmul(probs.to(value.dtype), value)
    return output


def attention_probability_tiles(
    query: torch.Tensor,
    key: torch.Tensor,
    num_frames: int,
    *,
    band: torch.Tensor | None = None,
    scale: float | None = None,
    strength: float = 1.0,
    row_max: torch.Tensor | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """The attention probabilities of :func:`tar_attention_3d` (``band=None``: plain softmax), a tile
    of queries at a time.

    Args:
        query, key: ``[batch, heads, L, head_dim]``, frame-major.
        num_frames, band, scale, strength, row_max: as for :func:`tar_attention_3d`.

    Yields:
        ``(queries, probs)``: the slice of query positions and their ``[batch, heads, tile, L]``
        probabilities (float32, float64 for float64 inputs; rows sum to 1). Each tile is freed when
        the next one is computed, so memory holds one tile of logits, never L×L.
    """
    tokens = tokens_per_frame(query, num_frames)
    if band is not None:
        _check_band(band, num_frames)
    if row_max is not None:
        _check_row_max(row_max, query)
    scale = _scale(query, scale)
    length = query.shape[-2]
    dtype = _logit_dtype(query)
    weights = None if band is None else band.to(device=query.device, dtype=dtype) * strength
    key_t = key.transpose(-1, -2)
    query_frame = torch.arange(length, device=query.device) // tokens
    rows = _tile_rows(query, length)
    for start in range(0, length, rows):
        tile = slice(start, start + rows)
        logits = torch.matmul(query[..., tile, :], key_t).to(dtype).mul_(scale)
        if weights is not None:
            tile_max = logits.amax(dim=-1) if row_max is None else row_max[..., tile].to(dtype)
            # bias[b, h, i, g] = m_i · ΔA[f(i), g], broadcast over the T keys of each key frame g.
            bias = tile_max[..., None] * weights[query_frame[tile]]
            logits = logits.unflatten(-1, (num_frames, tokens)).add_(bias[..., None]).flatten(-2)
        yield tile, logits.softmax(dim=-1)


_compiled_flex_attention = None


def _flex_attention():
    """FlexAttention compiled once per process (it only fuses when compiled; eager materialises scores)."""
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex_attention


def flex_tar_attention_3d(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    band: torch.Tensor,
    num_frames: int,
    *,
    scale: float | None = None,
    strength: float = 1.0,
    row_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`tar_attention_3d` as one fused FlexAttention kernel (compiled; no logits in memory).

    The ``score_mod`` adds ``m[b, h, q]·strength·ΔA[q // T, kv // T]`` to each score; ``m`` must be
    known before the kernel runs, so it is ``row_max`` if given (e.g. :func:`frame_row_max`), else
    :func:`attention_row_max` (a separate exact pass). Arguments and result as for
    :func:`tar_attention_3d`. The first call per shape compiles (about 25 s on CPU); scores are
    float32 inside the kernel whatever the inputs' dtype.
    """
    tokens = _check_inputs(query, key, value, band, num_frames)
    if row_max is None:
        row_max = attention_row_max(query, key, scale=scale)
    _check_row_max(row_max, query)
    row_max = row_max.float().contiguous()
    weights = (band.to(device=query.device, dtype=torch.float32) * strength).contiguous()

    def add_band(score, b, h, q_idx, kv_idx):
        return score + row_max[b, h, q_idx] * weights[q_idx // tokens, kv_idx // tokens]

    return _flex_attention()(query, key, value, score_mod=add_band, scale=scale)
