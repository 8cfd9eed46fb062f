"""Per-frame text conditioning for UNet3DConditionModel without forking diffusers.

UNet3DConditionModel gives every frame the same text: ``forward`` does
``encoder_hidden_states.repeat_interleave(num_frames, dim=0)`` and its spatial cross-attention layers
then see one (batch·frames, tokens, channels) tensor whose rows repeat per video. VSP needs a different
embedding per frame. While :func:`per_frame_text` is active, a forward pre-hook on each *spatial*
cross-attention layer swaps that repeated tensor for the caller's per-frame one, which has the same
shape and row order (video-major, frame-minor), so nothing else in the UNet changes.

AnimateDiff's UNetMotionModel needs none of this: it takes ``encoder_hidden_states`` already expanded
to (batch·frames, tokens, channels), so the per-frame tensor is passed directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def frame_batch(uncond: torch.Tensor, cond_frames: torch.Tensor) -> torch.Tensor:
    """Stack the classifier-free-guidance batch per frame.

    Args:
        uncond: (1, L, C) the unconditional (negative-prompt) embedding, shared by every frame.
        cond_frames: (N, L, C) one conditional embedding per frame.
    Returns:
        (2·N, L, C): rows 0..N−1 unconditional, rows N..2N−1 the per-frame conditional embeddings, the
        order diffusers uses for a CFG batch ``[uncond video, cond video]`` flattened over frames.
    """
    if uncond.shape[1:] != cond_frames.shape[1:]:
        raise ValueError(
            f"unconditional embedding {tuple(uncond.shape)} and per-frame embeddings "
            f"{tuple(cond_frames.shape)} differ in tokens or channels"
        )
    return torch.cat([uncond.expand(cond_frames.shape[0], -1, -1), cond_frames], dim=0)


def spatial_cross_attention_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The spatial transformers' cross-attention modules (``*.attentions.*.attn2``) of a UNet3D."""
    return [
        module
        for name, module in unet.named_modules()
        if name.endswith(".attn2") and ".attentions." in name and getattr(module, "is_cross_attention", False)
    ]


@contextmanager
def per_frame_text(unet: torch.nn.Module, frame_embeddings: torch.Tensor) -> Iterator[None]:
    """Condition each frame of a UNet3DConditionModel on its own text embedding.

    Args:
        unet: a UNet3DConditionModel (ModelScope, Zeroscope, VideoCrafter2 conversions).
        frame_embeddings: (B·N, L, C) in the order of the UNet's flattened batch: video-major,
            frame-minor. For classifier-free guidance see :func:`frame_batch`.

    Inside the block, call the UNet as usual with an ``encoder_hidden_states`` of shape (B, L, C);
    its spatial cross-attention layers receive ``frame_embeddings`` instead of the repeated tensor.
    """
    layers = spatial_cross_attention_layers(unet)
    if not layers:
        raise ValueError(f"{type(unet).__name__} has no spatial cross-attention layers to condition")

    def swap(module, args, kwargs):
        repeated = kwargs.get("encoder_hidden_states")
        if repeated is None or repeated.shape != frame_embeddings.shape:
            raise ValueError(
                f"per-frame embeddings {tuple(frame_embeddings.shape)} do not match the UNet's "
                f"repeated text batch {None if repeated is None else tuple(repeated.shape)}"
            )
        kwargs["encoder_hidden_states"] = frame_embeddings.to(repeated.dtype)
        return args, kwargs

    handles = [layer.register_forward_pre_hook(swap, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
