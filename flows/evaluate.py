"""Evaluation flows: ``build-reference`` (real clips → a versioned reference distribution) and
``evaluate-run`` (an existing run's videos scored again, optionally against a reference)."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from tasks.evaluate import EvaluationSettings, evaluate_sample, read_run_samples
from tasks.outputs import publish_plots, write_directory_manifest, write_plots, write_rows
from tasks.reference import (
    check_reference,
    compare_with_reference,
    required_metric,
    reference_rows,
    score_clip,
    write_reference,
)
from vstar_data.runs import new_run_id
from vstar_data.storage import join
from vstar_model.video.reader import list_clips


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
    metric = required_metric(evaluation, "a reference")
    reference_id = new_run_id()
    directory = join(output_root, "references", name, reference_id)
    created_at = datetime.now(timezone.utc)
    scored = [future.result() for future in [score_clip.submit(c, num_frames, evaluation) for c in clips]]
    rows = reference_rows(reference_id, clips, scored, num_frames)
    write_reference(directory, reference_id, quote(rows))
    parameters = {"videos": videos, "name": name, "num_frames": num_frames, "metric": metric,
                  "evaluation": evaluation.model_dump(mode="json")}
    write_directory_manifest(directory, reference_id, parameters, {"reference": len(rows), "clips": len(clips)}, created_at)
    logger.info("reference %s: %d clips, %s → %s", reference_id, len(clips), metric, directory)
    return directory


@flow(name="evaluate-run")
def evaluate_run(run_dir: str, evaluation: EvaluationSettings = EvaluationSettings()) -> str:
    """Score an existing production run's videos again — another metric, or against a reference —
    into ``<output_root>/evaluations/<id>/`` (metrics.parquet, embeddings.parquet, plots, manifest). The run itself is
    left as it is. Returns the evaluation directory."""
    logger = get_run_logger()
    run_id, output_root, samples = read_run_samples(run_dir)
    metric = required_metric(evaluation, "evaluate-run")
    if evaluation.reference:
        check_reference(evaluation.reference, metric)
    evaluation_id = new_run_id()
    directory = join(output_root, "evaluations", evaluation_id)
    created_at = datetime.now(timezone.utc)
    futures = [evaluate_sample.submit(sample, evaluation, output_root) for sample in samples]
    scored, metrics, embeddings = [], [], []
    for sample, future in zip(samples, futures):
        rows, matrix, embedding = future.result()
        metrics += rows
        embeddings.append(embedding)
        scored.append((sample, matrix))
    if evaluation.reference and scored:
        metrics += compare_with_reference(run_id, quote(scored), evaluation.reference, metric)
    write_rows(join(directory, "metrics.parquet"), "metrics", quote(metrics), run_id)
    write_rows(join(directory, "embeddings.parquet"), "embeddings", quote(embeddings), run_id)
    plots = write_plots(output_root, join(directory, "plots"), quote(scored), metric, evaluation.reference)
    publish_plots(f"vstar evaluation {evaluation_id} of run {run_id}", directory, plots)
    parameters = {"run_dir": run_dir, "evaluation": evaluation.model_dump(mode="json")}
    write_directory_manifest(directory, evaluation_id, parameters, {"metrics": len(metrics)}, created_at)
    logger.info("evaluation %s of run %s: %d videos with %s → %s", evaluation_id, run_id, len(samples), metric,
                directory)
    return directory
