"""RIFLEx (Zhao et al., ICML 2025; thu-ml/RIFLEx): one temporal RoPE frequency lowered for long videos.

A video DiT's 3D RoPE rotates each temporal channel pair j at θ_j = b^(−2(j−1)/d) per latent frame.
RIFLEx observes that clips longer than training repeat content once they outrun the period
N_k = 2π/θ_k of one *intrinsic* frequency k, and sets θ_k = 0.9 · 2π / L for an L-latent-frame
clip, so the whole clip stays within 90 % of one period. As in the authors' scripts, the frequency
is changed only when L > N_k; shorter clips keep the trained RoPE. Training-free; no other
frequency changes.

:func:`apply_riflex` does this to diffusers' ``WanRotaryPosEmbed`` (``transformer.rope``): its
``freqs_cos`` / ``freqs_sin`` tables hold [temporal | height | width] channels, each frequency
repeated for the two channels of its pair; only the pair of frequency k is rewritten, and the
tables are restored on exit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ROPE_THETA = 10000.0  # WanRotaryPosEmbed's base b
SAFETY = 0.9  # the authors' margin: the clip spans 90 % of the new period


def rope_frequencies(dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """θ_j = theta^(−2(j−1)/dim) for j = 1 … dim/2, float64 (diffusers' ``get_1d_rotary_pos_embed``)."""
    if dim < 2 or dim % 2:
        raise ValueError(f"RoPE dimension must be even and ≥ 2, got {dim}")
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def intrinsic_period(dim: int, k: int, theta: float = ROPE_THETA) -> int:
    """N_k = round(2π / θ_k), in latent frames, of the 1-based frequency ``k``."""
    frequencies = rope_frequencies(dim, theta)
    if not 1 <= k <= len(frequencies):
        raise ValueError(f"RIFLEx index k={k} is outside 1…{len(frequencies)} for a {dim}-channel temporal RoPE")
    return round(2 * math.pi / frequencies[k - 1].item())


def riflex_frequencies(dim: int, num_frames: int, k: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """The temporal RoPE frequencies (dim/2,) float64 for a clip of ``num_frames`` latent frames:
    θ_k = 0.9·2π/num_frames when num_frames > N_k, all others (and short clips) unchanged."""
    frequencies = rope_frequencies(dim, theta)
    if num_frames > intrinsic_period(dim, k, theta):
        frequencies[k - 1] = SAFETY * 2 * math.pi / num_frames
    return frequencies


def _tables(frequencies: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position × frequency, (length, 2·len(frequencies)) float32, pairs repeated."""
    angles = torch.outer(torch.arange(length, dtype=torch.float64), frequencies)
    return angles.cos().repeat_interleave(2, dim=1).float(), angles.sin().repeat_interleave(2, dim=1).float()


@contextmanager
def apply_riflex(transformer: torch.nn.Module, num_frames: int, k: int) -> Iterator[bool]:
    """RIFLEx on a ``WanTransformer3DModel`` for clips of ``num_frames`` latent frames.

    Yields whether frequency ``k`` was changed (False when the clip is within its period).

    Raises:
        ValueError: ``k`` is outside the temporal RoPE, or the RoPE tables are not laid out as
            diffusers' ``WanRotaryPosEmbed`` builds them (checked, not assumed).
    """
    rope = transformer.rope
    dim, length = rope.t_dim, rope.freqs_cos.shape[0]
    trained_cos, _ = _tables(rope_frequencies(dim), length)
    if not torch.allclose(rope.freqs_cos[:, :dim].cpu(), trained_cos, atol=1e-6):
        raise ValueError("the transformer's temporal RoPE is not the one RIFLEx expects (b = 10000, pairs repeated)")
    frequencies = riflex_frequencies(dim, num_frames, k)
    changed = num_frames > intrinsic_period(dim, k)
    original = rope.freqs_cos, rope.freqs_sin
    if changed:
        new_cos, new_sin = _tables(frequencies, length)
        pair = slice(2 * (k - 1), 2 * k)
        cos, sin = original[0].clone(), original[1].clone()
        cos[:, pair], sin[:, pair] = new_cos[:, pair].to(cos.device), new_sin[:, pair].to(sin.device)
        rope.freqs_cos, rope.freqs_sin = cos, sin
    try:
        yield changed
    finally:
        rope.freqs_cos, rope.freqs_sin = original
