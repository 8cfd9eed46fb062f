"""Single-pass long-video sampling for Wan 2.1: flow matching with classifier-free guidance, VSP, TAR, RIFLEx.

Our own loop (instead of diffusers' ``WanPipeline``) so that per-frame text, the TAR step window and
RIFLEx are explicit. One call generates one video of N = 4k + 1 frames (k + 1 latent frames) in one
pass; the same seed on the same device gives the same frames.

Schedule: the scheduler the checkpoint ships in ``scheduler/`` — for Wan 2.1, diffusers'
``UniPCMultistepScheduler`` in flow-prediction mode (``use_flow_sigmas``, 2nd-order bh2) — with
the run's flow shift (σ' = s·σ / (1 + (s − 1)·σ)). UniPC rather than flow-match Euler because it
is what the Wan repositories ship and what their 50-step defaults were tuned with. A fresh
scheduler per video holds its multistep history.

Guidance: one conditional and one unconditional transformer call per step, as ``WanPipeline``
does (two batch-1 calls instead of one batch-2 call halve the activation memory of long clips);
v = v_uncond + w·(v_cond − v_uncond) at every scale w, like the UNet loop.

Decoding: Wan's VAE is causal over time. ``AutoencoderKLWan.decode`` already runs its decoder one
latent frame at a time, carrying each causal convolution's last frames in a cache, so peak memory
is one latent frame's activations plus the float32 output video (N·3·H·W·4 bytes: 0.8 GB for
161 frames at 480×832) — it does not grow with N beyond that. Splitting the latents into
independent chunks would restart the causal cache and change the frames, so we don't; the output is
turned into uint8 a few frames at a time.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from vstar_model.backbones.riflex import apply_riflex
from vstar_model.backbones.wan import WanVideoModel
from vstar_model.sampling import GeneratedVideo, ProgressCallback, check_finite
from vstar_model.tar.dit import apply_dit_tar
from vstar_model.vsp.dit import frame_tokens, per_frame_text
from vstar_model.vsp.embeddings import interpolate_embeddings

MAX_TEXT_TOKENS = 512  # WanPipeline's max_sequence_length
_UINT8_CHUNK = 16  # frames converted to uint8 at once


@dataclass(frozen=True)
class FlowMatchingConfig:
    """What determines a Wan video besides the text, the seed and the weights."""

    num_frames: int = 81
    height: int = 480
    width: int = 832
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    negative_prompt: str = ""
    flow_shift: float = 3.0
    riflex: bool = False

    def validate(self, model: WanVideoModel) -> None:
        problems = []
        try:
            model.preset.check_frames(self.num_frames)
        except ValueError as problem:
            problems.append(str(problem))
        multiple = model.vae_scale_factor * model.transformer.config.patch_size[1]
        for name in ("height", "width"):
            value = getattr(self, name)
            if value <= 0 or value % multiple:
                problems.append(f"{name}={value} must be a positive multiple of {multiple}")
        if self.num_inference_steps < 1:
            problems.append(f"num_inference_steps must be ≥ 1, got {self.num_inference_steps}")
        if not self.flow_shift > 0:
            problems.append(f"flow_shift must be > 0, got {self.flow_shift}")
        if self.riflex and model.preset.riflex_index is None:
            problems.append(f"model {model.preset.name!r} has no RIFLEx frequency index")
        if problems:
            raise ValueError("; ".join(problems))


def _clean(text: str) -> str:
    """Wan's prompt cleaning (``prompt_clean`` in diffusers, without the optional ftfy): HTML
    entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(html.unescape(text)).split())


@torch.no_grad()
def encode_text(model: WanVideoModel, texts: Sequence[str]) -> torch.Tensor:
    """UMT5 embeddings of each text: (len(texts), L, C), zero after each text's last token, as
    ``WanPipeline`` pads them; L = min(tokenizer limit, 512)."""
    length = min(model.tokenizer.model_max_length, MAX_TEXT_TOKENS)
    tokens = model.tokenizer(
        [_clean(text) for text in texts],
        padding="max_length",
        max_length=length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    mask = tokens.attention_mask.to(model.device)
    hidden = model.text_encoder(tokens.input_ids.to(model.device), mask).last_hidden_state
    return (hidden * mask.unsqueeze(-1).to(hidden.dtype)).to(model.dtype)


@torch.no_grad()
def decode_latents(model: WanVideoModel, latents: torch.Tensor) -> torch.Tensor:
    """(1, C, F', h, w) normalised latents → (N, H, W, 3) uint8 frames, N = 1 + 4(F' − 1)."""
    config = model.vae.config
    mean = torch.tensor(config.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
    video = model.vae.decode((latents.float() * std + mean).to(model.vae.dtype)).sample[0]  # (3, N, H, W)
    frames = []
    for chunk in video.split(_UINT8_CHUNK, dim=1):
        chunk = ((chunk.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        frames.append(chunk.permute(1, 2, 3, 0).cpu())
    return torch.cat(frames)


@torch.no_grad()
def generate_video(
    model: WanVideoModel,
    states: Sequence[str],
    config: FlowMatchingConfig,
    *,
    seed: int,
    tar=None,
    progress: ProgressCallback | None = None,
) -> GeneratedVideo:
    """Generate one Wan video of ``config.num_frames`` frames in a single denoising pass.

    Args:
        states: the visual states of the video synopsis (VSP), spread over the *latent* frames
            (first at latent frame 0, last at the last one); a single state is the plain prompt.
        tar: a DiT TAR setting for :func:`vstar_model.tar.dit.apply_dit_tar` (a preset such as
            ``"b0-9D1"``), or None/"off" for the backbone's own attention.
        progress: called with (steps done, total steps) after every denoising step.

    Raises:
        FloatingPointError: the denoised latents hold NaN or Inf.
    """
    if not states:
        raise ValueError("states must hold at least one text")
    config.validate(model)
    num_latent_frames = model.preset.latent_frames(config.num_frames)
    if len(states) > num_latent_frames:
        raise ValueError(
            f"{len(states)} states cannot be spread over {num_latent_frames} latent frames "
            f"({config.num_frames} frames)"
        )
    transformer = model.transformer

    with model.lock:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        text = encode_text(model, [config.negative_prompt, *states])
        negative, cond_states = text[:1], text[1:]
        timings["encode_text_seconds"] = time.perf_counter() - start

        scheduler = type(model.scheduler).from_config(model.scheduler.config, flow_shift=config.flow_shift)
        scheduler.set_timesteps(config.num_inference_steps, device=model.device)
        generator = torch.Generator(device=model.device).manual_seed(seed)
        shape = (
            1,
            transformer.config.in_channels,
            num_latent_frames,
            config.height // model.vae_scale_factor,
            config.width // model.vae_scale_factor,
        )
        latents = torch.randn(shape, generator=generator, device=model.device, dtype=torch.float32)

        start = time.perf_counter()
        with ExitStack() as stack:
            tar_handle = stack.enter_context(apply_dit_tar(transformer, tar))
            if config.riflex:
                stack.enter_context(apply_riflex(transformer, num_latent_frames, model.preset.riflex_index))
            if len(states) > 1:
                stack.enter_context(per_frame_text(transformer, text.shape[1]))
                cond = frame_tokens(interpolate_embeddings(cond_states, num_latent_frames))
            else:
                cond = cond_states
            total = len(scheduler.timesteps)
            for step, t in enumerate(scheduler.timesteps):
                tar_handle.set_step(step, total)
                latent_input = latents.to(model.dtype)
                timestep = t.expand(1)
                velocity_cond = transformer(
                    hidden_states=latent_input, timestep=timestep, encoder_hidden_states=cond, return_dict=False
                )[0].float()
                velocity_uncond = transformer(
                    hidden_states=latent_input, timestep=timestep, encoder_hidden_states=negative, return_dict=False
                )[0].float()
                velocity = velocity_uncond + config.guidance_scale * (velocity_cond - velocity_uncond)
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
                if progress is not None:
                    progress(step + 1, total)
        timings["denoise_seconds"] = time.perf_counter() - start
        check_finite(latents, seed=seed, steps=total, dtype=model.dtype)

        start = time.perf_counter()
        frames = decode_latents(model, latents)
        timings["decode_seconds"] = time.perf_counter() - start
    return GeneratedVideo(frames=frames, states=list(states), seed=seed, timings=timings)
