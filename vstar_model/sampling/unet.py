"""Single-pass long-video sampling: DDIM with classifier-free guidance, VSP and TAR.

Our own loop (diffusers' TextToVideoSDPipeline is deprecated) so that per-frame text conditioning,
the TAR step window and chunked decoding are explicit. One call generates one video of N frames in
one pass; the same seed on the same device gives the same frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from vstar_model.backbones.loading import VideoModel
from vstar_model.sampling import GeneratedVideo, ProgressCallback, check_finite
from vstar_model.vsp.embeddings import interpolate_embeddings
from vstar_model.vsp.unet import frame_batch, per_frame_text
from vstar_model.tar.unet import apply_tar


@dataclass(frozen=True)
class SamplingConfig:
    """What determines a video besides the text, the seed and the backbone weights."""

    num_frames: int = 16
    height: int = 320
    width: int = 512
    num_inference_steps: int = 25
    guidance_scale: float = 12.0
    eta: float = 1.0
    negative_prompt: str = ""
    decode_chunk_size: int = 8  # frames decoded at once; memory does not grow with N beyond latents

    def validate(self, model: VideoModel) -> None:
        factor = model.vae_scale_factor
        problems = []
        try:
            model.preset.check_frames(self.num_frames)
        except ValueError as problem:
            problems.append(str(problem))
        for name in ("height", "width"):
            value = getattr(self, name)
            if value <= 0 or value % factor:
                problems.append(f"{name}={value} must be a positive multiple of {factor}")
        if self.num_inference_steps < 1:
            problems.append(f"num_inference_steps must be ≥ 1, got {self.num_inference_steps}")
        if not 0.0 <= self.eta <= 1.0:
            problems.append(f"eta must be in [0, 1], got {self.eta}")
        if self.decode_chunk_size < 1:
            problems.append(f"decode_chunk_size must be ≥ 1, got {self.decode_chunk_size}")
        if problems:
            raise ValueError("; ".join(problems))


@torch.no_grad()
def encode_text(model: VideoModel, texts: Sequence[str]) -> torch.Tensor:
    """CLIP token embeddings of each text: (len(texts), L, C), padded to the tokenizer's max length."""
    tokens = model.tokenizer(
        list(texts),
        padding="max_length",
        max_length=model.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return model.text_encoder(tokens.input_ids.to(model.device))[0].to(model.dtype)


@torch.no_grad()
def decode_latents(model: VideoModel, latents: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(1, C, N, h, w) latents → (N, H, W, 3) uint8 frames, decoding ``chunk_size`` frames at a time."""
    frames_latent = latents[0].permute(1, 0, 2, 3) / model.vae.config.scaling_factor
    out = []
    for chunk in frames_latent.split(chunk_size):
        images = model.vae.decode(chunk.to(model.vae.dtype)).sample
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        out.append(images.permute(0, 2, 3, 1).cpu())
    return torch.cat(out)


@contextmanager
def text_conditioning(model: VideoModel, states: Sequence[str], config: SamplingConfig) -> Iterator[torch.Tensor]:
    """The ``encoder_hidden_states`` of the guidance batch ``[unconditional, conditional]``.

    For a synopsis of several states VSP's per-frame text is installed on the UNet while the block
    is open (AnimateDiff's UNet takes the per-frame batch directly).
    """
    text = encode_text(model, [config.negative_prompt, *states])
    uncond, cond_states = text[:1], text[1:]
    cond_frames = interpolate_embeddings(cond_states, config.num_frames)
    if model.family == "animatediff":
        yield frame_batch(uncond, cond_frames)
        return
    if len(states) == 1:
        yield torch.cat([uncond, cond_states])
        return
    with per_frame_text(model.unet, frame_batch(uncond, cond_frames)):
        yield torch.cat([uncond, cond_states[:1]])


def guided_noise(
    model: VideoModel, scheduler, latents: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """One UNet call on the guidance batch: ``ε_u + w·(ε_c − ε_u)`` (float32, shape of ``latents``)."""
    latent_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
    noise = model.unet(
        latent_input.to(model.dtype), t, encoder_hidden_states=encoder_hidden_states, **model.unet_kwargs()
    ).sample.float()
    noise_uncond, noise_cond = noise.chunk(2)
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def denoise_step(
    model: VideoModel,
    scheduler,
    latents: torch.Tensor,
    t: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    config: SamplingConfig,
    *,
    generator: torch.Generator | None = None,
    variance_noise: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """One guided DDIM step from ``latents`` at ``t`` (η noise from ``generator`` or given)."""
    noise = guided_noise(model, scheduler, latents, t, encoder_hidden_states, config.guidance_scale)
    out = scheduler.step(noise, t, latents, eta=config.eta, generator=generator, variance_noise=variance_noise)
    if scale is None:
        return out.prev_sample
    from vstar_model.backbones.videocrafter import rescale_ddim_step

    return rescale_ddim_step(out.prev_sample, out.pred_original_sample, scheduler, t, scale)


def sampling_schedule(model: VideoModel, config: SamplingConfig):
    """A fresh DDIM scheduler (its own state per generation) set to ``config``'s steps."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(config.num_inference_steps, device=model.device)
    return scheduler


def latent_shape(model: VideoModel, config: SamplingConfig) -> tuple[int, ...]:
    """(1, C, N, h, w) of one video's latents."""
    factor = model.vae_scale_factor
    return (1, model.unet.config.in_channels, config.num_frames, config.height // factor, config.width // factor)


def check_states(model: VideoModel, states: Sequence[str], config: SamplingConfig) -> None:
    if not states:
        raise ValueError("states must hold at least one text")
    config.validate(model)
    if len(states) > config.num_frames:
        raise ValueError(f"{len(states)} states cannot be spread over {config.num_frames} frames")


@torch.no_grad()
def generate_video(
    model: VideoModel,
    states: Sequence[str],
    config: SamplingConfig,
    *,
    seed: int,
    tar=None,
    initial_noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: ProgressCallback | None = None,
) -> GeneratedVideo:
    """Generate one video of ``config.num_frames`` frames in a single denoising pass.

    Args:
        states: the visual states of the video synopsis (VSP), first at frame 0 and last at frame
            N−1; a single state is the plain prompt on every frame (VSP off).
        tar: a TAR setting for :func:`vstar_model.tar.unet.apply_tar` (a ``TARConfig``, a preset such as
            ``"64D1"``, a {level: σ} mapping), or None/"off" for the backbone's own attention.
        initial_noise: maps the seed's standard normal draw ``[1, C, N, h, w]`` to the initial
            latents, e.g. an optimised distribution (:mod:`vstar_model.sampling.gtn`); the η
            noise of later steps is the seed's either way.
        progress: called with (steps done, total steps) after every denoising step.

    Raises:
        FloatingPointError: the denoised latents hold NaN or Inf.
    """
    check_states(model, states, config)
    with model.lock:
        timings: dict[str, float] = {}
        scheduler = sampling_schedule(model, config)
        generator = torch.Generator(device=model.device).manual_seed(seed)
        latents = torch.randn(latent_shape(model, config), generator=generator, device=model.device,
                              dtype=torch.float32)
        if initial_noise is not None:
            latents = initial_noise(latents)
        latents = latents * scheduler.init_noise_sigma
        scale = model.signal_scale()  # VideoCrafter2's rescaled schedule, else None

        start = time.perf_counter()
        with ExitStack() as stack:
            encoder_hidden_states = stack.enter_context(text_conditioning(model, states, config))
            timings["encode_text_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            tar_handle = stack.enter_context(apply_tar(model.unet, tar))
            total = len(scheduler.timesteps)
            for step, t in enumerate(scheduler.timesteps):
                tar_handle.set_step(step, total)
                latents = denoise_step(model, scheduler, latents, t, encoder_hidden_states, config,
                                       generator=generator, scale=scale)
                if progress is not None:
                    progress(step + 1, total)
        timings["denoise_seconds"] = time.perf_counter() - start
        check_finite(latents, seed=seed, steps=total, dtype=model.dtype)

        start = time.perf_counter()
        frames = decode_latents(model, latents, config.decode_chunk_size)
        timings["decode_seconds"] = time.perf_counter() - start
    return GeneratedVideo(frames=frames, states=list(states), seed=seed, timings=timings)
