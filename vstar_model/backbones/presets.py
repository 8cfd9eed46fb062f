"""Backbone presets: where each model's weights live and the sampling defaults it was trained for."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

# unet3d: diffusers' UNet3DConditionModel (ModelScope, Zeroscope); videocrafter: the same plus an fps
# embedding (vstar_model.backbones.videocrafter); animatediff: an SD 1.5 UNet with motion modules;
# wan: Wan 2.1's diffusion transformer, causal video VAE and UMT5 text encoder (vstar_model.backbones.wan).
Family = Literal["unet3d", "videocrafter", "animatediff", "wan"]

# Wan's negative prompt, as diffusers' WanPipeline example passes it (pipelines/wan/pipeline_wan.py).
WAN_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly "
    "drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy "
    "background, three legs, many people in the background, walking backwards"
)
_WAN_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
# vstar_model.tar.dit.DEFAULT_PRESET: TAR on the first 10 of 30 blocks, σ = 1 latent frame, half strength.
WAN_DEFAULT_TAR = "b0-9D1s0.5"


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
    negative_prompt: str = ""  # used when neither the catalog entry nor the run gives one
    default_tar: str = "64D1"  # TAR preset of a run that names none (UNet levels, or DiT blocks for Wan)
    temporal_compression: int = 1  # pixel frames per latent frame after the first (Wan's VAE: 4)
    flow_shift: float | None = None  # flow-matching schedule shift (Wan)
    riflex_index: int | None = None  # RIFLEx's k: the 1-based intrinsic temporal RoPE frequency (Wan)

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a ``num_frames`` video: N for UNets; 1 + (N − 1)/4 for Wan's causal VAE,
        which keeps the first frame and folds each following group of 4 into one latent frame."""
        self.check_frames(num_frames)
        return 1 + (num_frames - 1) // self.temporal_compression

    def check_frames(self, num_frames: int) -> None:
        """Raise ValueError, saying why and what would work, for a frame count this backbone cannot make."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
        step = self.temporal_compression
        if (num_frames - 1) % step:
            below = num_frames - (num_frames - 1) % step
            raise ValueError(
                f"model {self.name!r} makes {step}k+1 frames (its VAE keeps the first frame and compresses "
                f"every {step} after it into one latent frame): {num_frames} frames is not one; "
                f"use {below} or {below + step}"
            )
        if self.max_frames and num_frames > self.max_frames:
            raise ValueError(
                f"num_frames={num_frames} exceeds {self.name!r}'s limit of {self.max_frames} "
                f"(its motion modules' positional embedding ends there)"
            )


# Wan 2.1 (diffusers conversions), with WanPipeline's defaults: 480×832, 81 frames (21 latent), 50
# steps, guidance 5.0, 16 fps. Flow shift 3.0 is what diffusers gives for 480P (5.0 for 720P) and
# what the 1.3B checkpoint's UniPC scheduler config holds. RIFLEx k = 6: with the 1.3B/14B head
# dim of 128 the temporal RoPE has 22 frequencies, and the 6th (period ≈ 51 latent frames) is the
# one that repeats first past the trained length, as RIFLEx's Wan integrations use.
_WAN_1_3B = BackbonePreset(
    name="wan2.1-1.3b",
    family="wan",
    source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    height=480,
    width=832,
    num_frames=81,
    fps=16,
    num_inference_steps=50,
    guidance_scale=5.0,
    dtype="bfloat16",
    components=_WAN_COMPONENTS,
    negative_prompt=WAN_NEGATIVE_PROMPT,
    default_tar=WAN_DEFAULT_TAR,
    temporal_compression=4,
    flow_shift=3.0,
    riflex_index=6,
)

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
    "wan2.1-1.3b": _WAN_1_3B,
    # TAR on the first third of its 40 blocks, as the 1.3B default on the first third of its 30.
    "wan2.1-14b": replace(_WAN_1_3B, name="wan2.1-14b", source="Wan-AI/Wan2.1-T2V-14B-Diffusers",
                          default_tar="b0-12D1s0.5"),
    # A random miniature of Wan 2.1 (vstar_model.backbones.tiny_wan) built on first use, for tests and
    # offline runs. Its head dim of 32 gives a 12-dim temporal RoPE (6 frequencies); RIFLEx k = 2
    # (period ≈ 29 latent frames) is the lowest one a 161-frame clip (41 latent frames) outruns.
    "tiny-wan": replace(
        _WAN_1_3B,
        name="tiny-wan",
        source="builtin:tiny-wan",
        height=64,
        width=64,
        num_frames=17,
        num_inference_steps=4,
        dtype="float32",
        default_tar="b0-1D1s0.5",  # both of its blocks
        riflex_index=2,
    ),
}


def get_preset(name: str) -> BackbonePreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
