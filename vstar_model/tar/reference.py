"""ΔA from a real reference video (paper §4.1, Fig. 9): its inter-frame similarity matrix as the TAR band.

The paper observes that a real clip's DreamSim similarity matrix resembles its temporal attention
and uses it directly as ΔA. The matrix is over the frames the temporal attention sees: a UNet's
video frames (:func:`reference_band_tar`), or a DiT's latent frames (:func:`reference_band_dit_tar`
resamples a matrix over the video's frames to their count with :func:`resample_band`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from vstar_model.evaluation.similarity import FrameEmbedder, similarity_matrix
from vstar_model.tar.bands import validate_band_matrix
from vstar_model.tar.dit import DiTTARConfig, parse_dit_tar
from vstar_model.tar.unet import TARConfig, parse_tar


def resample_band(matrix: torch.Tensor, num_frames: int) -> torch.Tensor:
    """A ``[M, M]`` frame matrix at ``num_frames`` frames: bilinear, corners on corners.

    Entry ``[i, j]`` is the matrix at the clip times of frames ``i`` and ``j`` when both videos
    span the same time (frame 0 ↔ 0, N−1 ↔ M−1). Returns float64 ``[num_frames, num_frames]``,
    symmetric when the input is; ``M == num_frames`` returns the matrix unchanged.
    """
    matrix = validate_band_matrix(matrix).double()
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if matrix.shape[0] == num_frames:
        return matrix
    if matrix.shape[0] == 1:
        return matrix.expand(num_frames, num_frames).clone()
    resized = F.interpolate(matrix[None, None], size=(num_frames, num_frames), mode="bilinear", align_corners=True)
    return resized[0, 0]


def reference_band(frames: torch.Tensor, embedder: FrameEmbedder, num_frames: int) -> torch.Tensor:
    """ΔA ``[num_frames, num_frames]`` (float64) from a real clip's frames ``[M, H, W, 3]`` (uint8).

    The cosine similarity of the embedder's frame embeddings (DreamSim: 1 − DreamSim distance),
    resampled to ``num_frames`` when the clip has another frame count.
    """
    return resample_band(similarity_matrix(embedder.embed(frames)), num_frames)


def reference_band_tar(levels: TARConfig | str | Mapping[int, float], band: torch.Tensor) -> TARConfig:
    """TAR with ``band`` as ΔA (``"matrix"`` mode) at the levels and step window of ``levels``.

    ``levels`` is a TAR setting such as ``"64D1"`` or ``"64D1_32D8"``; its σ values are unused.
    """
    config = parse_tar(levels)
    if config is None:
        raise ValueError("a band from a real video needs TAR levels (e.g. '64D1'), not 'off'")
    if config.replace is not None:
        raise ValueError("a band from a real video regularises attention; it cannot replace the maps")
    return TARConfig(sigmas=config.sigmas, mode="matrix", matrix=band, active_steps=config.active_steps)


def reference_band_dit_tar(blocks: DiTTARConfig | str, band: torch.Tensor, latent_frames: int) -> DiTTARConfig:
    """DiT TAR with ``band`` as ΔA at the blocks, strengths, step window and row max of ``blocks``.

    ``blocks`` is a DiT TAR setting such as ``"b0-9D1s0.5"``; its σ values are unused. ``band`` is
    ``[N, N]`` over the video's N pixel frames (what a clip's frame similarity gives); a DiT attends
    over ``latent_frames`` F' (Wan: 1 + (N − 1)/4), so the config's matrix is
    ``resample_band(band, F')`` ``[F', F']``: first and last pixel frame on the first and last latent frame.
    """
    config = parse_dit_tar(blocks)
    if config is None:
        raise ValueError("a band from a real video needs TAR blocks (e.g. 'b0-9D1s0.5'), not 'off'")
    return dataclasses.replace(config, matrix=resample_band(band, latent_frames))
