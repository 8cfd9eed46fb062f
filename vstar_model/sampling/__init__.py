"""Single-pass long-video sampling loops, one per backbone kind: DDIM with classifier-free guidance,
VSP and TAR for video UNets (:mod:`.unet`), flow matching with the same for diffusion transformers
(:mod:`.dit`, Wan 2.1). :func:`generate_video` picks the loop from the model's family; the ablation
variants and the generated video are shared."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

ProgressCallback = Callable[[int, int], None]


class Variant(NamedTuple):
    vsp: bool  # frames conditioned on the synopsis states (else the plain prompt)
    tar: bool  # Temporal Attention Regularization (else the backbone's own attention)
    riflex: bool = False  # RIFLEx's lowered temporal RoPE frequency (diffusion transformers only)


# The paper's ablation (Fig. 11), same seed for all, plus RIFLEx (issue 12) alone and with TAR / VSTAR.
VARIANTS: dict[str, Variant] = {
    "baseline": Variant(vsp=False, tar=False),
    "tar": Variant(vsp=False, tar=True),
    "vsp": Variant(vsp=True, tar=False),
    "vstar": Variant(vsp=True, tar=True),
    "riflex": Variant(vsp=False, tar=False, riflex=True),
    "tar_riflex": Variant(vsp=False, tar=True, riflex=True),
    "vstar_riflex": Variant(vsp=True, tar=True, riflex=True),
    # Appendix B: the same, after fitting the initial noise to a real clip's temporal attention (UNets).
    "gtn": Variant(vsp=False, tar=False),
    "gtn+vstar": Variant(vsp=True, tar=True),
}
GTN_VARIANTS = frozenset({"gtn", "gtn+vstar"})

# Part of every video's resume key: bump it when a change makes the same inputs give other
# pixels, so resumed runs do not reuse videos of the old code. 2: TAR leaves transformer_in
# alone, VSP keyframes truncated as the authors'.
SAMPLER_REVISION = 2


def check_finite(latents: torch.Tensor, *, seed: int, steps: int, dtype: torch.dtype) -> None:
    """Fail this video rather than encode garbage: half-precision overflow or broken weights."""
    if not torch.isfinite(latents).all():
        raise FloatingPointError(
            f"denoising produced non-finite latents (NaN/Inf) for seed {seed} after {steps} steps in {dtype}"
        )


@dataclass
class GeneratedVideo:
    frames: torch.Tensor  # (N, H, W, 3) uint8, on the CPU
    states: list[str]
    seed: int
    timings: dict[str, float] = field(default_factory=dict)


def generate_video(model, states: Sequence[str], config, *, seed: int, tar=None,
                   initial_noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   progress: ProgressCallback | None = None) -> GeneratedVideo:
    """One video in one pass with the loop of ``model``'s family: :func:`.dit.generate_video` for
    Wan (``config`` a :class:`.dit.FlowMatchingConfig`), else :func:`.unet.generate_video`
    (a :class:`.unet.SamplingConfig`). ``initial_noise`` (UNets only) maps the seed's normal draw
    to the initial latents (:mod:`.gtn`)."""
    if model.family == "wan":
        if initial_noise is not None:
            raise ValueError("fitted initial noise (gtn) is implemented for UNet backbones only")
        from vstar_model.sampling.dit import generate_video as loop

        return loop(model, states, config, seed=seed, tar=tar, progress=progress)
    from vstar_model.sampling.unet import generate_video as loop

    return loop(model, states, config, seed=seed, tar=tar, initial_noise=initial_noise, progress=progress)
