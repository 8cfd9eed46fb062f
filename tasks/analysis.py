"""Temporal attention of generated and real videos, per UNet level or DiT block, layer and step (paper §3.3)."""

from __future__ import annotations

import math

from prefect import get_run_logger, task

from tasks.jobs import ModelSettings
from tasks.models import cached_backbone
from vstar_model.backbones.presets import get_preset
from vstar_data.schemas import ATTENTION_SCHEMA, write_table
from vstar_data.storage import join, write_bytes_atomic


UNET_CONDITIONS = ["off", "64D1", "identity@64", "ones@64"]
UNET_FRAMES = [16, 48]


def analysis_settings(
    frames: list[int] | None, conditions: list[str] | None, model: ModelSettings
) -> tuple[list[int], list[str]]:
    """The video lengths and conditions to analyse, checked for ``model``'s backbone.

    Defaults: 16 and 48 frames with ``off``, ``64D1``, ``identity@64``, ``ones@64`` for UNets; for a
    Wan model its default length and about twice it (81 → 81, 161: N = 4k + 1) with ``off`` and
    its default DiT preset.

    Raises:
        ValueError: naming the first length or condition the backbone cannot take.
    """
    preset = get_preset(model.preset)
    wan = preset.family == "wan"
    if not frames:
        frames = [preset.num_frames, 2 * preset.num_frames - 1] if wan else list(UNET_FRAMES)
    if not conditions:
        conditions = ["off", preset.default_tar] if wan else list(UNET_CONDITIONS)
    for num_frames in frames:
        preset.check_frames(num_frames)
    for condition in conditions:
        condition_tar(condition, preset.family)
    return list(frames), list(conditions)


def condition_tar(condition: str, family: str = "unet3d"):
    """An analysis condition → TAR setting: ``off``, a TAR preset (``64D1``, ``64D4_32D8``), or a
    map replacement ``identity@64`` / ``ones@64_32`` at the given levels (paper Fig. 5). For the
    ``wan`` family: ``off`` or a DiT preset (``b0-9D1s0.5``); there are no map replacements."""
    from vstar_model.tar.unet import TARConfig, parse_tar

    if family == "wan":
        from vstar_model.tar.dit import parse_dit_tar

        if "@" in condition:
            raise ValueError(f"condition {condition!r}: map replacements are for UNet levels; a Wan model "
                             "takes 'off' or DiT presets such as 'b0-9D1s0.5'")
        try:
            return parse_dit_tar(condition)
        except ValueError as error:
            raise ValueError(f"condition {condition!r} for a Wan model: {error}") from None
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


def _rows(recorder_maps, layers, *, family: str, **context) -> list[dict]:
    """Table rows of the maps: per UNet layer with its level, or per DiT block (``layers`` maps
    each layer to its level or block)."""
    from vstar_model.analysis.dit import dit_attention_rows
    from vstar_model.analysis.temporal_attention import attention_rows

    make_rows = dit_attention_rows if family == "wan" else attention_rows
    rows = make_rows(recorder_maps, layers, **context)
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
    the table rows (every layer and step) and the per-level (UNet) or per-block (DiT) maps
    averaged over steps."""
    from vstar_model.video.writer import encode_mp4

    backbone = cached_backbone(model.preset, path=model.path, device=model.device, dtype=model.dtype)
    preset = backbone.preset
    settings = model.for_preset(preset)
    fps = settings.pop("fps")
    common = dict(num_frames=num_frames, **settings, negative_prompt=model.negative_prompt_for(preset))
    tar = condition_tar(condition, preset.family)
    if preset.family == "wan":
        from vstar_model.analysis.dit import block_maps, generated_video_dit_attention
        from vstar_model.sampling.dit import FlowMatchingConfig

        flow_shift = preset.flow_shift if model.flow_shift is None else model.flow_shift
        config = FlowMatchingConfig(**common, flow_shift=flow_shift)
        video, recorder = generated_video_dit_attention(backbone, states, config, seed=seed, tar=tar)
        layers, by_unit = recorder.blocks, block_maps
    else:
        from vstar_model.analysis.temporal_attention import generated_video_attention, level_maps
        from vstar_model.sampling.unet import SamplingConfig

        video, recorder = generated_video_attention(
            backbone, states, SamplingConfig(**common, eta=model.eta), seed=seed, tar=tar
        )
        layers, by_unit = recorder.levels, level_maps
    file_name = condition.replace("@", "_at_")  # '@' reads as user@host in some URL schemes
    write_bytes_atomic(join(analysis_dir, "videos", f"{file_name}__{num_frames}f.mp4"),
                       encode_mp4(video.frames, fps=fps))
    rows = []
    for step in recorder.steps:
        rows += _rows(recorder.maps_at(step), layers, family=preset.family, run_id=run_id, source="generated",
                      condition=condition, model_preset=preset.name, step=step,
                      timestep=round(recorder.timesteps[step]))
    maps = by_unit(recorder.layer_maps(), layers)
    get_run_logger().info("%s, %d frames: %d maps recorded", condition, num_frames, len(recorder.maps))
    return rows, {unit: m.tolist() for unit, m in maps.items()}


@task(task_run_name="attention-real-{num_frames}f", retries=1, retry_delay_seconds=2)
def real_attention(
    run_id: str, model: ModelSettings, clip: str, prompt: str, num_frames: int, timestep: int, seed: int
) -> tuple[list[dict], dict[int, list]]:
    """Temporal attention of a real clip: VAE-encode, noise to ``timestep``, one denoiser call."""
    from vstar_model.analysis.temporal_attention import resize_frames
    from vstar_model.video.reader import read_video_frames

    backbone = cached_backbone(model.preset, path=model.path, device=model.device, dtype=model.dtype)
    preset = backbone.preset
    settings = model.for_preset(preset)
    frames = resize_frames(read_video_frames(clip, num_frames), settings["height"], settings["width"])
    if preset.family == "wan":
        from vstar_model.analysis.dit import block_maps, real_video_dit_attention
        from vstar_model.tar.dit import dit_self_attention_blocks

        maps = real_video_dit_attention(backbone, frames, prompt=prompt, timestep=timestep, seed=seed)
        layers, by_unit = dit_self_attention_blocks(backbone.transformer), block_maps
    else:
        from vstar_model.analysis.temporal_attention import level_maps, real_video_attention
        from vstar_model.tar.unet import temporal_attention_levels

        maps = real_video_attention(backbone, frames, prompt=prompt, timestep=timestep, seed=seed)
        layers, by_unit = temporal_attention_levels(backbone.unet), level_maps
    rows = _rows(maps, layers, family=preset.family, run_id=run_id, source="real", condition="real", clip=clip,
                 model_preset=preset.name, step=None, timestep=timestep)
    return rows, {unit: m.tolist() for unit, m in by_unit(maps, layers).items()}


@task(task_run_name="write-attention", retries=2, retry_delay_seconds=[1, 5])
def write_attention(analysis_dir: str, run_id: str, rows: list[dict]) -> str:
    url = join(analysis_dir, "attention.parquet")
    write_table(url, rows, ATTENTION_SCHEMA, run_id=run_id)
    return url


def render_analysis_plots(grids: dict[int, dict[str, dict[int, list]]], sigmas: list[float],
                          scores: dict[str, dict[int, float]], *, unit: str = "level") -> dict[str, bytes]:
    """attention_<N>f.png per length (rows = real / conditions, columns = UNet levels or DiT
    blocks), ΔA for the σ used (Fig. S.10) and the band score per level (block) and condition."""
    import torch

    from vstar_model.analysis.plots import attention_grid_png, band_matrices_png, band_score_png

    what = "temporal attention" if unit == "level" else "frame-to-frame attention"
    images = {
        f"attention_{n}f.png": attention_grid_png(
            {label: {key: torch.tensor(m) for key, m in maps.items()} for label, maps in rows.items()},
            title=f"{what}, {n} frames", unit=unit,
        )
        for n, rows in grids.items()
    }
    images["band_scores.png"] = band_score_png(scores, title=f"band score per {unit} (mean over layers and steps)",
                                               unit=unit)
    images["delta_a.png"] = band_matrices_png(sorted(set(sigmas)) or [1.0, 2.0, 4.0, 8.0], num_frames=16,
                                              title="ΔA for several σ")
    return images


@task(task_run_name="write-analysis-plots", retries=2, retry_delay_seconds=[1, 5])
def write_analysis_plots(analysis_dir: str, grids: dict, sigmas: list[float], rows: list[dict]) -> list[str]:
    unit = "block" if rows and rows[0].get("block") is not None else "level"
    scores: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        label = f"{row['condition']}, {row['num_frames']}f"
        scores.setdefault(label, {}).setdefault(row[unit], []).append(row["band_score"])
    means = {label: {key: sum(v) / len(v) for key, v in per_unit.items()} for label, per_unit in scores.items()}
    written = []
    for name, data in render_analysis_plots(grids, sigmas, means, unit=unit).items():
        written.append(join(analysis_dir, "plots", name))
        write_bytes_atomic(written[-1], data)
    return written


def gaussian_sigmas(conditions: list[str], model: ModelSettings) -> list[float]:
    """The σ of every Gaussian TAR condition (for the ΔA figure)."""
    family = get_preset(model.preset).family
    sigmas = []
    for condition in conditions:
        config = condition_tar(condition, family)
        if config is None:
            continue
        if family == "wan":
            sigmas += [part.sigma for part in config.ranges]
        elif config.replace is None and config.mode == "gaussian":
            sigmas += list(config.sigmas.values())
    return sigmas
