"""Temporal attention analysis on diffusion transformers (paper §3.3, Fig. 4, for Wan's full attention).

A DiT's ``attn1`` attends over all video tokens, so its temporal structure is the *frame-to-frame
map*: the attention mass that the tokens of latent frame f give to the tokens of latent frame g,
averaged over the tokens of f, the batch and the heads (:func:`frame_attention_map`). Its rows sum
to 1, as a UNet's temporal map's do, so :func:`~vstar_model.analysis.temporal_attention.band_score`,
:func:`~vstar_model.analysis.temporal_attention.gaussian_band_fit` and the figures of
:mod:`vstar_model.analysis.plots` (``unit="block"``) read it unchanged. It is computed a tile of
queries at a time, never from the L×L map.

:func:`capture_dit_attention` records it for every block's ``attn1`` in every transformer call made
inside it, as :func:`~vstar_model.analysis.temporal_attention.capture_attention` does per UNet
layer: the plain map where TAR is off, ``A'`` where :func:`vstar_model.tar.dit.apply_dit_tar` is
active. The map is computed beside the attention, so outputs are bit-identical to a run without
capture; outside the block nothing is installed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from vstar_model.analysis.temporal_attention import (
    DEFAULT_TIMESTEP,
    REDUCE_MODES,
    MapRecorder,
    Reduce,
    _check_frames,
    _check_steps,
    attention_rows,
    probes_installed,
)
from vstar_model.tar.dit import DiTAttentionProbe, DiTSelfAttnProcessor, TokenLayout, dit_self_attention_blocks
from vstar_model.tar.full_attention import attention_probability_tiles, tokens_per_frame

if TYPE_CHECKING:
    from vstar_model.backbones.wan import WanVideoModel
    from vstar_model.sampling import GeneratedVideo
    from vstar_model.sampling.dit import FlowMatchingConfig


def frame_attention_map(
    query: torch.Tensor,
    key: torch.Tensor,
    num_frames: int,
    *,
    band: torch.Tensor | None = None,
    strength: float = 1.0,
    row_max: torch.Tensor | None = None,
    scale: float | None = None,
    per_head: bool = False,
) -> torch.Tensor:
    """The frame-to-frame attention map of one full self-attention layer.

    ``map[f, g] = mean over the batch, the heads and the query tokens i of frame f of
    Σ_{j in frame g} A_ij``, where A is the layer's attention (TAR's ``A'`` with ``band``).

    Args:
        query, key: ``[batch, heads, L, head_dim]``, frame-major (L = num_frames × tokens_per_frame).
        num_frames: latent frames F.
        band, strength, row_max, scale: TAR's ΔA ``[F, F]`` and the rest as for
            :func:`vstar_model.tar.full_attention.tar_attention_3d`; ``band=None`` is the plain map.
        per_head: keep the heads apart.

    Returns:
        float32 ``[F, F]`` (``[heads, F, F]`` with ``per_head``) on the device of ``query``; rows
        sum to 1.
    """
    tokens = tokens_per_frame(query, num_frames)
    batch, heads, length, _ = query.shape
    query_frame = torch.arange(length, device=query.device) // tokens
    total = torch.zeros(heads, num_frames, num_frames, device=query.device, dtype=torch.float32)
    for tile, probs in attention_probability_tiles(
        query, key, num_frames, band=band, scale=scale, strength=strength, row_max=row_max
    ):
        # [batch, heads, tile, L] -> mass per key frame, summed over the batch: [heads, tile, F]
        to_frames = probs.unflatten(-1, (num_frames, tokens)).sum(dim=(0, -1), dtype=torch.float32)
        total.index_add_(1, query_frame[tile], to_frames)
    total /= batch * tokens
    return total if per_head else total.mean(dim=0)


class DiTAttentionRecorder(MapRecorder):
    """The frame-to-frame maps recorded by :func:`capture_dit_attention`.

    Attributes:
        maps: (step, processor name) → float32 map on the transformer's device, ``[F, F]`` (or
            ``[heads, F, F]`` with ``reduce="per_head"``). A step is the index of a transformer call
            inside the capture block (with ``calls_per_step`` > 1, of a group of calls, of which the
            first is recorded).
        blocks: processor name → block index of every captured ``attn1``.
        timesteps: step → the diffusion timestep of that call (Wan's are floats in [0, 1000]).
    """

    def __init__(
        self,
        blocks: Mapping[str, int],
        *,
        reduce: Reduce,
        steps: frozenset[int] | None,
        batch_index: int | None,
        calls_per_step: int = 1,
    ):
        super().__init__()
        self.blocks = dict(blocks)
        self.reduce = reduce
        self._steps = steps
        self._batch_index = batch_index
        self._calls_per_step = calls_per_step
        self._calls = 0
        self._step = 0

    def _probe(self, name: str) -> DiTAttentionProbe:
        def record(query, key, *, num_frames, band, strength, row_max) -> None:
            if not self._recording:
                return
            if self._batch_index is not None:
                index = self._batch_index % query.shape[0]
                video = slice(index, index + 1)
                query, key = query[video], key[video]
                row_max = None if row_max is None else row_max[video]
            self.maps[(self._step, name)] = frame_attention_map(
                query, key, num_frames, band=band, strength=strength, row_max=row_max,
                per_head=self.reduce == "per_head",
            )  # fmt: skip

        return record

    def _begin_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Transformer forward pre-hook: a new call begins; the first call of each step is recorded."""
        step, branch = divmod(self._calls, self._calls_per_step)
        self._calls += 1
        self._step = step
        self._recording = branch == 0 and (self._steps is None or step in self._steps)
        if not self._recording:
            return
        hidden_states = args[0] if args else kwargs["hidden_states"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        batch_size = hidden_states.shape[0]
        if self._batch_index is not None and not -batch_size <= self._batch_index < batch_size:
            raise ValueError(
                f"attention capture batch_index {self._batch_index} is outside the transformer's batch of "
                f"{batch_size} video(s)"
            )
        self.timesteps[step] = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)


@contextmanager
def capture_dit_attention(
    transformer: torch.nn.Module,
    *,
    reduce: Reduce = "mean",
    steps: Collection[int] | None = None,
    batch_index: int | None = None,
    calls_per_step: int = 1,
) -> Iterator[DiTAttentionRecorder]:
    """Record the frame-to-frame map of every block's ``attn1`` in every transformer call inside the block.

    Args:
        transformer: a Wan transformer (see :func:`~vstar_model.tar.dit.dit_self_attention_blocks`).
        reduce: ``"mean"`` over heads (``[F, F]`` per block and step) or ``"per_head"``.
        steps: the transformer calls to record (0-based, in call order); all by default.
        batch_index: record one video of the batch only; ``None`` averages over the batch.
        calls_per_step: transformer calls per denoising step; only the first of each is recorded
            (2 for :func:`vstar_model.sampling.dit.generate_video`: the conditional call, then the
            unconditional one).

    Use as ``with capture_dit_attention(transformer) as recorder: transformer(...)``. TAR may be
    applied inside or outside the block. Every ``attn1`` gets a
    :class:`~vstar_model.tar.dit.DiTSelfAttnProcessor` (one already there keeps its own and gets a
    probe after any it has); the processors swapped out come back when the block ends. Recording
    costs one extra ``QKᵀ`` and softmax per layer and call, a tile at a time.
    """
    if reduce not in REDUCE_MODES:
        raise ValueError(f"unknown attention reduce mode {reduce!r}; expected one of {', '.join(REDUCE_MODES)}")
    if batch_index is not None and (isinstance(batch_index, bool) or not isinstance(batch_index, int)):
        raise ValueError(f"batch_index must be an int or None, got {batch_index!r}")
    blocks = dit_self_attention_blocks(transformer)
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has no transformer blocks with self-attention to capture")
    if isinstance(calls_per_step, bool) or not isinstance(calls_per_step, int) or calls_per_step < 1:
        raise ValueError(f"calls_per_step must be an int >= 1, got {calls_per_step!r}")
    recorder = DiTAttentionRecorder(
        blocks, reduce=reduce, steps=_check_steps(steps), batch_index=batch_index, calls_per_step=calls_per_step
    )
    layout = TokenLayout(transformer.config.patch_size)

    def capturing(previous, probe) -> DiTSelfAttnProcessor:
        processor = DiTSelfAttnProcessor(layout, probe=probe)
        processor._attention_backend = getattr(previous, "_attention_backend", None)
        return processor

    probes = {name: recorder._probe(name) for name in blocks}
    with probes_installed(transformer, probes, DiTSelfAttnProcessor, capturing):
        hooks = [
            transformer.register_forward_pre_hook(layout.hook, with_kwargs=True),
            transformer.register_forward_pre_hook(recorder._begin_call, with_kwargs=True),
            transformer.register_forward_hook(recorder._end_call, always_call=True),
        ]
        try:
            yield recorder
        finally:
            for hook in hooks:
                hook.remove()


def block_maps(layer_maps: Mapping[str, torch.Tensor], blocks: Mapping[str, int]) -> dict[int, torch.Tensor]:
    """Block index → its map, first block first (the DiT counterpart of ``level_maps``)."""
    unknown = sorted(set(layer_maps) - set(blocks))
    if unknown:
        raise ValueError(f"no block known for layer(s) {unknown}")
    return {blocks[name]: attention for name, attention in sorted(layer_maps.items(), key=lambda kv: blocks[kv[0]])}


def dit_attention_rows(
    layer_maps: Mapping[str, torch.Tensor], blocks: Mapping[str, int], *, width: int = 1, **context: Any
) -> list[dict[str, Any]]:
    """One table row per block map: ``**context, layer, block, num_frames, band_width, band_mass,
    band_score, gaussian_sigma, gaussian_correlation`` (as
    :func:`~vstar_model.analysis.temporal_attention.attention_rows`, with the block in place of the
    level). ``width`` is in latent frames."""
    if "block" in context:
        raise ValueError("context field 'block' would overwrite a computed column")
    rows = attention_rows(layer_maps, blocks, width=width, **context)
    return [{("block" if name == "level" else name): value for name, value in row.items()} for row in rows]


# --- real and generated Wan videos ---------------------------------------------------------------

# generate_video makes a conditional, then an unconditional transformer call per step.
GUIDANCE_CALLS_PER_STEP = 2


def generated_video_dit_attention(
    model: WanVideoModel,
    states: Sequence[str],
    config: FlowMatchingConfig,
    *,
    seed: int,
    tar=None,
    steps: Collection[int] | None = None,
    reduce: Reduce = "mean",
) -> tuple[GeneratedVideo, DiTAttentionRecorder]:
    """Generate a Wan video with :func:`vstar_model.sampling.dit.generate_video` and record its maps.

    The maps are the conditional call's at the denoising ``steps`` given (all by default); the
    video is the one generated without capture.
    """
    from vstar_model.sampling.dit import generate_video

    with capture_dit_attention(
        model.transformer, reduce=reduce, steps=steps, calls_per_step=GUIDANCE_CALLS_PER_STEP
    ) as recorder:
        video = generate_video(model, states, config, seed=seed, tar=tar)
    return video, recorder


@torch.no_grad()
def encode_wan_frames(model: WanVideoModel, frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` frames (N = 4k + 1) → normalised latents ``[1, C, 1 + (N − 1)/4, H/8, W/8]``.

    The mean of the VAE posterior, normalised with the VAE's ``latents_mean``/``latents_std``: the
    inverse of :func:`vstar_model.sampling.dit.decode_latents`.
    """
    _check_frames(frames)
    model.preset.check_frames(frames.shape[0])
    factor = model.vae_scale_factor
    if frames.shape[1] % factor or frames.shape[2] % factor:
        raise ValueError(
            f"frames are {frames.shape[1]}×{frames.shape[2]}; height and width must be multiples of "
            f"{factor} (see resize_frames)"
        )
    video = frames.to(model.device).permute(3, 0, 1, 2).unsqueeze(0).to(model.vae.dtype) / 127.5 - 1.0
    latents = model.vae.encode(video).latent_dist.mode().float()
    config = model.vae.config
    mean = torch.tensor(config.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
    return (latents - mean) / std


@torch.no_grad()
def real_video_dit_attention(
    model: WanVideoModel,
    frames: torch.Tensor,
    *,
    prompt: str = "",
    timestep: int = DEFAULT_TIMESTEP,
    seed: int = 0,
    reduce: Reduce = "mean",
) -> dict[str, torch.Tensor]:
    """Frame-to-frame maps of a real clip (paper §3.3 for Wan): noise its latent to ``timestep``,
    run the transformer once.

    Flow matching noises as ``x_t = (1 − σ)·x₀ + σ·ε`` with ``σ = timestep / 1000`` (Wan's
    transformer takes ``1000·σ`` as its timestep).

    Args:
        frames: uint8 ``[N, H, W, 3]``, N = 4k + 1, H and W multiples of 8 (see ``resize_frames``).
        prompt: the text condition (one transformer call, no guidance).
        timestep: in ``[0, 1000)``: larger is noisier.
        seed: seed of the added noise.
        reduce: as for :func:`capture_dit_attention`.

    Returns:
        Processor name → float32 map ``[F', F']`` (``[heads, F', F']`` with ``"per_head"``);
        :func:`~vstar_model.tar.dit.dit_self_attention_blocks` gives each layer's block.
    """
    from vstar_model.sampling.dit import encode_text

    num_train_timesteps = 1000
    if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep < num_train_timesteps:
        raise ValueError(f"timestep must be an int in [0, {num_train_timesteps}), got {timestep!r}")
    with model.lock:
        latents = encode_wan_frames(model, frames)
        generator = torch.Generator(device=model.device).manual_seed(seed)
        noise = torch.randn(latents.shape, generator=generator, device=model.device, dtype=latents.dtype)
        sigma = timestep / num_train_timesteps
        noisy = (1.0 - sigma) * latents + sigma * noise
        text = encode_text(model, [prompt])
        with capture_dit_attention(model.transformer, reduce=reduce) as recorder:
            model.transformer(
                hidden_states=noisy.to(model.dtype),
                timestep=torch.tensor([float(timestep)], device=model.device),
                encoder_hidden_states=text,
                return_dict=False,
            )
    return recorder.maps_at(0)
