"""Wan 2.1 (diffusers' ``WanTransformer3DModel``, ``AutoencoderKLWan``, UMT5) loaded for our sampling loop.

A Wan pipeline folder (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` on the hub, the tiny built-in model, or
a local copy) holds ``transformer/``, ``vae/``, ``text_encoder/`` (``UMT5EncoderModel``),
``tokenizer/`` (a T5 tokenizer) and ``scheduler/`` (UniPC in flow-prediction mode). Each is loaded
with its own ``from_pretrained``; :func:`vstar_model.backbones.loading.load_backbone` finds the
folder and calls :func:`load_wan`.

The VAE stays in float32 whatever ``dtype`` is (diffusers' advice for Wan: its decoder loses detail
in half precision; it runs once per video); the transformer and text encoder take ``dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vstar_model import _compat  # noqa: F401
from vstar_model.backbones.loading import BackboneNotFound, LoadedBackbone, WeightLocations, snapshot_revision
from vstar_model.backbones.presets import BackbonePreset


@dataclass(kw_only=True)
class WanVideoModel(LoadedBackbone):
    """A loaded Wan 2.1 text-to-video model, for :mod:`vstar_model.sampling.dit`."""

    transformer: torch.nn.Module

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent in height and width (8 for Wan)."""
        return self.vae.config.scale_factor_spatial

    @property
    def temporal_compression(self) -> int:
        """Pixel frames per latent frame after the first (4 for Wan)."""
        return self.vae.config.scale_factor_temporal


def load_wan(preset: BackbonePreset, locations: WeightLocations, device: torch.device, dtype: torch.dtype) -> WanVideoModel:
    """Load the Wan pipeline folder ``locations.base`` (transformer from ``locations.unet``)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    base = locations.base
    try:
        tokenizer = AutoTokenizer.from_pretrained(base / "tokenizer")
        text_encoder = UMT5EncoderModel.from_pretrained(base / "text_encoder", torch_dtype=dtype)
        vae = AutoencoderKLWan.from_pretrained(base / "vae", torch_dtype=torch.float32)
        scheduler = UniPCMultistepScheduler.from_pretrained(base / "scheduler")
        transformer = WanTransformer3DModel.from_pretrained(locations.unet, torch_dtype=dtype)
    except (OSError, EnvironmentError) as exc:
        raise BackboneNotFound(f"model preset {preset.name!r}: incomplete weights in {locations}: {exc}") from None
    if vae.config.scale_factor_temporal != preset.temporal_compression:
        raise ValueError(
            f"model preset {preset.name!r} expects a VAE compressing time {preset.temporal_compression}×, "
            f"{locations} has {vae.config.scale_factor_temporal}×"
        )
    for module in (text_encoder, vae, transformer):
        module.to(device).eval().requires_grad_(False)
    return WanVideoModel(
        preset=preset,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        device=device,
        dtype=dtype,
        location=str(locations),
        revision=snapshot_revision(base) or preset.revision,
    )
