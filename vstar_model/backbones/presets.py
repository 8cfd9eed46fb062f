"""Backbone presets: where each model's weights live and the sampling defaults it was trained for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# unet3d: diffusers' UNet3DConditionModel (ModelScope, Zeroscope); videocrafter: the same plus an fps
# embedding (vstar_model.backbones.videocrafter); animatediff: an SD 1.5 UNet with motion modules.
Family = Literal["unet3d", "videocrafter", "animatediff"]


@dataclass(frozen=True)
class BackbonePreset:
    name: str
    family: Family
    source: str  # hub repo id, or "builtin:tiny"
    revision: str | None = None
    height: int = 320
    width: int = 512
    num_frames: int = 16
    fps: int = 8
    num_inference_steps: int = 25
    guidance_scale: float = 9.0
    dtype: str = "float16"  # on GPU; CPU always runs float32
    motion_adapter: str | None = None  # AnimateDiff only
    unet_source: str | None = None  # a hub repo holding only the UNet, at its root (VideoCrafter2)
    fps_condition: int | None = None  # frame rate the UNet is conditioned on (VideoCrafter2)
    rescaled_schedule: bool = False  # VideoCrafter2's signal scale s_t (vstar_model.backbones.videocrafter)
    max_frames: int | None = None  # hard limit of the architecture (positional embeddings)
    components: tuple[str, ...] = field(default=("unet", "vae", "text_encoder", "tokenizer", "scheduler"))


PRESETS: dict[str, BackbonePreset] = {
    "tiny": BackbonePreset(
        name="tiny",
        family="unet3d",
        source="builtin:tiny",
        height=64,
        width=64,
        num_frames=16,
        fps=8,
        num_inference_steps=4,
        guidance_scale=9.0,
        dtype="float32",
    ),
    "modelscope": BackbonePreset(
        name="modelscope",
        family="unet3d",
        source="ali-vilab/text-to-video-ms-1.7b",
        height=256,
        width=256,
        num_frames=16,
        fps=8,
        guidance_scale=9.0,
    ),
    "zeroscope": BackbonePreset(
        name="zeroscope",
        family="unet3d",
        source="cerspense/zeroscope_v2_576w",
        height=320,
        width=576,
        num_frames=24,
        fps=8,
        guidance_scale=9.0,
    ),
    # VideoCrafter2 (the paper's backbone, with the authors' defaults): the UNet from its diffusers
    # conversion, the VAE, tokenizer, OpenCLIP-H text encoder and DDIM schedule from Zeroscope.
    "videocrafter2": BackbonePreset(
        name="videocrafter2",
        family="videocrafter",
        source="cerspense/zeroscope_v2_576w",
        unet_source="adamdad/videocrafterv2_diffusers",
        height=320,
        width=512,
        num_frames=16,
        fps=8,
        num_inference_steps=25,
        guidance_scale=12.0,
        fps_condition=28,
        rescaled_schedule=True,
    ),
    "animatediff": BackbonePreset(
        name="animatediff",
        family="animatediff",
        source="stable-diffusion-v1-5/stable-diffusion-v1-5",
        motion_adapter="guoyww/animatediff-motion-adapter-v1-5-2",
        height=512,
        width=512,
        num_frames=16,
        fps=8,
        guidance_scale=7.5,
        # The motion modules' sinusoidal positional embedding has 32 entries: longer clips would
        # index past it. We refuse instead of extrapolating (paper Fig. 10: it fails past training).
        max_frames=32,
    ),
}


def get_preset(name: str) -> BackbonePreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
