"""Temporal attention analysis (paper §3.3, Fig. 4, 5 and 10): capture maps, real-video maps, band scores.

:func:`capture_attention` records the temporal attention map of every temporal self-attention layer
in every UNet call made inside it: the plain map ``A = softmax(QKᵀ/√d)`` (eq. 1), the regularised
``A'`` where TAR is active, ``I`` or ``J_N/N`` where a replace experiment is. Each map is reduced on
the fly, by default to its mean over positions (video batch × h × w) and heads, so memory stays
N×N per layer and call. The map is computed beside the attention, never in its place, so a video
generated while capturing is bit-identical to one generated without; outside the block nothing
is installed, so there is no cost when capture is off.

Real videos get their maps as the paper does (:func:`real_video_attention`): encode the clip with
the model's VAE, noise it to a timestep, run the denoiser once. :func:`band_score` and
:func:`gaussian_band_fit` say how band-like a map is, and :func:`attention_rows` turns maps into
table rows so runs and backbones can be compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from vstar_model.tar.attention import ReplaceMode, tar_attention_probs
from vstar_model.backbones.loading import VideoModel
from vstar_model.tar.bands import gaussian_band
from vstar_model.sampling import GeneratedVideo
from vstar_model.sampling.unet import SamplingConfig, encode_text, generate_video
from vstar_model.tar.unet import AttentionProbe, TemporalAttnProcessor, temporal_attention_levels

Reduce = Literal["mean", "per_head"]
REDUCE_MODES: tuple[str, ...] = ("mean", "per_head")
DEFAULT_TIMESTEP = 500  # mid-schedule of 1000 training steps, inside TAR's default window
DEFAULT_BAND_WIDTH = 1
# generate_video's classifier-free-guidance batch is [unconditional, conditional].
CONDITIONAL_BATCH_INDEX = 1
# Positions per chunk when averaging maps: on CPU cache-sized (as in attention.tar_attention),
# elsewhere large enough for one or a few kernels.
_CPU_CHUNK_ELEMENTS = 1 << 18
_CHUNK_ELEMENTS = 1 << 26


def mean_attention_map(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    band: torch.Tensor | None = None,
    replace: ReplaceMode | None = None,
    attn_mask: torch.Tensor | None = None,
    per_head: bool = False,
) -> torch.Tensor:
    """The attention map of a temporal layer averaged over positions (and heads).

    Args:
        query, key: ``[positions, heads, N, head_dim]`` (positions = video batch × h × w).
        band: ΔA ``[N, N]`` for TAR's ``A'``; ``None`` for the plain map.
        replace: ``"identity"`` or ``"ones"`` when the map is replaced (``band`` is then unused).
        attn_mask: SDPA-style mask broadcastable to ``[positions, heads, N, N]``.
        per_head: keep the heads apart.

    Returns:
        float32 ``[N, N]`` (``[heads, N, N]`` with ``per_head``) on the device of ``query``; rows
        sum to 1. Positions are processed in chunks, so memory never holds all the maps at once.
    """
    positions, heads, num_frames, _ = query.shape
    if replace is not None:
        if replace == "identity":
            frame_map = torch.eye(num_frames, device=query.device)
        else:
            frame_map = torch.full((num_frames, num_frames), 1 / num_frames, device=query.device)
        return frame_map.expand(heads, -1, -1).clone() if per_head else frame_map
    budget = _CPU_CHUNK_ELEMENTS if query.device.type == "cpu" else _CHUNK_ELEMENTS
    rows = max(1, budget // (heads * num_frames * num_frames))
    total = torch.zeros(heads, num_frames, num_frames, device=query.device, dtype=torch.float32)
    for start in range(0, positions, rows):
        chunk = slice(start, start + rows)
        mask = attn_mask[chunk] if attn_mask is not None and attn_mask.shape[0] == positions else attn_mask
        probs = tar_attention_probs(query[chunk], key[chunk], band, attn_mask=mask)
        total += probs.sum(dim=0, dtype=torch.float32)
    total /= positions
    return total if per_head else total.mean(dim=0)


class MapRecorder:
    """Maps recorded per (step, layer) during a capture: what the UNet and DiT recorders share."""

    def __init__(self):
        self.maps: dict[tuple[int, str], torch.Tensor] = {}
        self.timesteps: dict[int, float] = {}
        self._recording = False

    @property
    def steps(self) -> list[int]:
        """The recorded steps, in order."""
        return sorted({step for step, _ in self.maps})

    def maps_at(self, step: int) -> dict[str, torch.Tensor]:
        """Processor name → map of one recorded step."""
        maps = {name: m for (s, name), m in self.maps.items() if s == step}
        if not maps:
            raise ValueError(f"step {step!r} was not recorded; recorded steps: {self.steps}")
        return maps

    def layer_maps(self, steps: Collection[int] | None = None) -> dict[str, torch.Tensor]:
        """Processor name → its map averaged over ``steps`` (all recorded steps by default)."""
        chosen = self.steps if steps is None else sorted(set(steps))
        per_step = [self.maps_at(step) for step in chosen]
        if not per_step:
            raise ValueError("no steps were recorded")
        return {name: torch.stack([maps[name] for maps in per_step]).mean(dim=0) for name in per_step[0]}

    def _end_call(self, *_: Any) -> None:
        """Model forward hook: layers called outside a model call are not recorded."""
        self._recording = False


class AttentionRecorder(MapRecorder):
    """The maps recorded by :func:`capture_attention`.

    Attributes:
        maps: (step, processor name) → float32 map on the UNet's device, ``[N, N]`` (or
            ``[heads, N, N]`` with ``reduce="per_head"``). A step is the index of a UNet call
            inside the capture block: with :func:`~vstar_model.sampling.unet.generate_video`, the
            denoising step.
        levels: processor name → level (64, 32, 16, 8) of every captured layer.
        timesteps: step → diffusion timestep of that UNet call, for the recorded steps.
    """

    def __init__(
        self,
        levels: Mapping[str, int],
        *,
        reduce: Reduce,
        steps: frozenset[int] | None,
        batch_index: int | None,
    ):
        super().__init__()
        self.levels = dict(levels)
        self.reduce = reduce
        self._steps = steps
        self._batch_index = batch_index
        self._calls = 0
        self._batch_size = 1

    def _probe(self, name: str) -> AttentionProbe:
        """The :class:`~vstar_model.tar.unet.AttentionProbe` of the layer ``name``."""

        def record(query, key, *, attn_mask, band, replace) -> None:
            if self._recording:
                self._record(name, query, key, attn_mask, band, replace)

        return record

    def _begin_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """UNet forward pre-hook: a new step begins."""
        step, self._calls = self._calls, self._calls + 1
        self._recording = self._steps is None or step in self._steps
        if not self._recording:
            return
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self._batch_size = sample.shape[0]
        if self._batch_index is not None and not -self._batch_size <= self._batch_index < self._batch_size:
            raise ValueError(
                f"attention capture batch_index {self._batch_index} is outside the UNet's batch of "
                f"{self._batch_size} video(s)"
            )
        self.timesteps[step] = int(timestep.flatten()[0]) if torch.is_tensor(timestep) else int(timestep)

    def _record(
        self,
        name: str,
        query: torch.Tensor,
        key: torch.Tensor,
        attn_mask: torch.Tensor | None,
        band: torch.Tensor | None,
        replace: ReplaceMode | None,
    ) -> None:
        if self._batch_index is not None:
            # Temporal layers see [video batch·h·w, ...], video-major (diffusers' layout).
            per_video = query.shape[0] // self._batch_size
            index = self._batch_index % self._batch_size
            video = slice(index * per_video, (index + 1) * per_video)
            if attn_mask is not None and attn_mask.shape[0] == query.shape[0]:
                attn_mask = attn_mask[video]
            query, key = query[video], key[video]
        step = self._calls - 1
        self.maps[(step, name)] = mean_attention_map(
            query, key, band=band, replace=replace, attn_mask=attn_mask, per_head=self.reduce == "per_head"
        )


def _check_steps(steps: Collection[int] | None) -> frozenset[int] | None:
    if steps is None:
        return None
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Collection):
        raise ValueError(f"capture steps must be a collection of step indices or None, got {steps!r}")
    bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"capture steps must be ints >= 0, got {bad!r}")
    return frozenset(steps)


@contextmanager
def capture_attention(
    unet: torch.nn.Module,
    *,
    reduce: Reduce = "mean",
    steps: Collection[int] | None = None,
    batch_index: int | None = None,
) -> Iterator[AttentionRecorder]:
    """Record the temporal attention maps of every UNet call made inside the block.

    Args:
        unet: a video UNet with temporal self-attention layers (see
            :func:`~vstar_model.tar.unet.temporal_attention_levels`).
        reduce: ``"mean"`` over positions and heads (``[N, N]`` per layer and step) or
            ``"per_head"`` (``[heads, N, N]``).
        steps: the UNet calls to record (0-based, in call order); all by default. A call not
            recorded costs one Python call per temporal layer.
        batch_index: record one video of the UNet batch only (e.g. ``1``, the conditional branch
            of ``generate_video``'s guidance batch); ``None`` averages over the whole batch.

    Use as ``with capture_attention(model.unet) as recorder: generate_video(...)``. TAR may be
    applied inside or outside the block: where it is active the map recorded is ``A'``. Every
    temporal layer gets a :class:`~vstar_model.tar.unet.TemporalAttnProcessor` (one that is already
    there keeps its own and gets a probe, after any probe it has, so captures nest); other
    processors on those layers are swapped for it until the block ends. Do not share the model
    with another generation meanwhile.
    """
    if reduce not in REDUCE_MODES:
        expected = ", ".join(REDUCE_MODES)
        raise ValueError(f"unknown attention reduce mode {reduce!r}; expected one of {expected}")
    if batch_index is not None and (isinstance(batch_index, bool) or not isinstance(batch_index, int)):
        raise ValueError(f"batch_index must be an int or None, got {batch_index!r}")
    levels = temporal_attention_levels(unet)
    if not levels:
        raise ValueError(f"{type(unet).__name__} has no temporal attention layers to capture")
    recorder = AttentionRecorder(levels, reduce=reduce, steps=_check_steps(steps), batch_index=batch_index)

    probes = {name: recorder._probe(name) for name in levels}
    with probes_installed(unet, probes, TemporalAttnProcessor, lambda _, probe: TemporalAttnProcessor(probe=probe)):
        hooks = [
            unet.register_forward_pre_hook(recorder._begin_call, with_kwargs=True),
            unet.register_forward_hook(recorder._end_call, always_call=True),
        ]
        try:
            yield recorder
        finally:
            for hook in hooks:
                hook.remove()


@contextmanager
def probes_installed(
    model: torch.nn.Module,
    probes: Mapping[str, Callable[..., None]],
    probing_type: type,
    capturing: Callable[[object, Callable[..., None]], object],
) -> Iterator[None]:
    """Give each layer named in ``probes`` (processor names) its probe until the block ends.

    A processor of ``probing_type`` already there keeps its own work and gets the probe after any it
    has (so captures nest, and a TAR processor records its regularised map); any other processor is
    swapped for ``capturing(previous, probe)`` and put back at the end.
    """
    current = model.attn_processors
    swapped: dict[str, object] = {}
    probed: dict[str, tuple[object, Callable[..., None] | None]] = {}
    try:
        for name, probe in probes.items():
            processor = current[name]
            if isinstance(processor, probing_type):
                probed[name] = (processor, processor.probe)
                processor.probe = _chain(processor.probe, probe)
            else:
                swapped[name] = processor
                _attention_module(model, name).set_processor(capturing(processor, probe))
        yield
    finally:
        for processor, probe in probed.values():
            processor.probe = probe
        for name, processor in swapped.items():
            _attention_module(model, name).set_processor(processor)


def _chain(first: AttentionProbe | None, second: AttentionProbe) -> AttentionProbe:
    """``second`` after ``first``, so that nested captures all record."""
    if first is None:
        return second

    def both(query, key, **kwargs) -> None:
        first(query, key, **kwargs)
        second(query, key, **kwargs)

    return both


def _attention_module(unet: torch.nn.Module, processor_name: str) -> torch.nn.Module:
    return unet.get_submodule(processor_name.removesuffix(".processor"))


# --- real and generated videos ------------------------------------------------------------------


def _check_frames(frames: torch.Tensor) -> None:
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        got = frames.dtype if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames must be a uint8 tensor [N, H, W, 3], got {got}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got shape {tuple(frames.shape)}")


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale frames to cover ``height``×``width`` (keeping the aspect ratio), then centre-crop.

    ``frames`` is uint8 ``[N, H, W, 3]``; returns uint8 ``[N, height, width, 3]``.
    """
    _check_frames(frames)
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize frames to {height}×{width}")
    source_height, source_width = frames.shape[1:3]
    scale = max(height / source_height, width / source_width)
    scaled = (max(height, round(source_height * scale)), max(width, round(source_width * scale)))
    images = frames.permute(0, 3, 1, 2).float()
    if scaled != (source_height, source_width):
        images = F.interpolate(images, size=scaled, mode="bilinear", antialias=True, align_corners=False)
    top, left = (scaled[0] - height) // 2, (scaled[1] - width) // 2
    images = images[:, :, top : top + height, left : left + width]
    return images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@torch.no_grad()
def encode_frames(model: VideoModel, frames: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` frames → clean latents ``[1, C, N, H/f, W/f]`` (f = the VAE's factor).

    The mean of the VAE posterior, times the VAE's scaling factor: the inverse of
    :func:`~vstar_model.sampling.unet.decode_latents`. ``chunk_size`` frames are encoded at once.
    """
    _check_frames(frames)
    factor = model.vae_scale_factor
    if frames.shape[1] % factor or frames.shape[2] % factor:
        raise ValueError(
            f"frames are {frames.shape[1]}×{frames.shape[2]}; height and width must be multiples of "
            f"{factor} (see resize_frames)"
        )
    latents = []
    for chunk in frames.split(chunk_size):
        images = chunk.to(model.device).permute(0, 3, 1, 2).to(model.vae.dtype) / 127.5 - 1.0
        latents.append(model.vae.encode(images).latent_dist.mode().float())
    # [N, C, h, w] -> [1, C, N, h, w]
    return torch.cat(latents).permute(1, 0, 2, 3).unsqueeze(0) * model.vae.config.scaling_factor


@torch.no_grad()
def real_video_attention(
    model: VideoModel,
    frames: torch.Tensor,
    *,
    prompt: str = "",
    timestep: int = DEFAULT_TIMESTEP,
    seed: int = 0,
    reduce: Reduce = "mean",
) -> dict[str, torch.Tensor]:
    """Temporal attention maps of a real clip (paper §3.3): noise its latent to ``timestep``, denoise once.

    Args:
        frames: uint8 ``[N, H, W, 3]``, H and W multiples of the VAE factor (see
            :func:`resize_frames`).
        prompt: the text condition; empty by default (classifier-free guidance is off).
        timestep: diffusion timestep in ``[0, num_train_timesteps)``: larger is noisier.
        seed: seed of the added noise.
        reduce: as for :func:`capture_attention`.

    Returns:
        Processor name → float32 map ``[N, N]`` (``[heads, N, N]`` with ``"per_head"``) on the
        model's device; ``temporal_attention_levels(model.unet)`` gives each layer's level.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    num_train_timesteps = scheduler.config.num_train_timesteps
    if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep < num_train_timesteps:
        raise ValueError(f"timestep must be an int in [0, {num_train_timesteps}), got {timestep!r}")
    with model.lock:
        latents = encode_frames(model, frames)
        generator = torch.Generator(device=model.device).manual_seed(seed)
        noise = torch.randn(latents.shape, generator=generator, device=model.device, dtype=latents.dtype)
        t = torch.tensor([timestep], device=model.device)
        scale = model.signal_scale()  # VideoCrafter2 was trained on x_t = √ᾱ·s_t·x₀ + √(1−ᾱ)·ε
        if scale is not None:
            latents = latents * float(scale[timestep])
        noisy = scheduler.scale_model_input(scheduler.add_noise(latents, noise, t), t)
        text = encode_text(model, [prompt])
        if model.family == "animatediff":  # UNetMotionModel takes the text repeated per frame
            text = text.repeat_interleave(frames.shape[0], dim=0)
        with capture_attention(model.unet, reduce=reduce) as recorder:
            model.unet(noisy.to(model.dtype), t, encoder_hidden_states=text, **model.unet_kwargs())
    return recorder.maps_at(0)


def generated_video_attention(
    model: VideoModel,
    states: Sequence[str],
    config: SamplingConfig,
    *,
    seed: int,
    tar=None,
    steps: Collection[int] | None = None,
    reduce: Reduce = "mean",
) -> tuple[GeneratedVideo, AttentionRecorder]:
    """Generate a video with :func:`~vstar_model.sampling.unet.generate_video` and record its maps.

    The maps are the conditional branch's (the text-conditioned half of the guidance batch), at
    the denoising ``steps`` given (all by default). The video is the one generated without capture.
    """
    with capture_attention(
        model.unet, reduce=reduce, steps=steps, batch_index=CONDITIONAL_BATCH_INDEX
    ) as recorder:
        video = generate_video(model, states, config, seed=seed, tar=tar)
    return video, recorder


def level_maps(layer_maps: Mapping[str, torch.Tensor], levels: Mapping[str, int]) -> dict[int, torch.Tensor]:
    """Level → mean of the maps of its layers, highest resolution (64) first.

    ``layer_maps`` is processor name → map, e.g. from :func:`real_video_attention` or
    :meth:`AttentionRecorder.layer_maps`; ``levels`` is processor name → level.
    """
    unknown = sorted(set(layer_maps) - set(levels))
    if unknown:
        raise ValueError(f"no level known for layer(s) {unknown}")
    by_level: dict[int, list[torch.Tensor]] = {}
    for name, attention in layer_maps.items():
        by_level.setdefault(levels[name], []).append(attention)
    return {level: torch.stack(by_level[level]).mean(dim=0) for level in sorted(by_level, reverse=True)}


# --- band scores --------------------------------------------------------------------------------


def _check_map(attention: torch.Tensor) -> None:
    if not isinstance(attention, torch.Tensor):
        raise ValueError(f"an attention map must be a tensor [..., N, N], got {type(attention).__name__}")
    if attention.ndim < 2 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"an attention map must be [..., N, N], got shape {tuple(attention.shape)}")


def _check_width(width: int, num_frames: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 0:
        raise ValueError(f"band width must be an int >= 0, got {width!r}")
    if width >= num_frames - 1:
        raise ValueError(
            f"band width {width} covers every frame of a {num_frames}-frame map; "
            f"use a width below {num_frames - 1}"
        )


def _within_band(num_frames: int, width: int, device: torch.device) -> torch.Tensor:
    frames = torch.arange(num_frames, device=device)
    return (frames[None, :] - frames[:, None]).abs() <= width


def band_mass(attention: torch.Tensor, *, width: int = DEFAULT_BAND_WIDTH) -> torch.Tensor:
    """Share of each row's attention within ±``width`` frames of the diagonal, averaged over rows.

    ``attention`` is ``[..., N, N]`` (query frame i, key frame j); returns float64 ``[...]`` in
    [0, 1]. A row with no mass gives NaN.
    """
    _check_map(attention)
    num_frames = attention.shape[-1]
    _check_width(width, num_frames)
    values = attention.double()
    inside = (values * _within_band(num_frames, width, values.device)).sum(dim=-1)
    return (inside / values.sum(dim=-1)).mean(dim=-1)


def band_score(attention: torch.Tensor, *, width: int = DEFAULT_BAND_WIDTH) -> torch.Tensor:
    """How band-like a map is: :func:`band_mass`, rescaled so uniform attention scores 0 and a map
    with all its mass within ±``width`` frames scores 1.

    The rescaling removes the band's share of a uniform map, which shrinks with N, so scores of
    16- and 48-frame videos compare. Maps that avoid their diagonal score below 0.
    ``attention`` is ``[..., N, N]``; returns float64 ``[...]``.
    """
    mass = band_mass(attention, width=width)
    num_frames = attention.shape[-1]
    uniform = _within_band(num_frames, width, torch.device("cpu")).sum().item() / num_frames**2
    return (mass - uniform) / (1.0 - uniform)


class GaussianFit(NamedTuple):
    sigma: float  # σ of the best-fitting Gaussian band; NaN for a constant map
    correlation: float  # Pearson correlation of the map with that band, in [-1, 1]


def gaussian_band_fit(attention: torch.Tensor, *, num_sigmas: int = 64) -> GaussianFit:
    """The Gaussian band ΔA(σ) (paper eq. 2) that correlates best with a map ``[N, N]``.

    σ is searched on ``num_sigmas`` log-spaced values from 0.25 (about the identity) to N (almost
    flat). A real video's σ is a starting point for the TAR σ of a new backbone.
    """
    _check_map(attention)
    if attention.ndim != 2:
        raise ValueError(f"gaussian_band_fit takes one map [N, N], got shape {tuple(attention.shape)}")
    num_frames = attention.shape[-1]
    if num_frames < 2:
        raise ValueError("gaussian_band_fit needs at least 2 frames")
    sigmas = torch.logspace(math.log10(0.25), math.log10(num_frames), num_sigmas, dtype=torch.float64)
    bands = torch.stack([gaussian_band(num_frames, float(s), dtype=torch.float64) for s in sigmas])
    values = attention.detach().double().cpu().flatten()
    values = values - values.mean()
    if float(values.norm()) == 0.0:  # a constant map correlates with nothing
        return GaussianFit(sigma=math.nan, correlation=math.nan)
    bands = bands.flatten(1) - bands.flatten(1).mean(dim=1, keepdim=True)
    correlations = (bands @ values) / (values.norm() * bands.norm(dim=1))
    best = int(correlations.argmax())
    return GaussianFit(sigma=float(sigmas[best]), correlation=float(correlations[best]))


def attention_rows(
    layer_maps: Mapping[str, torch.Tensor],
    levels: Mapping[str, int],
    *,
    width: int = DEFAULT_BAND_WIDTH,
    **context: Any,
) -> list[dict[str, Any]]:
    """One table row per layer map: its level, size and band scores, plus ``context``.

    ``context`` holds what identifies the maps, the same in every row, e.g. ``run_id``,
    ``sample_key``, ``source`` ("real" | "generated"), ``step``, ``timestep``, ``tar``, ``replace``.
    Each row: ``**context, layer, level, num_frames, band_width, band_mass, band_score,
    gaussian_sigma, gaussian_correlation``. Maps must be ``[N, N]`` (``reduce="mean"``).
    """
    clashes = sorted(set(context) & set(_ROW_FIELDS))
    if clashes:
        raise ValueError(f"context field(s) {clashes} would overwrite computed columns")
    rows = []
    for name, attention in layer_maps.items():
        if name not in levels:
            raise ValueError(f"no level known for layer {name!r}")
        _check_map(attention)
        if attention.ndim != 2:
            raise ValueError(f"layer {name!r}: rows need maps [N, N], got shape {tuple(attention.shape)}")
        fit = gaussian_band_fit(attention)
        rows.append(
            {
                **context,
                "layer": name,
                "level": levels[name],
                "num_frames": attention.shape[-1],
                "band_width": width,
                "band_mass": float(band_mass(attention, width=width)),
                "band_score": float(band_score(attention, width=width)),
                "gaussian_sigma": fit.sigma,
                "gaussian_correlation": fit.correlation,
            }
        )
    return rows


_ROW_FIELDS = (
    "layer",
    "level",
    "num_frames",
    "band_width",
    "band_mass",
    "band_score",
    "gaussian_sigma",
    "gaussian_correlation",
)
