"""Per-frame text conditioning for cross-attention diffusion transformers (Wan 2.1), without forking diffusers.

In ``WanTransformer3DModel`` every block's ``attn2`` lets all F'·h'·w' video tokens attend to the
same text tokens. VSP needs the tokens of latent frame f to attend to the state embedding
interpolated at f. While :func:`per_frame_text` is active:

* the caller passes ``encoder_hidden_states`` of shape (B, F'·L, C): the F' per-frame embeddings of
  L tokens each, concatenated along the token axis (:func:`frame_tokens`). The transformer's own
  text projection is per token, so it projects them unchanged in layout;
* :class:`PerFrameCrossAttnProcessor` on each block's ``attn2`` splits keys and values into F'
  chunks of L and video tokens into F' chunks of h'·w' (tokens are frame-major: token i belongs
  to latent frame i // (h'·w')), and runs the cross-attention once per frame;
* a text of plain length L (the unconditional branch's one negative embedding) is attended to by
  every frame, exactly as diffusers' ``WanAttnProcessor`` does.

Blocks call their attention without keyword arguments, so the token grid (F', h', w') comes from a
forward pre-hook on the transformer that reads ``hidden_states.shape`` and ``config.patch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


def frame_tokens(frame_embeddings: torch.Tensor) -> torch.Tensor:
    """(F', L, C) per-latent-frame text embeddings → (1, F'·L, C), the layout the processors split."""
    if frame_embeddings.ndim != 3:
        raise ValueError(f"frame embeddings must be [frames, tokens, channels], got {tuple(frame_embeddings.shape)}")
    return frame_embeddings.reshape(1, -1, frame_embeddings.shape[-1])


@dataclass
class TokenGrid:
    """The latent token grid of the transformer's current call: (frames, height, width) after patching."""

    frames: int = 0
    height: int = 0
    width: int = 0

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width


class PerFrameCrossAttnProcessor:
    """``WanAttnProcessor``'s text cross-attention, per latent frame when the text is per frame.

    Shapes: ``hidden_states`` (B, F'·h'·w', D); ``encoder_hidden_states`` (B, L, D) — every frame
    attends to the same L tokens — or (B, F'·L, D) — frame f attends to tokens f·L … (f+1)·L − 1.
    Returns (B, F'·h'·w', D).
    """

    _attention_backend = None  # diffusers' attention backend, kept from the processor replaced

    def __init__(self, grid: TokenGrid, text_length: int):
        self.grid = grid
        self.text_length = text_length

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        if attn.add_k_proj is not None:
            raise ValueError("per-frame text conditioning supports text-to-video Wan, not image-conditioned blocks")
        if encoder_hidden_states is None:
            raise ValueError("PerFrameCrossAttnProcessor is for cross-attention (attn2) layers")
        batch, num_video_tokens, _ = hidden_states.shape
        num_text_tokens = encoder_hidden_states.shape[1]
        frames, per_frame = self.grid.frames, self.grid.tokens_per_frame
        if frames * per_frame != num_video_tokens:
            raise ValueError(
                f"token grid {frames}×{self.grid.height}×{self.grid.width} does not cover {num_video_tokens} "
                "video tokens: call the transformer itself, which records the grid"
            )
        if num_text_tokens == frames * self.text_length:
            text_frames = frames  # one text per latent frame
        elif num_text_tokens == self.text_length:
            text_frames = 1  # one text for all frames
        else:
            raise ValueError(
                f"text of {num_text_tokens} tokens is neither {self.text_length} (one text) nor "
                f"{frames}×{self.text_length} (one per latent frame)"
            )

        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(encoder_hidden_states))
        value = attn.to_v(encoder_hidden_states)
        # (B, S, H·d) → (B·F_text, S / F_text, H, d): frame f's queries meet frame f's text.
        query = query.reshape(batch * text_frames, num_video_tokens // text_frames, attn.heads, -1)
        key = key.reshape(batch * text_frames, self.text_length, attn.heads, -1)
        value = value.reshape(batch * text_frames, self.text_length, attn.heads, -1)
        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend)
        out = out.reshape(batch, num_video_tokens, -1).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def cross_attention_layers(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """Each block's text cross-attention (``blocks.<i>.attn2``) of a WanTransformer3DModel."""
    return [block.attn2 for block in getattr(transformer, "blocks", ()) if getattr(block.attn2, "is_cross_attention", False)]


@contextmanager
def per_frame_text(transformer: torch.nn.Module, text_length: int) -> Iterator[TokenGrid]:
    """Let a WanTransformer3DModel take one text per latent frame (see the module docstring).

    Args:
        text_length: L, tokens per text embedding (Wan: 512).

    Inside the block, call the transformer with ``encoder_hidden_states`` of (B, F'·L, C) for per-frame
    text (:func:`frame_tokens`) or (B, L, C) for one text. Yields the grid the processors read.
    On exit the previous processors are back and the hook is removed.
    """
    layers = cross_attention_layers(transformer)
    if not layers:
        raise ValueError(f"{type(transformer).__name__} has no cross-attention blocks to condition per frame")
    grid = TokenGrid()
    patch_t, patch_h, patch_w = transformer.config.patch_size

    def record_grid(module, args, kwargs):
        latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        _, _, frames, height, width = latents.shape
        grid.frames, grid.height, grid.width = frames // patch_t, height // patch_h, width // patch_w

    previous = [layer.processor for layer in layers]
    hook = transformer.register_forward_pre_hook(record_grid, with_kwargs=True)
    try:
        for layer, original in zip(layers, previous):
            processor = PerFrameCrossAttnProcessor(grid, text_length)
            processor._attention_backend = getattr(original, "_attention_backend", None)
            layer.set_processor(processor)
        yield grid
    finally:
        hook.remove()
        for layer, original in zip(layers, previous):
            layer.set_processor(original)
