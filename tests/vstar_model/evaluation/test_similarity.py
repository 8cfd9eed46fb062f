"""Frame-similarity evaluation: pure functions, synthetic videos of known structure, and the real
DreamSim code path on random weights."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vstar_model.evaluation.dreamsim_weights import (
    CACHE_DIR_ENV,
    DreamSimWeightsMissing,
)
from vstar_model.evaluation.similarity import (
    DreamSimEmbedder,
    FrameEmbedder,
    PixelEmbedder,
    build_embedder,
    coherence,
    compare_to_reference,
    dynamics_slope,
    interval_similarities,
    interval_summary,
    pool_intervals,
    similarity_matrix,
    wasserstein_1d,
)

# --- synthetic videos --------------------------------------------------------------------------


def smooth_texture(height: int, width: int, seed: int, cell: int = 32) -> torch.Tensor:
    """Random colour texture with features about ``cell`` px wide: float [3, height, width] in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // cell + 1, width // cell + 1, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True).clamp(0, 1)[0]


def _crop(texture: torch.Tensor, offset: int, size: int) -> torch.Tensor:
    return (texture[:, :, offset : offset + size].permute(1, 2, 0) * 255).round().to(torch.uint8)


def panning_video(num_frames: int, seed: int, size: int = 64, step: int = 2) -> torch.Tensor:
    """A window sliding steadily across a texture: frames drift further apart as k grows."""
    texture = smooth_texture(size, size + step * (num_frames - 1), seed)
    return torch.stack([_crop(texture, i * step, size) for i in range(num_frames)])


def periodic_video(num_frames: int, period: int, seed: int, size: int = 64, step: int = 8) -> torch.Tensor:
    """Cycles through ``period`` views: frame i equals frame i + period."""
    texture = smooth_texture(size, size + step * (period - 1), seed)
    return torch.stack([_crop(texture, (i % period) * step, size) for i in range(num_frames)])


def static_video(num_frames: int, seed: int, size: int = 64) -> torch.Tensor:
    return _crop(smooth_texture(size, size, seed), 0, size).expand(num_frames, -1, -1, -1).clone()


def per_k_means(matrix: torch.Tensor) -> torch.Tensor:
    return torch.tensor([row["mean"] for row in interval_summary(matrix)], dtype=torch.float64)


# --- pure functions ------------------------------------------------------------------------------


def test_similarity_matrix_is_pairwise_cosine_symmetric_with_unit_diagonal():
    embeddings = torch.randn(7, 5, generator=torch.Generator().manual_seed(0)) * 3.0
    matrix = similarity_matrix(embeddings)
    expected = F.cosine_similarity(embeddings[:, None].double(), embeddings[None, :].double(), dim=-1)
    assert matrix.shape == (7, 7)
    torch.testing.assert_close(matrix, expected)
    assert torch.equal(matrix, matrix.T)
    torch.testing.assert_close(matrix.diagonal(), torch.ones(7, dtype=torch.float64))


def test_similarity_matrix_rejects_non_matrix():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        similarity_matrix(torch.ones(4))


def test_interval_similarities_take_the_kth_superdiagonal():
    matrix = torch.randn(5, 5, generator=torch.Generator().manual_seed(1))  # not symmetric: catches i/j swaps
    intervals = interval_similarities(matrix)
    assert sorted(intervals) == [1, 2, 3, 4]
    for k, values in intervals.items():
        assert values.tolist() == [matrix[i, i + k].item() for i in range(5 - k)]


@pytest.mark.parametrize("shape", [(3, 4), (1, 1), (2, 2, 2)])
def test_interval_functions_reject_bad_matrices(shape):
    with pytest.raises(ValueError, match="square similarity matrix"):
        interval_similarities(torch.ones(shape))


def test_interval_summary_matches_numpy_statistics():
    matrix = similarity_matrix(torch.randn(9, 4, generator=torch.Generator().manual_seed(2)))
    rows = interval_summary(matrix)
    assert [row["k"] for row in rows] == list(range(1, 9))
    for row in rows:
        values = np.array([matrix[i, i + row["k"]].item() for i in range(9 - row["k"])])
        assert row["n"] == len(values)
        assert row["mean"] == pytest.approx(values.mean())
        assert row["std"] == pytest.approx(values.std())
        for name, q in [("q05", 0.05), ("q25", 0.25), ("q50", 0.5), ("q75", 0.75), ("q95", 0.95)]:
            assert row[name] == pytest.approx(np.quantile(values, q))


def test_coherence_and_dynamics_slope():
    matrix = similarity_matrix(torch.randn(8, 3, generator=torch.Generator().manual_seed(3)))
    assert coherence(matrix) == pytest.approx(matrix.diagonal(1).mean().item())
    ks = np.arange(1, 8)
    means = [matrix.diagonal(k).mean().item() for k in ks]
    assert dynamics_slope(matrix) == pytest.approx(np.polyfit(ks, means, 1)[0])
    with pytest.raises(ValueError, match="N >= 3"):
        dynamics_slope(torch.eye(2))


def test_wasserstein_1d_properties():
    generator = torch.Generator().manual_seed(4)
    a, b = torch.randn(50, generator=generator), torch.randn(50, generator=generator) * 2 + 1
    assert wasserstein_1d(a, a) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein_1d(a, a + 0.3) == pytest.approx(0.3)
    assert wasserstein_1d(a, b) == pytest.approx(wasserstein_1d(b, a))
    # Equal sizes: the optimal coupling matches sorted samples.
    assert wasserstein_1d(a, b) == pytest.approx((a.sort().values - b.sort().values).abs().mean().item())
    # Sizes may differ: a sample and itself repeated are the same distribution.
    assert wasserstein_1d(a, a.repeat(3)) == pytest.approx(0.0, abs=1e-12)


def test_wasserstein_1d_unequal_sizes_matches_quantile_integral():
    generator = torch.Generator().manual_seed(5)
    a, b = torch.rand(7, generator=generator), torch.rand(11, generator=generator)
    levels = (torch.arange(77 * 20) + 0.5) / (77 * 20)  # a grid on which both quantile functions are steps
    quantile_a = a.sort().values[(levels * 7).long()]
    quantile_b = b.sort().values[(levels * 11).long()]
    assert wasserstein_1d(a, b) == pytest.approx((quantile_a - quantile_b).abs().mean().item())


def test_wasserstein_1d_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1d(torch.tensor([]), torch.ones(3))


def test_compare_to_reference_uses_common_intervals_and_averages():
    generator = torch.Generator().manual_seed(6)
    reference = {k: torch.rand(10, generator=generator) for k in range(1, 6)}
    generated = {k: reference[k] - 0.1 * k for k in range(1, 4)}
    result = compare_to_reference(generated, reference)
    assert sorted(result.per_k) == [1, 2, 3]
    assert result.per_k == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})
    assert result.score == pytest.approx(0.2)
    assert compare_to_reference(reference, reference).score == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="share no interval"):
        compare_to_reference({7: torch.ones(1)}, reference)


def test_pool_intervals_concatenates_per_k():
    pooled = pool_intervals([{1: torch.tensor([1.0, 2.0]), 2: torch.tensor([3.0])}, {1: torch.tensor([4.0])}])
    assert {k: v.tolist() for k, v in pooled.items()} == {1: [1.0, 2.0, 4.0], 2: [3.0]}


# --- synthetic structure, deterministic embedder --------------------------------------------------


def pixel_matrix(frames: torch.Tensor) -> torch.Tensor:
    return similarity_matrix(PixelEmbedder().embed(frames))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interval_curves_order_static_periodic_and_drifting_videos(seed):
    static = pixel_matrix(static_video(16, seed))
    periodic = pixel_matrix(periodic_video(16, period=4, seed=seed))
    drifting = pixel_matrix(panning_video(16, seed))

    torch.testing.assert_close(per_k_means(static), torch.ones(15, dtype=torch.float64))
    assert dynamics_slope(static) == pytest.approx(0.0, abs=1e-9)

    drifting_means = per_k_means(drifting)
    assert (drifting_means.diff() < 0).all(), "a steadily drifting video must lose similarity as k grows"
    assert coherence(drifting) > drifting_means[-1].item()

    periodic_means = per_k_means(periodic)
    at_period = periodic_means[3::4]  # k = 4, 8, 12
    torch.testing.assert_close(at_period, torch.ones_like(at_period))
    off_period = torch.cat([periodic_means[k - 1 : k] for k in range(1, 16) if k % 4])
    assert (off_period < 1 - 1e-3).all()

    assert dynamics_slope(drifting) < -abs(dynamics_slope(periodic))


def test_drifting_videos_are_closer_to_a_drifting_reference_than_static_ones():
    def pooled(videos):
        return pool_intervals(interval_similarities(pixel_matrix(v)) for v in videos)

    reference = pooled(panning_video(16, seed) for seed in range(3))
    drifting = compare_to_reference(pooled(panning_video(16, seed) for seed in (3, 4)), reference)
    static = compare_to_reference(pooled(static_video(16, seed) for seed in (3, 4)), reference)
    assert drifting.score < static.score


def test_pixel_embedder_rows_are_unit_vectors_and_input_is_checked():
    embeddings = PixelEmbedder(size=8).embed(panning_video(3, seed=0))
    assert embeddings.shape == (3, 3 * 8 * 8)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    assert isinstance(PixelEmbedder(), FrameEmbedder)
    with pytest.raises(ValueError, match="uint8"):
        PixelEmbedder().embed(torch.zeros(2, 8, 8, 3))


# --- embedder selection and offline honesty ---------------------------------------------------------


@pytest.fixture
def no_dreamsim_cache(tmp_path, monkeypatch):
    empty = tmp_path / "empty-dreamsim-cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(empty))

    def must_not_run(*args, **kwargs):
        raise AssertionError("dreamsim() was called although its weights are missing (it would download)")

    monkeypatch.setattr("dreamsim.dreamsim", must_not_run)
    return empty


def test_missing_weights_fail_fast_without_calling_dreamsim(no_dreamsim_cache):
    with pytest.raises(DreamSimWeightsMissing) as error:
        DreamSimEmbedder("open_clip_vitb32")
    assert str(no_dreamsim_cache) in str(error.value)
    assert "open_clip_vitb32_pretrain.pth.tar" in str(error.value)
    with pytest.raises(DreamSimWeightsMissing):
        build_embedder("dreamsim_ensemble")


def test_fallback_metric_only_when_configured_and_named_as_such(no_dreamsim_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="vstar_model.evaluation.similarity"):
        embedder = build_embedder("dreamsim_ensemble", fallback="pixel_cosine")
    assert isinstance(embedder, PixelEmbedder)
    assert embedder.metric == "pixel_cosine"
    assert "pixel_cosine" in caplog.text and "ensemble_lora" in caplog.text


def test_build_embedder_rejects_unknown_metrics():
    with pytest.raises(ValueError, match="lpips"):
        build_embedder("lpips")
    with pytest.raises(ValueError, match="dreamsim_type"):
        build_embedder("dreamsim_resnet")


# --- the real DreamSim code path on random weights ------------------------------------------------


@pytest.fixture(scope="module")
def dreamsim_embedder(random_dreamsim_cache):
    return DreamSimEmbedder("open_clip_vitb32", cache_dir=random_dreamsim_cache, batch_size=4)


def test_random_weight_dreamsim_says_so_in_its_metric(dreamsim_embedder):
    assert dreamsim_embedder.metric == "dreamsim_open_clip_vitb32_random_weights"
    assert isinstance(dreamsim_embedder, FrameEmbedder)


def test_dreamsim_embeds_each_frame_once_and_gives_a_valid_matrix(dreamsim_embedder, monkeypatch):
    frames = periodic_video(4, period=2, seed=0, step=16)
    batch_sizes = []
    real_embed = dreamsim_embedder.model.embed

    def counting_embed(images):
        batch_sizes.append(len(images))
        return real_embed(images)

    monkeypatch.setattr(dreamsim_embedder.model, "embed", counting_embed)
    monkeypatch.setattr(dreamsim_embedder, "batch_size", 3)
    embeddings = dreamsim_embedder.embed(frames)
    assert batch_sizes == [3, 1]  # N images through the model, not N² pairs

    assert embeddings.shape == (4, 512)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(4))
    matrix = similarity_matrix(embeddings)
    assert torch.equal(matrix, matrix.T)
    torch.testing.assert_close(matrix.diagonal(), torch.ones(4, dtype=torch.float64))
    # Identical frames (k = period) embed identically, whatever batch they were in; other views do not.
    torch.testing.assert_close(matrix.diagonal(2), torch.ones(2, dtype=torch.float64))
    assert (matrix.diagonal(1) < 1 - 1e-4).all()

    # The same numbers as DreamSim's own pairwise distance.
    images = dreamsim_embedder.preprocess(frames[:2])
    assert images.shape == (2, 3, 224, 224) and 0.0 <= images.min() and images.max() <= 1.0
    with torch.inference_mode():
        distance = dreamsim_embedder.model(images[:1], images[1:]).item()
    assert matrix[0, 1].item() == pytest.approx(1.0 - distance, abs=1e-5)
