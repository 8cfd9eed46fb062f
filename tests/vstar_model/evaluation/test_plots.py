"""Similarity heatmaps (shared colour scale) and interval-distribution plots, rendered to PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.patches import PathPatch
from PIL import Image

from vstar_model.evaluation.similarity import interval_similarities
from vstar_model.evaluation.plots import (
    interval_distribution_figure,
    interval_distribution_png,
    shared_color_limits,
    similarity_heatmap_figure,
    similarity_heatmaps_png,
)


def decaying_matrix(num_frames: int, rate: float) -> np.ndarray:
    distance = np.abs(np.subtract.outer(np.arange(num_frames), np.arange(num_frames)))
    return np.exp(-rate * distance)


def assert_png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_heatmaps_share_one_colour_scale_across_methods():
    matrices = {"real": decaying_matrix(8, 0.3), "baseline": decaying_matrix(8, 0.01), "vstar": decaying_matrix(8, 0.2)}
    figure = similarity_heatmap_figure(matrices, title="Fig. 8")
    images = [ax.images[0] for ax in figure.axes if ax.images]
    assert [ax.get_title() for ax in figure.axes if ax.images] == list(matrices)
    expected = (decaying_matrix(8, 0.3).min(), 1.0)
    assert all(image.get_clim() == pytest.approx(expected) for image in images)
    assert len(figure.axes) == len(matrices) + 1  # one colour bar for all panels


def test_heatmap_limits_can_be_fixed_and_tensors_are_accepted():
    figure = similarity_heatmap_figure({"mean": torch.eye(4, dtype=torch.float64)}, limits=(-1.0, 1.0))
    assert figure.axes[0].images[0].get_clim() == (-1.0, 1.0)
    assert shared_color_limits({"flat": np.ones((3, 3))}) == (0.5, 1.5)  # a flat scale cannot render
    with pytest.raises(ValueError, match="'bad' must be square"):
        similarity_heatmap_figure({"bad": np.ones((2, 3))})


def test_a_run_of_many_videos_draws_at_most_twelve_evenly_spread_panels_in_rows_of_four():
    matrices = {f"v{i}": decaying_matrix(4, 0.1 * (i + 1)) for i in range(30)}
    figure = similarity_heatmap_figure(matrices, title="inter-frame similarity (pixel_cosine)")
    panels = [ax for ax in figure.axes if ax.images]
    titles = [ax.get_title() for ax in panels]
    assert len(titles) == 12 and titles[0] == "v0" and titles[-1] == "v29" and len(set(titles)) == 12
    assert titles == sorted(titles, key=lambda t: int(t[1:]))
    assert {ax.get_subplotspec().get_geometry()[:2] for ax in panels} == {(3, 4)}
    assert figure.get_suptitle() == "inter-frame similarity (pixel_cosine): 12 of 30 shown"
    assert panels[0].images[0].get_clim() == pytest.approx(shared_color_limits(matrices))  # the scale of all
    assert len(figure.axes) == 12 + 1
    few = similarity_heatmap_figure({name: matrices[name] for name in ("v0", "v1", "v2")}, title="t")
    assert few.get_suptitle() == "t" and {ax.get_subplotspec().get_geometry()[:2] for ax in few.axes if ax.images} == {(1, 3)}


def test_heatmap_png_renders():
    image = assert_png(similarity_heatmaps_png({"a": decaying_matrix(16, 0.1), "b": decaying_matrix(16, 0.5)}))
    assert image.width > image.height > 100


def test_interval_plot_draws_a_box_per_method_and_interval():
    methods = {
        "real": interval_similarities(torch.from_numpy(decaying_matrix(6, 0.3))),
        "baseline": interval_similarities(torch.from_numpy(decaying_matrix(6, 0.02))),
        "vstar": interval_similarities(torch.from_numpy(decaying_matrix(5, 0.2))),
    }
    figure = interval_distribution_figure(methods)
    ax = figure.axes[0]
    boxes = [patch for patch in ax.patches if isinstance(patch, PathPatch)]
    assert len(boxes) == 5 + 5 + 4  # vstar's shorter video has no k = 5
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4", "5"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(methods)


def test_interval_plot_thins_long_videos_keeping_first_and_last_interval():
    methods = {"real": interval_similarities(torch.from_numpy(decaying_matrix(64, 0.05)))}
    ax = interval_distribution_figure(methods, max_intervals=8).axes[0]
    labels = [int(t.get_text()) for t in ax.get_xticklabels()]
    assert len(labels) == 8 and labels[0] == 1 and labels[-1] == 63
    assert labels == sorted(labels)
    assert_png(interval_distribution_png(methods, max_intervals=8, title="Fig. S.1"))


def test_interval_plot_needs_data():
    with pytest.raises(ValueError, match="no methods"):
        interval_distribution_figure({})
    with pytest.raises(ValueError, match="no interval values"):
        interval_distribution_figure({"real": {}})
