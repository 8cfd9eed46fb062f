"""VideoCrafter2 in diffusers: its UNet (a UNet3D plus an fps embedding) and its rescaled schedule.

VideoCrafter2 (the paper's main backbone) was trained in the LVDM code base. Its public diffusers
conversion (``adamdad/videocrafterv2_diffusers``: ``config.json`` with ``_class_name``
``UNet3DVideoCrafterConditionModel`` and ``fps_cond: true``, plus the weights, at the repository
root) is diffusers' UNet3DConditionModel with one addition: the frame rate the video should have is
embedded like a timestep (its own sinusoidal projection and MLP) and added to the time embedding.
The VAE, tokenizer and OpenCLIP-H text encoder are those of ModelScope / Zeroscope.

VideoCrafter2 was also trained with a rescaled signal: x_t = √ᾱ_t·s_t·x_0 + √(1−ᾱ_t)·ε, with s_t
falling linearly from 1 to 0.7 over the first 400 of 1000 timesteps and 0.7 after (LVDM's
``use_scale``, ``scale_b=0.7``). Its DDIM sampler divides the predicted x_0 by s_t and re-noises
with s_{t−1}; :func:`rescale_ddim_step` applies that correction to a diffusers DDIM step.
"""

from __future__ import annotations

import torch

from vstar_model import _compat  # noqa: F401  (before diffusers: torchvision shim)
from diffusers import UNet3DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps


class UNet3DVideoCrafterConditionModel(UNet3DConditionModel):
    """UNet3DConditionModel + VideoCrafter2's fps conditioning (same name as the conversion's config).

    ``forward`` takes ``fps`` (an int or a (batch,) tensor) besides diffusers' arguments; its
    embedding ``fps_embedding(fps_proj(fps))`` of shape (batch, 4·C₀) is added to the timestep
    embedding before it is repeated over frames, as in LVDM's ``openaimodel3d``.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple[int] = 64,
        num_attention_heads: int | tuple[int] | None = None,
        time_cond_proj_dim: int | None = None,
        fps_cond: bool = True,
    ):
        # Explicit arguments: diffusers builds a model from its config by this signature.
        super().__init__(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            down_block_types=down_block_types, up_block_types=up_block_types, block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor, act_fn=act_fn, norm_num_groups=norm_num_groups,
            norm_eps=norm_eps, cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads, time_cond_proj_dim=time_cond_proj_dim,
        )
        if fps_cond:
            channels = block_out_channels[0]
            self.fps_proj = Timesteps(channels, True, 0)
            self.fps_embedding = TimestepEmbedding(channels, channels * 4, act_fn=act_fn)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *args,
                fps: int | torch.Tensor | None = None, **kwargs):
        if not self.config.fps_cond:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        if fps is None:
            raise ValueError("this VideoCrafter UNet is conditioned on fps: pass fps= (VideoCrafter2 uses 28)")
        fps = torch.as_tensor(fps, device=sample.device).reshape(-1).expand(sample.shape[0])  # (B,)
        fps_emb = self.fps_embedding(self.fps_proj(fps).to(self.dtype))  # (B, 4·C₀)
        # diffusers computes the time embedding inside forward: add ours to its output, for this call only.
        handle = self.time_embedding.register_forward_hook(lambda module, inputs, emb: emb + fps_emb)
        try:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        finally:
            handle.remove()


def signal_scale(num_train_timesteps: int = 1000, end: float = 0.7, ramp_steps: int = 400) -> torch.Tensor:
    """VideoCrafter2's s_t for t = 0…T−1: linear from 1 to ``end`` over ``ramp_steps``, then ``end``.

    Returns a (T,) float32 tensor.
    """
    if not 0 < ramp_steps <= num_train_timesteps:
        raise ValueError(f"ramp_steps must be in 1..{num_train_timesteps}, got {ramp_steps}")
    return torch.cat([torch.linspace(1.0, end, ramp_steps), torch.full((num_train_timesteps - ramp_steps,), end)])


def rescale_ddim_step(prev_sample: torch.Tensor, pred_original_sample: torch.Tensor, scheduler, timestep: int,
                      scale: torch.Tensor) -> torch.Tensor:
    """Turn a diffusers DDIM step into VideoCrafter2's rescaled one.

    diffusers: x_prev = √ᾱ_prev·x̂₀ + dir + noise, with x̂₀ = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t = s_t·x₀.
    LVDM:      x_prev = √ᾱ_prev·s_prev·(x̂₀ / s_t) + dir + noise.
    So x_prev_LVDM = x_prev + √ᾱ_prev·(s_prev/s_t − 1)·x̂₀, where s_prev = s at the previous DDIM
    timestep (s_0 = 1 after the last step). Needs a scheduler without sample clipping/thresholding.

    Args:
        prev_sample, pred_original_sample: the diffusers step's outputs, same shape.
        timestep: the step's timestep t; scale: :func:`signal_scale` (T,).
    """
    config = scheduler.config
    if config.clip_sample or config.thresholding:
        raise ValueError("VideoCrafter2's rescaled DDIM needs clip_sample=False and thresholding=False")
    t = int(timestep)
    prev_t = t - config.num_train_timesteps // scheduler.num_inference_steps
    alpha_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    factor = float(alpha_prev.sqrt() * (scale[max(prev_t, 0)] / scale[t] - 1))  # CPU scalars: no device sync
    return prev_sample + factor * pred_original_sample
