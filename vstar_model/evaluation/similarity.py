"""Temporal dynamics of a video measured as DreamSim similarity between its frames (paper §4.1, A.1).

Every frame is embedded once; all N² pairwise similarities come from one matrix product of the
L2-normalised embeddings (DreamSim's distance is ``1 - cosine`` of its embeddings, so similarity =
cosine = 1 − distance). For frames k apart, the values ``matrix[i, i + k]`` form a distribution:
real dynamic videos are similar at small k and less so as k grows, a static video is similar at
every k. Generated sets are compared with a reference from real videos by a per-k 1-D Wasserstein
distance.

Every embedder carries the name of the metric it computes (``.metric``); results must be recorded
under that name, so a fallback or random-weight model can never pass for DreamSim.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from vstar_model.evaluation.dreamsim_weights import (
    DreamSimWeightsMissing,
    check_dreamsim_cache,
    default_cache_dir,
    uses_random_weights,
)

logger = logging.getLogger(__name__)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
PIXEL_METRIC = "pixel_cosine"


@runtime_checkable
class FrameEmbedder(Protocol):
    metric: str
    """Name of the similarity this embedder computes; recorded with every result."""

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [N, H, W, 3] -> L2-normalised embeddings [N, D], one row per frame."""
        ...


def _check_frames(frames: torch.Tensor) -> None:
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(
            f"frames must be a non-empty uint8 tensor [N, H, W, 3]; got {frames.dtype} {tuple(frames.shape)}"
        )


class DreamSimEmbedder:
    """Embeds frames with the ``dreamsim`` package's model, loaded from a local cache only.

    The cache (``cache_dir``, else ``$VSTAR_DREAMSIM_CACHE``, else ``~/.cache/vstar/dreamsim``) is
    checked before dreamsim is called, so missing weights raise
    :class:`~vstar_model.evaluation.dreamsim_weights.DreamSimWeightsMissing` instead of a download attempt.
    Frames go through DreamSim's own preprocessing (PIL bicubic resize to 224², values in [0, 1]).
    """

    def __init__(
        self,
        dreamsim_type: str = "ensemble",
        cache_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dreamsim_type = dreamsim_type
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.device = torch.device(device)
        self.batch_size = batch_size
        check_dreamsim_cache(self.cache_dir, dreamsim_type)
        self.metric = f"dreamsim_{dreamsim_type}"
        if uses_random_weights(self.cache_dir):
            self.metric += "_random_weights"

        from dreamsim import dreamsim

        with warnings.catch_warnings():
            # dreamsim applies PEFT to the same base model twice (get_peft_model, then from_pretrained);
            # PEFT warns about that on every load.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            self.model, self._preprocess_image = dreamsim(
                pretrained=True, device=str(self.device), cache_dir=str(self.cache_dir), dreamsim_type=dreamsim_type
            )

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, 224, 224] in [0, 1], exactly as DreamSim prepares images."""
        from PIL import Image

        return torch.cat([self._preprocess_image(Image.fromarray(frame)) for frame in frames.cpu().numpy()])

    @torch.inference_mode()
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float32 [N, D], unit rows; N images through the model, in batches."""
        _check_frames(frames)
        embeddings = []
        for start in range(0, len(frames), self.batch_size):
            images = self.preprocess(frames[start : start + self.batch_size]).to(self.device)
            embeddings.append(self.model.embed(images).float().cpu())
        return F.normalize(torch.cat(embeddings), dim=1)


class PixelEmbedder:
    """Weight-free fallback: cosine similarity of downsampled, mean-centred pixel vectors.

    Not a perceptual metric and never DreamSim; its results are recorded as ``pixel_cosine``. A
    perfectly flat frame has no structure left after centring and gets a zero vector.
    """

    metric = PIXEL_METRIC

    def __init__(self, size: int = 32):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float32 [N, 3·size²], unit (or zero) rows."""
        _check_frames(frames)
        images = frames.permute(0, 3, 1, 2).float() / 255.0
        vectors = F.interpolate(images, size=(self.size, self.size), mode="area").flatten(1)
        return F.normalize(vectors - vectors.mean(dim=1, keepdim=True), dim=1)


def build_embedder(
    metric: str,
    *,
    fallback: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> FrameEmbedder:
    """An embedder from its metric name: ``"dreamsim_<type>"`` (e.g. ``"dreamsim_ensemble"``) or
    ``"pixel_cosine"``.

    When DreamSim's weights are missing, :class:`DreamSimWeightsMissing` propagates unless a
    ``fallback`` metric was configured explicitly; then that embedder is returned, with a warning,
    and its own ``.metric`` names what was measured.
    """
    if metric == PIXEL_METRIC:
        return PixelEmbedder()
    if not metric.startswith("dreamsim_"):
        raise ValueError(f"unknown metric {metric!r}; expected 'dreamsim_<type>' or {PIXEL_METRIC!r}")
    try:
        return DreamSimEmbedder(metric.removeprefix("dreamsim_"), cache_dir, device, batch_size)
    except DreamSimWeightsMissing as missing:
        if fallback is None:
            raise
        logger.warning("%s\nUsing the configured fallback metric %r instead.", missing, fallback)
        return build_embedder(fallback, cache_dir=cache_dir, device=device, batch_size=batch_size)


def similarity_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of frames: [N, D] -> float64 [N, N], symmetric, in [-1, 1].

    One matrix product; rows are (re)normalised so any embedding scale gives cosines. With DreamSim
    embeddings this is ``1 - dreamsim_distance`` for every pair.
    """
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"embeddings must be [N, D] with N >= 1, got shape {tuple(embeddings.shape)}")
    unit = F.normalize(embeddings.double(), dim=1)
    matrix = unit @ unit.T
    return ((matrix + matrix.T) / 2).clamp_(-1.0, 1.0)  # exact symmetry despite BLAS rounding


def _check_matrix(matrix: torch.Tensor) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"expected a square similarity matrix with N >= 2 frames, got shape {tuple(matrix.shape)}")


def interval_similarities(matrix: torch.Tensor) -> dict[int, torch.Tensor]:
    """{k: matrix[i, i + k] for i = 0..N-1-k} for every interval k = 1..N-1 ([N-k] values each)."""
    _check_matrix(matrix)
    return {k: torch.diagonal(matrix, offset=k).clone() for k in range(1, matrix.shape[0])}


def interval_summary(matrix: torch.Tensor) -> list[dict[str, float]]:
    """One row per interval k: k, n (pairs), mean, std (population), q05, q25, q50, q75, q95."""
    rows = []
    for k, values in interval_similarities(matrix).items():
        quantiles = torch.quantile(values, torch.tensor(QUANTILES, dtype=values.dtype))
        row = {"k": k, "n": len(values), "mean": values.mean().item(), "std": values.std(correction=0).item()}
        row.update({f"q{round(q * 100):02d}": value.item() for q, value in zip(QUANTILES, quantiles)})
        rows.append(row)
    return rows


def coherence(matrix: torch.Tensor) -> float:
    """Mean similarity of adjacent frames (k = 1): high for smooth videos."""
    _check_matrix(matrix)
    return torch.diagonal(matrix, offset=1).mean().item()


def dynamics_slope(matrix: torch.Tensor) -> float:
    """Least-squares slope of the per-k mean similarity against k (k = 1..N-1).

    About 0 for a static video; clearly negative when frames drift apart as the interval grows.
    Every k weighs the same, however few pairs it has.
    """
    _check_matrix(matrix)
    if matrix.shape[0] < 3:
        raise ValueError(f"a slope needs at least 2 intervals (N >= 3 frames), got N = {matrix.shape[0]}")
    ks = torch.arange(1, matrix.shape[0], dtype=torch.float64)
    means = torch.stack([values.double().mean() for values in interval_similarities(matrix).values()])
    centred = ks - ks.mean()
    return ((centred * (means - means.mean())).sum() / (centred**2).sum()).item()


def pool_intervals(videos: Iterable[Mapping[int, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """Concatenate the per-k values of several videos into one distribution per k."""
    pooled: dict[int, list[torch.Tensor]] = {}
    for intervals in videos:
        for k, values in intervals.items():
            pooled.setdefault(k, []).append(values.flatten())
    return {k: torch.cat(parts) for k, parts in sorted(pooled.items())}


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> float:
    """Wasserstein-1 distance between the empirical distributions of two 1-D samples.

    W1 = ∫ |F_a(x) − F_b(x)| dx, exact for step CDFs: sum over the merged sorted values of the CDF
    gap times the gap to the next value. Sample sizes may differ.
    """
    a, b = a.flatten().double(), b.flatten().double()
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"both samples must be non-empty, got sizes {len(a)} and {len(b)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("samples must be finite")
    a, b = a.sort().values, b.sort().values
    merged = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a, merged[:-1], right=True) / len(a)
    cdf_b = torch.searchsorted(b, merged[:-1], right=True) / len(b)
    return ((cdf_a - cdf_b).abs() * merged.diff()).sum().item()


def _describe_ks(intervals: Mapping[int, torch.Tensor]) -> str:
    return f"k = {min(intervals)}..{max(intervals)}" if intervals else "no intervals"


@dataclass(frozen=True)
class ReferenceComparison:
    per_k: dict[int, float]
    """Wasserstein-1 distance between generated and reference similarities, per interval k."""
    score: float
    """Mean of ``per_k`` over the compared intervals: 0 means the same distributions, lower is closer."""


def compare_to_reference(
    generated: Mapping[int, torch.Tensor], reference: Mapping[int, torch.Tensor]
) -> ReferenceComparison:
    """Per-k Wasserstein-1 between generated and reference interval distributions, and their mean.

    Compares the intervals both have (a reference of longer clips covers more k); ``per_k`` lists
    exactly those. Both sides must come from the same metric; that is the caller's bookkeeping.
    """
    common = sorted(set(generated) & set(reference))
    if not common:
        raise ValueError(
            f"generated ({_describe_ks(generated)}) and reference ({_describe_ks(reference)}) share no interval k"
        )
    per_k = {k: wasserstein_1d(generated[k], reference[k]) for k in common}
    return ReferenceComparison(per_k=per_k, score=sum(per_k.values()) / len(per_k))
