"""Optimisation-based generative temporal nursing (paper Appendix B): initial noise fitted to a real clip.

The initial latents are drawn per latent position (channel × h × w) as a frame vector
``ε ~ N(μ, Σ_N(β, γ))``, where ``Σ`` has ``β`` on its diagonal and ``γ^|i−j|`` off it (eq. 5) and
``μ`` has the latents' full shape. With the seed's standard draw ``z``, ``ε = μ + L·z`` along the
frame axis (``L`` the Cholesky factor of ``Σ``), so ``μ = 0, β = 1, γ = 0`` is exactly the seed's
own noise. The parameters minimise (eq. 6–8)

    L = mean over temporal layers ‖A_t^ref − A_t‖_F + λ · KL(N(μ, Σ) ‖ N(0, I)),

``A_t^ref`` the maps of the real clip noised to ``t`` and denoised once
(:func:`~vstar_model.analysis.temporal_attention.real_video_attention`), ``A_t`` the maps of the
conditional branch when the sampling loop reaches the step nearest ``t``: the loop runs from
``ε`` through the earlier steps with gradients, each UNet call under activation checkpointing, so
memory holds one UNet call's activations whatever the number of steps. The maps come from
:func:`~vstar_model.analysis.temporal_attention.capture_attention` run with gradients on: its plain
map (no band) is differentiable, TAR's regularised one is not (its logits are changed in place),
so the optimisation sees the backbone's own attention; TAR, when asked for, acts in the final
sampling only.

Positive definiteness: ``K_ij = γ^|i−j|`` (|γ| < 1) is the Kac–Murdock–Szegő matrix, whose
eigenvalues lie strictly above ``(1 − |γ|)/(1 + |γ|)`` for every N; ``Σ = K + (β − 1)·I``, so
``β ≥ 2|γ|/(1 + |γ|)`` makes ``Σ`` positive definite. We set ``γ = 0.99·tanh(g)`` and
``β = 2|γ|/(1 + |γ|) + softplus(b) + 10⁻³``: the smallest eigenvalue of ``Σ`` exceeds
``softplus(b) + 10⁻³`` whatever values the optimiser gives ``g`` and ``b``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vstar_model.analysis.temporal_attention import CONDITIONAL_BATCH_INDEX, capture_attention, real_video_attention
from vstar_model.backbones.loading import VideoModel
from vstar_model.sampling.unet import (
    SamplingConfig,
    check_states,
    denoise_step,
    guided_noise,
    latent_shape,
    sampling_schedule,
    text_conditioning,
)

GAMMA_LIMIT = 0.99  # |γ| stays below this: Σ's condition number stays finite for any N
BETA_MARGIN = 1e-3  # Σ's smallest eigenvalue exceeds this


@dataclass(frozen=True)
class GTNConfig:
    """How the initial noise is optimised.

    Attributes:
        timestep: ``t`` of ``A_t``: the maps are compared at the sampling step whose timestep is
            nearest (the real clip is noised to that step's timestep). 500 is mid-schedule, where
            real clips' maps are band-like; a later step costs one more guided UNet call per
            earlier step and iteration.
        kl_weight: λ of eq. 8, on the KL divergence per latent position.
        steps: gradient steps (Adam).
        learning_rate: Adam's step size.
    """

    timestep: int = 500
    kl_weight: float = 0.1
    steps: int = 20
    learning_rate: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.timestep, bool) or not isinstance(self.timestep, int) or self.timestep < 0:
            raise ValueError(f"GTN timestep must be an int >= 0, got {self.timestep!r}")
        if not self.kl_weight >= 0:
            raise ValueError(f"GTN kl_weight must be >= 0, got {self.kl_weight!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"GTN steps must be an int >= 0, got {self.steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"GTN learning_rate must be > 0, got {self.learning_rate!r}")


def kms_covariance(beta: torch.Tensor, gamma: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Σ_N(β, γ) of eq. 5: ``β`` on the diagonal, ``γ^|i−j|`` off it; ``[N, N]`` in β's dtype."""
    frames = torch.arange(num_frames, device=beta.device)
    offsets = (frames[None, :] - frames[:, None]).abs().to(beta.dtype)
    # Integer exponents: a negative γ alternates in sign, and d/dγ stays finite at γ = 0.
    return torch.where(offsets == 0, beta.expand_as(offsets), gamma.pow(offsets))


def beta_lower_bound(gamma: torch.Tensor) -> torch.Tensor:
    """``2|γ|/(1 + |γ|)``: Σ_N(β, γ) is positive definite for every N when β is at least this."""
    return 2 * gamma.abs() / (1 + gamma.abs())


def gaussian_kl_to_standard(mean: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_p, Σ) ‖ N(0, I)) averaged over positions p: ``½(tr Σ − N − log det Σ) + ½·mean_p ‖μ_p‖²``.

    ``mean`` is ``[..., N, ...]`` with the frame axis at ``-3`` (latents ``[B, C, N, h, w]``),
    ``covariance`` ``[N, N]``, shared by all positions.
    """
    num_frames = covariance.shape[-1]
    positions = mean.numel() // num_frames
    shared = 0.5 * (torch.diagonal(covariance).sum() - num_frames - torch.logdet(covariance))
    return shared + 0.5 * mean.double().pow(2).sum() / positions


class FrameCorrelatedNoise(torch.nn.Module):
    """ε ~ N(μ, Σ_N(β, γ)) per latent position, with parameters kept in the positive-definite set.

    Starts at μ = 0, β = 1, γ = 0: the standard normal noise of the seed.
    """

    def __init__(self, shape: Sequence[int], *, device: torch.device | str | None = None):
        super().__init__()
        if len(shape) != 5:
            raise ValueError(f"latents must be [B, C, N, h, w], got shape {tuple(shape)}")
        self.num_frames = int(shape[2])
        self.mean = torch.nn.Parameter(torch.zeros(shape, device=device))
        self.raw_gamma = torch.nn.Parameter(torch.zeros((), device=device, dtype=torch.float64))
        # softplus(b) + margin = 1 at the start
        start = math.log(math.expm1(1.0 - BETA_MARGIN))
        self.raw_beta = torch.nn.Parameter(torch.full((), start, device=device, dtype=torch.float64))

    @property
    def gamma(self) -> torch.Tensor:
        return GAMMA_LIMIT * torch.tanh(self.raw_gamma)

    @property
    def beta(self) -> torch.Tensor:
        return beta_lower_bound(self.gamma) + F.softplus(self.raw_beta) + BETA_MARGIN

    def covariance(self) -> torch.Tensor:
        """Σ ``[N, N]`` in float64."""
        return kms_covariance(self.beta, self.gamma, self.num_frames)

    def sample(self, standard: torch.Tensor) -> torch.Tensor:
        """``μ + L·z`` for a standard normal draw ``z`` ``[B, C, N, h, w]`` (float32)."""
        factor = torch.linalg.cholesky(self.covariance()).to(standard.dtype)
        return self.mean + torch.einsum("ij,bcjhw->bcihw", factor, standard)

    def kl_to_standard(self) -> torch.Tensor:
        """KL(N(μ, Σ) ‖ N(0, I)) per latent position (float64 scalar)."""
        return gaussian_kl_to_standard(self.mean, self.covariance())


@dataclass
class GTNResult:
    """The optimised distribution and how the optimisation went.

    Attributes:
        noise: the fitted distribution; ``noise.sample`` is the ``initial_noise`` of
            :func:`~vstar_model.sampling.unet.generate_video`.
        step: the sampling step whose maps were compared; ``timestep`` its timestep.
        history: ``attention_loss``, ``kl`` and ``loss`` of the start and after every gradient step.
        best: the entry of ``history`` with the lowest loss: the distribution returned (a step
            too far never makes the result worse than the start, the seed's own noise).
        reference: processor name → the real clip's map ``[N, N]`` at ``timestep``.
    """

    noise: FrameCorrelatedNoise
    step: int
    timestep: int
    history: list[dict[str, float]] = field(default_factory=list)
    best: int = 0
    reference: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    seconds: float = 0.0

    def initial_noise(self, standard: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.noise.sample(standard)


def nearest_step(timesteps: torch.Tensor, timestep: int) -> int:
    """Index of the schedule timestep nearest ``timestep`` (the earlier step on a tie)."""
    return int((timesteps.long() - timestep).abs().argmin())


def attention_loss(reference: Mapping[str, torch.Tensor], maps: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the Frobenius norm ‖A^ref − A‖ (eq. 6)."""
    if set(reference) != set(maps):
        raise ValueError(f"reference maps cover layers {sorted(reference)} but the video's cover {sorted(maps)}")
    return torch.stack([torch.linalg.matrix_norm(reference[name] - maps[name]) for name in sorted(maps)]).mean()


def optimise_initial_noise(
    model: VideoModel,
    states: Sequence[str],
    config: SamplingConfig,
    reference_frames: torch.Tensor,
    *,
    seed: int,
    gtn: GTNConfig = GTNConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> GTNResult:
    """Fit the initial noise of the video ``(states, config, seed)`` to a real clip's temporal attention.

    Args:
        reference_frames: the real clip, uint8 ``[N, H, W, 3]`` at the video's frame count and
            size (see :func:`~vstar_model.analysis.temporal_attention.resize_frames`).
        progress: called with (gradient steps done, total).

    Returns:
        The fitted distribution: pass ``result.initial_noise`` to
        :func:`~vstar_model.sampling.unet.generate_video` with the same seed.
    """
    check_states(model, states, config)
    if reference_frames.shape[0] != config.num_frames:
        raise ValueError(
            f"the GTN reference clip has {reference_frames.shape[0]} frames but the video {config.num_frames}"
        )
    start = time.perf_counter()
    scheduler = sampling_schedule(model, config)
    step = nearest_step(scheduler.timesteps, gtn.timestep)
    timestep = int(scheduler.timesteps[step])
    reference = real_video_attention(model, reference_frames, timestep=timestep, seed=seed)

    with model.lock, torch.enable_grad():
        generator = torch.Generator(device=model.device).manual_seed(seed)
        shape = latent_shape(model, config)
        # The seed's draws in generate_video's order: the initial noise, then each step's η noise.
        standard = torch.randn(shape, generator=generator, device=model.device, dtype=torch.float32)
        variance_noises = [
            torch.randn(shape, generator=generator, device=model.device, dtype=torch.float32)
            if config.eta > 0 else None
            for _ in range(step)
        ]
        scale = model.signal_scale()
        noise = FrameCorrelatedNoise(shape, device=model.device)
        optimiser = torch.optim.Adam(noise.parameters(), lr=gtn.learning_rate)
        result = GTNResult(noise=noise, step=step, timestep=timestep, reference=reference)

        with text_conditioning(model, states, config) as encoder_hidden_states:

            def maps_at_step(initial: torch.Tensor) -> dict[str, torch.Tensor]:
                latents = initial * scheduler.init_noise_sigma
                for index, t in enumerate(scheduler.timesteps[:step]):
                    latents = checkpoint(
                        denoise_step, model, scheduler, latents, t, encoder_hidden_states, config,
                        variance_noise=variance_noises[index], scale=scale, use_reentrant=False,
                    )
                names = sorted(reference)
                stacked = checkpoint(_conditional_maps, model, scheduler, latents, scheduler.timesteps[step],
                                     encoder_hidden_states, config.guidance_scale, names, use_reentrant=False)
                return dict(zip(names, stacked))

            best_state = {name: value.detach().clone() for name, value in noise.state_dict().items()}
            for iteration in range(gtn.steps + 1):
                attention = attention_loss(reference, maps_at_step(noise.sample(standard)))
                kl = noise.kl_to_standard()
                loss = attention + gtn.kl_weight * kl
                result.history.append(
                    {"attention_loss": attention.item(), "kl": kl.item(), "loss": loss.item()}
                )
                if loss.item() < result.history[result.best]["loss"]:
                    result.best = iteration
                    best_state = {name: value.detach().clone() for name, value in noise.state_dict().items()}
                if iteration == gtn.steps:
                    break  # the loss after the last step is known: no further step
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if progress is not None:
                    progress(iteration + 1, gtn.steps)
    noise.load_state_dict(best_state)
    noise.requires_grad_(False)
    result.seconds = time.perf_counter() - start
    return result


def _conditional_maps(model, scheduler, latents, t, encoder_hidden_states, guidance_scale, names) -> torch.Tensor:
    """The conditional branch's mean temporal attention maps of one guided UNet call, ``[layers, N, N]``."""
    with capture_attention(model.unet, batch_index=CONDITIONAL_BATCH_INDEX) as recorder:
        guided_noise(model, scheduler, latents, t, encoder_hidden_states, guidance_scale)
    maps = recorder.maps_at(0)
    return torch.stack([maps[name] for name in names])
