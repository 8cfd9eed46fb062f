from __future__ import annotations

import math

import pytest
import torch

from vstar_model.tar.bands import (
    CachedBand,
    gaussian_band,
    identity_band,
    make_band,
    ones_band,
    validate_band_matrix,
)


@pytest.mark.parametrize(("num_frames", "sigma"), [(1, 1.0), (7, 1.0), (16, 4.0), (9, 0.5)])
def test_gaussian_band_matches_equation_2(num_frames, sigma):
    band = gaussian_band(num_frames, sigma, dtype=torch.float64)
    assert band.shape == (num_frames, num_frames)
    for i in range(num_frames):
        for j in range(num_frames):
            assert band[i, j].item() == pytest.approx(math.exp(-0.5 * ((j - i) / sigma) ** 2), rel=1e-12)


def test_gaussian_band_is_symmetric_toeplitz_with_unit_diagonal():
    band = gaussian_band(12, 2.0)
    torch.testing.assert_close(band, band.T)
    for offset in range(1, 12):
        diagonal = torch.diagonal(band, offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal))
    torch.testing.assert_close(torch.diagonal(band), torch.ones(12))


def test_smaller_sigma_gives_a_narrower_band():
    narrow, wide = gaussian_band(8, 1.0), gaussian_band(8, 4.0)
    off_diagonal = ~torch.eye(8, dtype=torch.bool)
    assert bool((narrow[off_diagonal] < wide[off_diagonal]).all())


def test_infinite_sigma_is_all_ones():
    torch.testing.assert_close(gaussian_band(6, math.inf), torch.ones(6, 6))


def test_dtype_and_device_are_honoured():
    band = gaussian_band(5, 1.0, device="cpu", dtype=torch.bfloat16)
    assert band.dtype == torch.bfloat16 and band.device.type == "cpu"
    assert identity_band(5, dtype=torch.float16).dtype == torch.float16
    assert ones_band(5, dtype=torch.float64).dtype == torch.float64


def test_identity_and_ones_bands():
    torch.testing.assert_close(identity_band(4), torch.eye(4))
    torch.testing.assert_close(ones_band(4), torch.ones(4, 4))


@pytest.mark.parametrize("sigma", [0, 0.0, -1.0, math.nan, -math.inf])
def test_invalid_sigma_is_named(sigma):
    with pytest.raises(ValueError, match=f"sigma must be > 0, got {sigma!r}"):
        gaussian_band(4, sigma)


@pytest.mark.parametrize("num_frames", [0, -3, 2.0, True])
def test_invalid_frame_count_is_named(num_frames):
    for build in (lambda: gaussian_band(num_frames, 1.0), lambda: identity_band(num_frames)):
        with pytest.raises(ValueError, match=f"num_frames must be a positive int, got {num_frames!r}"):
            build()


def test_validate_band_matrix_accepts_a_similarity_matrix():
    similarity = torch.tensor([[1, 0], [0, 1]])
    checked = validate_band_matrix(similarity)
    assert checked.is_floating_point()
    torch.testing.assert_close(checked, torch.eye(2))


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (torch.ones(3, 4), r"square \[N, N\], got shape \(3, 4\)"),
        (torch.ones(3), r"square \[N, N\], got shape \(3,\)"),
        (torch.ones(0, 0), r"square \[N, N\], got shape \(0, 0\)"),
        (torch.tensor([[1.0, math.nan], [0.0, 1.0]]), "finite"),
        (torch.ones(2, 2, dtype=torch.bool), "real-valued"),
        ([[1.0]], "must be a torch.Tensor, got list"),
    ],
)
def test_validate_band_matrix_rejects(matrix, message):
    with pytest.raises(ValueError, match=message):
        validate_band_matrix(matrix)


def test_cached_band_builds_once_per_frames_device_and_dtype():
    built: list[int] = []

    def build(num_frames: int) -> torch.Tensor:
        built.append(num_frames)
        return gaussian_band(num_frames, 1.0, dtype=torch.float64)

    band = CachedBand(build, "test")
    cpu = torch.device("cpu")
    first = band(8, cpu, torch.float32)
    assert band(8, cpu, torch.float32) is first
    assert band(8, cpu, torch.float16).dtype == torch.float16
    assert band(4, cpu, torch.float32).shape == (4, 4)
    assert built == [8, 8, 4]
    torch.testing.assert_close(first, gaussian_band(8, 1.0))


@pytest.mark.parametrize(
    ("mode", "kwargs", "expected"),
    [
        ("gaussian", {"sigma": 2.0}, gaussian_band(5, 2.0)),
        ("identity", {}, torch.eye(5)),
        ("ones", {}, torch.ones(5, 5)),
        ("matrix", {"matrix": torch.full((5, 5), 0.5)}, torch.full((5, 5), 0.5)),
    ],
)
def test_make_band(mode, kwargs, expected):
    band = make_band(mode, **kwargs)
    torch.testing.assert_close(band(5, torch.device("cpu"), torch.float32), expected)


def test_make_band_matrix_must_fit_the_video():
    band = make_band("matrix", matrix=torch.eye(4))
    with pytest.raises(ValueError, match="4×4 but the video has 6 frames"):
        band(6, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(
    ("mode", "kwargs", "message"),
    [
        ("gaussian", {}, "needs a sigma"),
        ("gaussian", {"sigma": -2.0}, "got -2.0"),
        ("matrix", {}, "needs a matrix"),
        ("wavelet", {}, "unknown TAR band mode 'wavelet'"),
    ],
)
def test_make_band_rejects(mode, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_band(mode, **kwargs)
