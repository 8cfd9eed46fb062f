"""Flow ``analyze-attention``: temporal attention of real and generated videos per UNet level or DiT block (paper §3.3)."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger

from tasks.analysis import (
    analysis_settings,
    gaussian_sigmas,
    generated_attention,
    real_attention,
    write_analysis_plots,
    write_attention,
)
from tasks.jobs import ModelSettings
from tasks.outputs import publish_plots, write_directory_manifest
from vstar_data.runs import new_run_id
from vstar_data.storage import join
from vstar_model.video.reader import list_clips


@flow(name="analyze-attention")
def analyze_attention(
    output_root: str = "./outputs",
    prompt: str = "a landscape transitioning from winter to spring",
    states: list[str] | None = None,
    frames: list[int] | None = None,
    conditions: list[str] | None = None,
    real_videos: str | None = None,
    real_timestep: int = 500,
    seed: int = 0,
    model: ModelSettings = ModelSettings(),
) -> str:
    """Record temporal attention for every (length, condition) and for real clips; write
    ``<output_root>/analyses/<id>/attention.parquet``, videos, plots and a manifest.

    Conditions: ``off`` (the backbone as is), TAR presets for σ sweeps (``64D1``, ``64D4``…; for Wan
    DiT presets ``b0-9D1s0.5``…), and for UNets map replacements ``identity@<levels>`` /
    ``ones@<levels>`` (Fig. 5). Lengths and conditions default per backbone
    (:func:`tasks.analysis.analysis_settings`). Returns the directory.
    """
    logger = get_run_logger()
    # A bad length or condition stops the flow before any work.
    frames, conditions = analysis_settings(frames, conditions, model)
    clips = list_clips(real_videos) if real_videos else []
    analysis_id = new_run_id()
    directory = join(output_root, "analyses", analysis_id)
    created_at = datetime.now(timezone.utc)
    rows, grids = [], {}
    for num_frames in frames:
        for clip in clips:
            clip_rows, maps = real_attention(analysis_id, model, clip, prompt, num_frames, real_timestep, seed)
            rows += clip_rows
            grids.setdefault(num_frames, {})[f"real: {clip.rsplit('/', 1)[-1]}"] = maps
        for condition in conditions:
            video_rows, maps = generated_attention(directory, analysis_id, model, states or [prompt], condition,
                                                   num_frames, seed)
            rows += video_rows
            grids.setdefault(num_frames, {})[f"generated: {condition}"] = maps
    write_attention(directory, analysis_id, rows)
    plots = write_analysis_plots(directory, grids, gaussian_sigmas(conditions, model), rows)
    publish_plots(f"vstar attention analysis {analysis_id}", directory, plots)
    parameters = {"prompt": prompt, "states": states, "frames": frames, "conditions": conditions,
                  "real_videos": real_videos, "real_timestep": real_timestep, "seed": seed,
                  "model": model.model_dump(mode="json")}
    write_directory_manifest(directory, analysis_id, parameters, {"attention": len(rows)}, created_at)
    logger.info("attention analysis %s: %d maps → %s", analysis_id, len(rows), directory)
    return directory
