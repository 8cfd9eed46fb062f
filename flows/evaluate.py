"""Flow ``build-reference``: a folder or bucket of real clips → a versioned reference distribution."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger

from tasks.evaluate import EvaluationSettings
from tasks.outputs import write_directory_manifest
from tasks.reference import reference_metric, reference_rows, score_clip, write_reference
from vstar_data.runs import new_run_id
from vstar_data.storage import join
from vstar_model.video_io import list_clips


@flow(name="build-reference")
def build_reference(
    videos: str,
    output_root: str = "./outputs",
    name: str = "real",
    num_frames: int = 16,
    evaluation: EvaluationSettings = EvaluationSettings(),
) -> str:
    """Score every clip under ``videos`` (mp4, gif, folders of frames) resampled to ``num_frames``;
    write ``<output_root>/references/<name>/<reference_id>/reference.parquet`` and its manifest.
    Returns the reference directory, to pass as ``evaluation.reference`` to produce-dataset."""
    logger = get_run_logger()
    clips = list_clips(videos)
    if not clips:
        raise ValueError(f"no clips (video files or folders of frames) under {videos}")
    metric = reference_metric(evaluation)
    reference_id = new_run_id()
    directory = join(output_root, "references", name, reference_id)
    created_at = datetime.now(timezone.utc)
    scored = [future.result() for future in [score_clip.submit(c, num_frames, evaluation) for c in clips]]
    rows = reference_rows(reference_id, clips, scored, num_frames)
    write_reference(directory, reference_id, rows)
    parameters = {"videos": videos, "name": name, "num_frames": num_frames, "metric": metric,
                  "evaluation": evaluation.model_dump(mode="json")}
    write_directory_manifest(directory, reference_id, parameters, {"reference": len(rows), "clips": len(clips)}, created_at)
    logger.info("reference %s: %d clips, %s → %s", reference_id, len(clips), metric, directory)
    return directory
