"""Attention-map grids, ΔA panels and band-score bars, rendered to PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vstar_model.analysis.temporal_attention import band_score
from vstar_model.analysis.plots import (
    attention_grid_figure,
    attention_grid_png,
    band_matrices_figure,
    band_matrices_png,
    band_score_figure,
    band_score_png,
)
from vstar_model.tar.bands import gaussian_band


def _banded(num_frames: int, sigma: float) -> torch.Tensor:
    band = gaussian_band(num_frames, sigma)
    return band / band.sum(dim=-1, keepdim=True)


def _image(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _panels(figure):
    return [ax for ax in figure.axes if ax.images]


def test_grid_has_a_row_per_source_and_a_column_per_level():
    grid = {
        "real, 16 frames": {64: _banded(16, 1.0), 8: _banded(16, 4.0)},
        "generated, 48 frames": {32: np.full((48, 48), 1 / 48), 64: _banded(48, 8.0)},
    }
    figure = attention_grid_figure(grid, title="Fig. 4")
    panels = _panels(figure)
    assert len(panels) == 4
    titles = [ax.get_title() for ax in figure.axes if ax.get_title().startswith("level")]
    # Row-major: levels 64, 32, 8 in each row; the real row has no level-32 map.
    assert [t.split(":")[0] for t in titles] == ["level 64", "level 32", "level 8"] * 2
    assert titles[1] == "level 32: none"
    expected = float(band_score(_banded(16, 1.0)))
    assert titles[0] == f"level 64: band {expected:.2f}"
    assert titles[4] == "level 32: band 0.00"  # uniform attention
    assert len(figure.axes) == 6 + 2  # one colour bar per row
    real_clim = panels[0].images[0].get_clim()
    assert panels[1].images[0].get_clim() == real_clim  # a row shares its scale
    real = torch.stack([_banded(16, 1.0), _banded(16, 4.0)])
    assert real_clim == pytest.approx((float(real.min()), float(real.max())))


def test_grid_rejects_bad_maps():
    with pytest.raises(ValueError, match="'x', level 64 must be square"):
        attention_grid_figure({"x": {64: np.ones((2, 3))}})
    with pytest.raises(ValueError, match="no attention maps"):
        attention_grid_figure({})


def test_band_matrices_show_each_sigma_on_one_scale():
    figure = band_matrices_figure([0.5, 1, 4], num_frames=12, title="Fig. S.10")
    panels = _panels(figure)
    assert [ax.get_title() for ax in panels] == ["σ = 0.5", "σ = 1", "σ = 4"]
    assert all(ax.images[0].get_clim() == (0.0, 1.0) for ax in panels)
    np.testing.assert_allclose(panels[1].images[0].get_array(), gaussian_band(12, 1.0).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        band_matrices_figure([0])


def test_band_score_bars_per_level_and_label():
    scores = {"real": {64: 0.5, 32: 0.3}, "baseline": {64: 0.1, 32: 0.05, 8: 0.0}, "64D1": {64: 0.4}}
    ax = band_score_figure(scores).axes[0]
    heights = sorted(round(patch.get_height(), 6) for patch in ax.patches)
    assert heights == sorted(v for per_level in scores.values() for v in per_level.values())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "32", "8"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(scores)


def test_pngs_render():
    grid = {"real": {64: _banded(8, 1.0), 32: _banded(8, 2.0)}, "generated": {64: _banded(8, 6.0)}}
    image = _image(attention_grid_png(grid))
    assert image.width > 300 and image.height > 200
    assert _image(band_matrices_png([1, 2])).width > 200
    assert _image(band_score_png({"real": {64: 0.4}})).width > 100
