"""Regularisation maps ΔA for Temporal Attention Regularization (paper §3.4, eq. 2; Fig. 5 and 9).

A band is an N×N matrix over frames (query frame i, key frame j). TAR adds ``rowmax(φ)·ΔA`` to the
temporal attention logits φ. Besides the paper's Gaussian Toeplitz band, its analysis uses the
identity (frames independent), all-ones (fully correlated) and a measured frame-similarity matrix
of a real video (e.g. DreamSim), so all four are available here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

BandMode = Literal["gaussian", "identity", "ones", "matrix"]
BAND_MODES: tuple[str, ...] = ("gaussian", "identity", "ones", "matrix")


def _check_num_frames(num_frames: int) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")


def check_sigma(sigma: float) -> float:
    """Return ``sigma`` as a float if it is a valid band width (> 0, not NaN; ∞ allowed)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise ValueError(f"TAR sigma must be a number, got {sigma!r}")
    if math.isnan(sigma) or sigma <= 0:
        raise ValueError(f"TAR sigma must be > 0, got {sigma!r}")
    return float(sigma)


def gaussian_band(
    num_frames: int,
    sigma: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The symmetric Toeplitz Gaussian band ``ΔA[i, j] = exp(-½((j - i)/σ)²)``.

    Returns a ``[num_frames, num_frames]`` tensor with ones on the diagonal. Smaller ``sigma``
    gives a narrower band (stronger regularisation, more change over time); ``sigma=inf`` gives
    all ones, which leaves attention unchanged.
    """
    _check_num_frames(num_frames)
    sigma = check_sigma(sigma)
    # Built in float64 so every dtype gets the correctly rounded values.
    offsets = torch.arange(num_frames, dtype=torch.float64, device=device)
    offsets = offsets[None, :] - offsets[:, None]
    band = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return band.to(dtype or torch.get_default_dtype())


def identity_band(
    num_frames: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """ΔA = I_N (``[num_frames, num_frames]``): only a frame's own logit is boosted."""
    _check_num_frames(num_frames)
    return torch.eye(num_frames, device=device, dtype=dtype)


def ones_band(
    num_frames: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """ΔA = J_N (``[num_frames, num_frames]``): a per-row constant, so attention is unchanged."""
    _check_num_frames(num_frames)
    return torch.ones(num_frames, num_frames, device=device, dtype=dtype)


def validate_band_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """Check a user-supplied ΔA (e.g. a DreamSim frame-similarity matrix) and return it as float.

    The matrix must be a square, 2-D, finite, floating-point or integer ``[N, N]`` tensor.
    """
    if not isinstance(matrix, torch.Tensor):
        raise ValueError(f"a TAR band matrix must be a torch.Tensor, got {type(matrix).__name__}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"a TAR band matrix must be square [N, N], got shape {tuple(matrix.shape)}")
    if matrix.is_complex() or matrix.dtype == torch.bool:
        raise ValueError(f"a TAR band matrix must be real-valued, got dtype {matrix.dtype}")
    matrix = matrix.detach()
    if not matrix.is_floating_point():
        matrix = matrix.to(torch.get_default_dtype())
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("a TAR band matrix must be finite, got NaN or inf entries")
    return matrix


class CachedBand:
    """One ΔA setting, built once per (num_frames, device, dtype) and reused on every call.

    Attention processors call this on every forward pass, so a hit must be a dict lookup: no
    tensor construction, no host-device copy, no synchronisation. Callers must not modify the
    returned tensor in place.
    """

    def __init__(self, build: Callable[[int], torch.Tensor], description: str):
        self._build = build
        self.description = description
        self._bands: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def __call__(self, num_frames: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The ``[num_frames, num_frames]`` band on ``device`` in ``dtype``."""
        key = (num_frames, device, dtype)
        band = self._bands.get(key)
        if band is None:
            band = self._build(num_frames).to(device=device, dtype=dtype)
            self._bands[key] = band
        return band

    def __repr__(self) -> str:
        return f"CachedBand({self.description})"


def make_band(
    mode: BandMode, *, sigma: float | None = None, matrix: torch.Tensor | None = None
) -> CachedBand:
    """A cached ΔA source for ``mode``: ``gaussian`` (needs ``sigma``), ``identity``, ``ones`` or
    ``matrix`` (needs ``matrix``; the video must then have exactly as many frames as it has rows).
    """
    if mode == "gaussian":
        if sigma is None:
            raise ValueError("the 'gaussian' TAR band needs a sigma")
        sigma = check_sigma(sigma)
        return CachedBand(
            lambda n: gaussian_band(n, sigma, dtype=torch.float64), f"gaussian, sigma={sigma:g}"
        )
    if mode == "identity":
        return CachedBand(identity_band, "identity")
    if mode == "ones":
        return CachedBand(ones_band, "ones")
    if mode == "matrix":
        if matrix is None:
            raise ValueError("the 'matrix' TAR band needs a matrix")
        matrix = validate_band_matrix(matrix)
        size = matrix.shape[0]

        def _matrix_for(num_frames: int) -> torch.Tensor:
            if num_frames != size:
                raise ValueError(
                    f"the TAR band matrix is {size}×{size} but the video has {num_frames} frames"
                )
            return matrix

        return CachedBand(_matrix_for, f"matrix {size}×{size}")
    raise ValueError(f"unknown TAR band mode {mode!r}; expected one of {', '.join(BAND_MODES)}")
