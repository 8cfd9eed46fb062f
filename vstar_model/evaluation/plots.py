"""Figures of the temporal-similarity evaluation (paper Fig. 8 and Fig. S.1), rendered to PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` directly and saved with the Agg renderer: no
pyplot global state, so they are safe in worker threads and headless runs. Each ``*_figure``
function returns the Figure for inspection; :func:`figure_to_png` renders it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

HEATMAP_CMAP = "viridis"


def figure_to_png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def shared_color_limits(matrices: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(min, max) over all matrices: one colour scale, so methods compare at a glance."""
    if not matrices:
        raise ValueError("no matrices to plot")
    values = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in matrices.values()])
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)  # a flat colour scale cannot render


def similarity_heatmap_figure(
    matrices: Mapping[str, np.ndarray],
    limits: tuple[float, float] | None = None,
    title: str | None = None,
    max_panels: int = 12,
    columns: int = 4,
) -> Figure:
    """One heatmap per entry ({panel title: similarity matrix [N, N]}) on one shared colour scale,
    ``columns`` to a row.

    ``limits`` fixes the scale (e.g. the same across several figures); by default it spans all the
    matrices given. Pass per-video matrices or their mean over videos, under any titles. A run of
    hundreds of videos would make a figure no one reads (and minutes of rendering): at most
    ``max_panels`` evenly spread entries are drawn, first and last included, and the title says so.
    """
    for name, matrix in matrices.items():
        if np.ndim(matrix) != 2 or np.shape(matrix)[0] != np.shape(matrix)[1]:
            raise ValueError(f"matrix {name!r} must be square [N, N], got shape {np.shape(matrix)}")
    vmin, vmax = limits if limits is not None else shared_color_limits(matrices)
    shown = evenly_spread(list(matrices), max_panels)
    columns = min(columns, len(shown))
    rows = -(-len(shown) // columns)
    figure = Figure(figsize=(3.2 * columns + 0.8, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, shown):
        image = ax.imshow(np.asarray(matrices[name]), cmap=HEATMAP_CMAP, vmin=vmin, vmax=vmax,
                          interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("frame j")
        ax.set_ylabel("frame i")
    for ax in axes[len(shown):]:
        figure.delaxes(ax)
    figure.colorbar(image, ax=list(axes[:len(shown)]), label="similarity", shrink=0.85)
    if len(shown) < len(matrices):
        title = f"{title or 'similarity'}: {len(shown)} of {len(matrices)} shown"
    if title:
        figure.suptitle(title)
    return figure


def evenly_spread(items: Sequence, most: int) -> list:
    """At most ``most`` of ``items``, evenly spread over them, first and last included, in order."""
    if len(items) <= most:
        return list(items)
    picks = np.linspace(0, len(items) - 1, most).round().astype(int)
    return [items[i] for i in sorted(set(picks))]


def interval_distribution_figure(
    methods: Mapping[str, Mapping[int, np.ndarray]],
    max_intervals: int = 16,
    title: str | None = None,
) -> Figure:
    """Box plots of similarity per interval k, methods side by side ({method: {k: values}}).

    Real, baseline and VSTAR overlaid this way show whether a method's similarity falls with k as
    real videos' does (Fig. S.1). Long videos have many k: at most ``max_intervals`` evenly spread
    ones are drawn, always including the first and last.
    """
    if not methods:
        raise ValueError("no methods to plot")
    intervals = sorted(set().union(*(set(per_k) for per_k in methods.values())))
    if not intervals:
        raise ValueError("the methods have no interval values")
    shown = evenly_spread(intervals, max_intervals)
    figure = Figure(figsize=(min(16.0, 3.0 + 0.3 * len(shown) * len(methods)), 4.0), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / len(methods)
    colors = [f"C{i}" for i in range(len(methods))]
    for index, ((name, per_k), color) in enumerate(zip(methods.items(), colors)):
        ks = [k for k in shown if k in per_k]
        positions = [shown.index(k) + (index - (len(methods) - 1) / 2) * width for k in ks]
        ax.boxplot(
            [np.asarray(per_k[k], dtype=np.float64).ravel() for k in ks],
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            boxprops={"facecolor": color, "alpha": 0.6},
            medianprops={"color": "black"},
            flierprops={"markersize": 2},
            manage_ticks=False,
        )
    ax.set_xticks(range(len(shown)), [str(k) for k in shown])
    ax.set_xlabel("frame interval k")
    ax.set_ylabel("similarity")
    ax.legend(handles=[Patch(facecolor=c, alpha=0.6, label=name) for name, c in zip(methods, colors)])
    if title:
        ax.set_title(title)
    return figure


def similarity_heatmaps_png(
    matrices: Mapping[str, np.ndarray], limits: tuple[float, float] | None = None, title: str | None = None,
    max_panels: int = 12,
) -> bytes:
    return figure_to_png(similarity_heatmap_figure(matrices, limits, title, max_panels))


def interval_distribution_png(
    methods: Mapping[str, Mapping[int, np.ndarray]], max_intervals: int = 16, title: str | None = None
) -> bytes:
    return figure_to_png(interval_distribution_figure(methods, max_intervals, title))
