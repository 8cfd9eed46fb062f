"""Figures of the temporal attention analysis (paper Fig. 4, 10 and S.10), rendered to PNG bytes.

Built like :mod:`vstar_model.evaluation.plots`: ``matplotlib.figure.Figure`` without pyplot, so they are safe
in worker threads; each ``*_figure`` returns the Figure, each ``*_png`` its PNG bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from matplotlib.figure import Figure

from vstar_model.analysis.temporal_attention import DEFAULT_BAND_WIDTH, band_score
from vstar_model.tar.bands import check_sigma, gaussian_band
from vstar_model.evaluation.plots import HEATMAP_CMAP, figure_to_png, shared_color_limits

PANEL_INCHES = 2.2
# Columns are UNet levels (highest resolution first) or DiT blocks (first block first).
Unit = Literal["level", "block"]


def _as_array(attention: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(attention, torch.Tensor):
        attention = attention.detach().float().cpu().numpy()
    return np.asarray(attention, dtype=np.float64)


def attention_grid_figure(
    grid: Mapping[str, Mapping[int, torch.Tensor | np.ndarray]],
    *,
    width: int = DEFAULT_BAND_WIDTH,
    title: str | None = None,
    unit: Unit = "level",
) -> Figure:
    """Temporal attention maps: one row per source, one column per level (paper Fig. 4 and 10).

    ``grid`` is row label (e.g. ``"real, 16 frames"``, ``"generated, 48 frames"``) → level →
    map ``[N, N]``, e.g. from :func:`vstar_model.analysis.temporal_attention.level_maps`. Columns are the levels of
    all rows, highest resolution first; a row without a level leaves its panel empty. Each panel
    shows its :func:`~vstar_model.analysis.temporal_attention.band_score` (±``width`` frames). A row shares one
    colour scale: attention spreads over N frames, so maps of different lengths are not put on
    one scale. With ``unit="block"`` the columns are DiT blocks (frame-to-frame maps of
    :mod:`vstar_model.analysis.dit`), first block first.
    """
    if not grid:
        raise ValueError("no attention maps to plot")
    levels = sorted(set().union(*(set(row) for row in grid.values())), reverse=unit == "level")
    if not levels:
        raise ValueError(f"the attention grid rows hold no {unit}s")
    arrays = {label: {level: _as_array(m) for level, m in row.items()} for label, row in grid.items()}
    for label, row in arrays.items():
        for level, attention in row.items():
            if attention.ndim != 2 or attention.shape[0] != attention.shape[1]:
                raise ValueError(
                    f"map {label!r}, {unit} {level} must be square [N, N], got shape {attention.shape}"
                )
    figure = Figure(
        figsize=(PANEL_INCHES * len(levels) + 1.2, PANEL_INCHES * len(grid) + 0.4), layout="constrained"
    )
    axes = figure.subplots(len(grid), len(levels), squeeze=False)
    for row_axes, (label, row) in zip(axes, arrays.items()):
        limits = shared_color_limits(row) if row else (0.0, 1.0)
        image = None
        for ax, level in zip(row_axes, levels):
            ax.set_xticks([])
            ax.set_yticks([])
            if level not in row:
                ax.set_title(f"{unit} {level}: none", fontsize=9)
                ax.set_frame_on(False)
                continue
            attention = row[level]
            image = ax.imshow(
                attention, cmap=HEATMAP_CMAP, vmin=limits[0], vmax=limits[1], interpolation="nearest"
            )
            score = round(float(band_score(torch.from_numpy(attention), width=width)), 2) + 0.0  # no "-0.00"
            ax.set_title(f"{unit} {level}: band {score:.2f}", fontsize=9)
        row_axes[0].set_ylabel(f"{label}\nquery frame", fontsize=9)
        if image is not None:
            figure.colorbar(image, ax=list(row_axes), shrink=0.85, label="attention")
    if title:
        figure.suptitle(title)
    return figure


def band_matrices_figure(
    sigmas: Sequence[float], num_frames: int = 16, *, title: str | None = None
) -> Figure:
    """The TAR regularisation matrix ΔA for several σ on one colour scale (paper Fig. S.10)."""
    if not sigmas:
        raise ValueError("no sigmas to plot")
    sigmas = [check_sigma(sigma) for sigma in sigmas]
    figure = Figure(figsize=(PANEL_INCHES * len(sigmas) + 1.0, PANEL_INCHES + 0.6), layout="constrained")
    axes = figure.subplots(1, len(sigmas), squeeze=False)[0]
    for ax, sigma in zip(axes, sigmas):
        band = gaussian_band(num_frames, sigma, dtype=torch.float64).numpy()
        image = ax.imshow(band, cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"σ = {sigma:g}")
        ax.set_xlabel("frame j")
    axes[0].set_ylabel("frame i")
    figure.colorbar(image, ax=list(axes), shrink=0.85, label="ΔA")
    if title:
        figure.suptitle(title)
    return figure


def band_score_figure(
    scores: Mapping[str, Mapping[int, float]], *, title: str | None = None, unit: Unit = "level"
) -> Figure:
    """Band score per level (or DiT block), one bar per source or setting (e.g. real video, σ sweep).

    ``scores`` is label → level → score. Comparing a backbone's generated maps with real ones per
    level shows where its attention lacks structure, i.e. where TAR should go.
    """
    if not scores:
        raise ValueError("no band scores to plot")
    levels = sorted(set().union(*(set(per_level) for per_level in scores.values())), reverse=unit == "level")
    figure = Figure(figsize=(2.0 + 0.4 * len(levels) * len(scores), 3.6), layout="constrained")
    ax = figure.subplots()
    bar_width = 0.8 / len(scores)
    for index, (label, per_level) in enumerate(scores.items()):
        shown = [level for level in levels if level in per_level]
        positions = [levels.index(level) + (index - (len(scores) - 1) / 2) * bar_width for level in shown]
        ax.bar(positions, [per_level[level] for level in shown], width=bar_width, label=label)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(levels)), [str(level) for level in levels])
    ax.set_xlabel(unit)
    ax.set_ylabel("band score")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return figure


def attention_grid_png(
    grid: Mapping[str, Mapping[int, torch.Tensor | np.ndarray]],
    *,
    width: int = DEFAULT_BAND_WIDTH,
    title: str | None = None,
    unit: Unit = "level",
) -> bytes:
    return figure_to_png(attention_grid_figure(grid, width=width, title=title, unit=unit))


def band_matrices_png(sigmas: Sequence[float], num_frames: int = 16, *, title: str | None = None) -> bytes:
    return figure_to_png(band_matrices_figure(sigmas, num_frames, title=title))


def band_score_png(
    scores: Mapping[str, Mapping[int, float]], *, title: str | None = None, unit: Unit = "level"
) -> bytes:
    return figure_to_png(band_score_figure(scores, title=title, unit=unit))
