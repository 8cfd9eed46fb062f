"""Video Synopsis Prompting, the embedding side: one text embedding per frame.

The K state embeddings become keyframes spread evenly over the N frames (the first state at frame
0, the last at frame N-1, the others where the authors put them: see :func:`keyframe_indices`);
every frame between two keyframes is a linear blend of those two
states' full token-embedding sequences (paper §3.2).
"""

from __future__ import annotations

import torch


def keyframe_indices(num_states: int, num_frames: int) -> torch.Tensor:
    """Frame index of each state: ``floor(k * (N - 1) / (K - 1))``, the authors' placement.

    The authors place keyframes with ``torch.linspace(0, N - 1, K)`` cast to an integer type,
    which truncates (N = 48, K = 6: 0, 9, 18, 28, 37, 47). This is the same rule in exact integer
    arithmetic: it equals their indices for every K <= 8 and N <= 1024 (checked), without
    float32 linspace landing one frame low at larger K nor their int8 cast wrapping past frame
    127. The first state is at frame 0, the last at N - 1, and with N >= K the indices strictly
    increase. Works for latent frames too (a DiT's temporally compressed latent).

    Returns:
        LongTensor[K], from 0 to N-1 (just ``[0]`` when K = 1).
    """
    if num_states < 1:
        raise ValueError(f"num_states must be >= 1, got {num_states}")
    if num_frames < num_states:
        raise ValueError(
            f"num_frames={num_frames} is less than num_states={num_states}: "
            "each state needs a frame of its own"
        )
    if num_states == 1:
        return torch.zeros(1, dtype=torch.long)
    k = torch.arange(num_states, dtype=torch.long)
    return k * (num_frames - 1) // (num_states - 1)


def interpolate_embeddings(states: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-frame text embeddings, linearly interpolated between the states' keyframes.

    Args:
        states: Tensor[K, L, C], one token-embedding sequence per state (any trailing shape works).
        num_frames: N >= K.

    Returns:
        Tensor[N, L, C] of ``states``' dtype and device. Frame ``keyframe_indices(K, N)[k]`` equals
        ``states[k]`` exactly; K = 1 gives N copies of the single state.
    """
    if states.ndim < 2:
        raise ValueError(
            f"states must be [K, L, C] (at least [K, C]), got shape {tuple(states.shape)}"
        )
    num_states = states.shape[0]
    keyframes = keyframe_indices(num_states, num_frames).to(states.device)
    if num_states == 1:
        return states.expand(num_frames, *states.shape[1:]).clone()

    frames = torch.arange(num_frames, device=states.device)
    # Segment s spans keyframes[s]..keyframes[s+1]; the last frame belongs to the last segment.
    segment = (torch.searchsorted(keyframes, frames, right=True) - 1).clamp(max=num_states - 2)
    start, end = keyframes[segment], keyframes[segment + 1]
    compute_dtype = torch.promote_types(states.dtype, torch.float32)
    weight = ((frames - start).to(compute_dtype) / (end - start).to(compute_dtype)).view(
        num_frames, *([1] * (states.ndim - 1))
    )
    # (1 - w) * a + w * b, not a + w * (b - a): with w = 0 or 1 it returns a or b bit-exactly.
    first, second = states[segment].to(compute_dtype), states[segment + 1].to(compute_dtype)
    return ((1 - weight) * first + weight * second).to(states.dtype)
