"""Temporal attention of generated and real videos, per level, layer and step (paper §3.3)."""

from __future__ import annotations

import math

from prefect import get_run_logger, task

from tasks.jobs import ModelSettings
from tasks.models import cached_backbone
from vstar_data.schemas import ATTENTION_SCHEMA, write_table
from vstar_data.storage import join, write_bytes_atomic


def condition_tar(condition: str):
    """An analysis condition → TAR setting: ``off``, a TAR preset (``64D1``, ``64D4_32D8``), or a
    map replacement ``identity@64`` / ``ones@64_32`` at the given levels (paper Fig. 5)."""
    from vstar_model.tar.unet import TARConfig, parse_tar

    if "@" not in condition:
        return parse_tar(condition)
    mode, _, levels = condition.partition("@")
    if mode not in ("identity", "ones"):
        raise ValueError(f"replacement {mode!r} in condition {condition!r}; use identity@<levels> or ones@<levels>")
    try:
        sigmas = {int(level): 1.0 for level in levels.split("_")}
    except ValueError:
        raise ValueError(f"levels {levels!r} in condition {condition!r} must be numbers joined by '_'") from None
    return TARConfig(sigmas=sigmas, replace=mode, active_steps=1.0)


def _rows(recorder_maps, levels, **context) -> list[dict]:
    from vstar_model.analysis.temporal_attention import attention_rows

    rows = attention_rows(recorder_maps, levels, **context)
    for row in rows:  # a flat map has no best-fitting band: store null, not NaN
        for name in ("gaussian_sigma", "gaussian_correlation"):
            if row[name] is not None and math.isnan(row[name]):
                row[name] = None
    return rows


@task(task_run_name="attention-{condition}-{num_frames}f", retries=1, retry_delay_seconds=2)
def generated_attention(
    analysis_dir: str, run_id: str, model: ModelSettings, states: list[str], condition: str, num_frames: int, seed: int
) -> tuple[list[dict], dict[int, list]]:
    """Generate one video under ``condition`` while recording its temporal attention; returns
    the table rows (every layer and step) and the per-level maps averaged over steps."""
    from vstar_model.analysis.temporal_attention import generated_video_attention, level_maps
    from vstar_model.sampling.unet import SamplingConfig
    from vstar_model.video.writer import encode_mp4

    backbone = cached_backbone(model.preset, path=model.path, device=model.device, dtype=model.dtype)
    preset = backbone.preset
    config = SamplingConfig(
        num_frames=num_frames, height=model.height or preset.height, width=model.width or preset.width,
        num_inference_steps=model.steps or preset.num_inference_steps,
        guidance_scale=model.guidance_scale or preset.guidance_scale, eta=model.eta,
        negative_prompt=model.negative_prompt_for(preset),
    )
    video, recorder = generated_video_attention(backbone, states, config, seed=seed, tar=condition_tar(condition))
    file_name = condition.replace("@", "_at_")  # '@' reads as user@host in some URL schemes
    write_bytes_atomic(join(analysis_dir, "videos", f"{file_name}__{num_frames}f.mp4"),
                       encode_mp4(video.frames, fps=model.fps or preset.fps))
    rows = []
    for step in recorder.steps:
        rows += _rows(recorder.maps_at(step), recorder.levels, run_id=run_id, source="generated",
                      condition=condition, model_preset=preset.name, step=step,
                      timestep=int(recorder.timesteps[step]))
    maps = level_maps(recorder.layer_maps(), recorder.levels)
    get_run_logger().info("%s, %d frames: %d maps recorded", condition, num_frames, len(recorder.maps))
    return rows, {level: m.tolist() for level, m in maps.items()}


@task(task_run_name="attention-real-{num_frames}f", retries=1, retry_delay_seconds=2)
def real_attention(
    run_id: str, model: ModelSettings, clip: str, prompt: str, num_frames: int, timestep: int, seed: int
) -> tuple[list[dict], dict[int, list]]:
    """Temporal attention of a real clip: VAE-encode, noise to ``timestep``, one denoiser call."""
    from vstar_model.analysis.temporal_attention import level_maps, real_video_attention, resize_frames
    from vstar_model.tar.unet import temporal_attention_levels
    from vstar_model.video.reader import read_video_frames

    backbone = cached_backbone(model.preset, path=model.path, device=model.device, dtype=model.dtype)
    preset = backbone.preset
    frames = resize_frames(read_video_frames(clip, num_frames), model.height or preset.height,
                           model.width or preset.width)
    maps = real_video_attention(backbone, frames, prompt=prompt, timestep=timestep, seed=seed)
    levels = temporal_attention_levels(backbone.unet)
    rows = _rows(maps, levels, run_id=run_id, source="real", condition="real", clip=clip,
                 model_preset=preset.name, step=None, timestep=timestep)
    return rows, {level: m.tolist() for level, m in level_maps(maps, levels).items()}


@task(task_run_name="write-attention", retries=2, retry_delay_seconds=[1, 5])
def write_attention(analysis_dir: str, run_id: str, rows: list[dict]) -> str:
    url = join(analysis_dir, "attention.parquet")
    write_table(url, rows, ATTENTION_SCHEMA, run_id=run_id)
    return url


def render_analysis_plots(grids: dict[int, dict[str, dict[int, list]]], sigmas: list[float],
                          scores: dict[str, dict[int, float]]) -> dict[str, bytes]:
    """attention_<N>f.png per length (rows = real / conditions, columns = levels), ΔA for the σ
    used (Fig. S.10) and the band score per level and condition."""
    import torch

    from vstar_model.analysis.plots import attention_grid_png, band_matrices_png, band_score_png

    images = {
        f"attention_{n}f.png": attention_grid_png(
            {label: {level: torch.tensor(m) for level, m in maps.items()} for label, maps in rows.items()},
            title=f"temporal attention, {n} frames",
        )
        for n, rows in grids.items()
    }
    images["band_scores.png"] = band_score_png(scores, title="band score per level (mean over layers and steps)")
    images["delta_a.png"] = band_matrices_png(sorted(set(sigmas)) or [1.0, 2.0, 4.0, 8.0], num_frames=16,
                                              title="ΔA for several σ")
    return images


@task(task_run_name="write-analysis-plots", retries=2, retry_delay_seconds=[1, 5])
def write_analysis_plots(analysis_dir: str, grids: dict, sigmas: list[float], rows: list[dict]) -> list[str]:
    scores: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        label = f"{row['condition']}, {row['num_frames']}f"
        scores.setdefault(label, {}).setdefault(row["level"], []).append(row["band_score"])
    means = {label: {lv: sum(v) / len(v) for lv, v in levels.items()} for label, levels in scores.items()}
    written = []
    for name, data in render_analysis_plots(grids, sigmas, means).items():
        written.append(join(analysis_dir, "plots", name))
        write_bytes_atomic(written[-1], data)
    return written


def gaussian_sigmas(conditions: list[str]) -> list[float]:
    """The σ of every Gaussian TAR condition (for the ΔA figure)."""
    sigmas = []
    for condition in conditions:
        config = condition_tar(condition)
        if config is not None and config.replace is None and config.mode == "gaussian":
            sigmas += list(config.sigmas.values())
    return sigmas
