"""Score generated videos: inter-frame similarity matrices, interval distributions, plots."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict, field_validator

from tasks.models import cached_embedder
from vstar_data.runs import CachePaths, RunPaths
from vstar_data.storage import exists, read_bytes, storage_options_for, write_bytes_atomic
from vstar_data.uris import absolute_url, resolve_uri


class EvaluationSettings(BaseModel):
    """Which similarity metric scores the videos.

    ``metric`` is ``dreamsim_<type>`` (default ``dreamsim_ensemble``), ``pixel_cosine`` or ``none``.
    With DreamSim weights missing the run stops before any work, unless ``fallback`` names a metric
    to use instead; every metrics row records the metric that really produced it.
    """

    model_config = ConfigDict(extra="forbid")

    metric: str = "dreamsim_ensemble"
    fallback: str | None = None
    cache_dir: str | None = None
    device: str | None = None
    reference: str | None = None  # a build-reference output to compare each variant with

    @field_validator("reference")
    @classmethod
    def _absolute_reference(cls, reference: str | None) -> str | None:
        # Recorded in metrics.parquet and the manifest: a reader elsewhere must find it.
        return absolute_url(reference) if reference else reference


def settings_embedder(settings: EvaluationSettings):
    """This process's embedder for ``settings`` (loaded once)."""
    return cached_embedder(
        settings.metric, fallback=settings.fallback, cache_dir=settings.cache_dir, device=settings.device
    )


def check_evaluation(settings: EvaluationSettings) -> str | None:
    """Build the embedder once up front (fails fast on missing weights); the metric it measures.

    Called by flows: a fallback metric standing in for DreamSim is also said in the flow run's
    logs, where the Prefect UI shows it. Missing weights raise
    :class:`~vstar_model.evaluation.dreamsim_weights.DreamSimWeightsMissing` naming both the CLI
    flags and the deployment parameters that fix it.
    """
    from vstar_model.evaluation.dreamsim_weights import DreamSimWeightsMissing

    if settings.metric == "none":
        return None
    try:
        metric = settings_embedder(settings).metric
    except DreamSimWeightsMissing as error:
        raise DreamSimWeightsMissing(
            f"{error}\nPoint to the weights with --dreamsim-cache (deployment parameter evaluation.cache_dir), "
            "or score without them: --fallback-metric pixel_cosine (evaluation.fallback) or --metric none "
            "(evaluation.metric)"
        ) from None
    if metric != settings.metric:
        get_run_logger().warning("%s weights are missing: videos are scored with the fallback metric %r, "
                                 "recorded under that name", settings.metric, metric)
    return metric


@task(task_run_name="read-run-samples", retries=2, retry_delay_seconds=[1, 5])
def read_run_samples(run_dir: str) -> tuple[str, str, list[dict]]:
    """(run id, output root, its ok samples rows) of an existing run directory."""
    from vstar_data.schemas import read_table, table_run_id
    from vstar_data.storage import join

    table = read_table(join(run_dir, "samples.parquet"))
    run_id = table_run_id(table)
    output_root, separator, _ = run_dir.rstrip("/").rpartition("/runs/")
    if not separator or run_id is None:
        raise ValueError(f"{run_dir} is not a run directory (<output_root>/runs/<run_id>/ with samples.parquet)")
    return run_id, output_root, [row for row in table.to_pylist() if row["status"] == "ok"]


def score_video(
    video_uri: str, settings: EvaluationSettings, num_frames: int | None = None
) -> tuple[str, "torch.Tensor"]:  # noqa: F821
    """(metric name, N×N similarity matrix) of a video file or frame folder, all its frames or
    ``num_frames`` spread evenly."""
    from vstar_model.evaluation.similarity import similarity_matrix
    from vstar_model.video.reader import read_video_frames

    embedder = settings_embedder(settings)
    frames = read_video_frames(video_uri, num_frames, storage_options=storage_options_for(video_uri))
    return embedder.metric, similarity_matrix(embedder.embed(frames))


def metric_rows(sample: dict, metric: str, matrix) -> list[dict]:
    """metrics.parquet rows of one video: per-k summaries, then coherence and dynamics slope (k = −1)."""
    from vstar_model.evaluation.similarity import coherence, dynamics_slope, interval_summary

    base = _row_base(sample, metric)
    rows = [
        {**base, "k": int(summary["k"]), "name": name, "value": float(summary[name])}
        for summary in interval_summary(matrix)
        for name in ("mean", "std", "q05", "q25", "q50", "q75", "q95")
    ]
    rows.append({**base, "k": -1, "name": "coherence", "value": coherence(matrix)})
    rows.append({**base, "k": -1, "name": "dynamics_slope", "value": dynamics_slope(matrix)})
    return rows


def motion_rows(sample: dict, frames) -> list[dict]:
    """The weight-free rows of one video (k = −1), each under its own metric: temporal flicker, motion magnitude."""
    from vstar_model.evaluation.motion import (
        FLICKER_METRIC, MOTION_METRIC, MOTION_NAME, motion_magnitude, temporal_flicker,
    )

    return [
        {**_row_base(sample, FLICKER_METRIC), "k": -1, "name": FLICKER_METRIC, "value": temporal_flicker(frames)},
        {**_row_base(sample, MOTION_METRIC), "k": -1, "name": MOTION_NAME, "value": motion_magnitude(frames)},
    ]


def _row_base(sample: dict, metric: str) -> dict:
    return {"run_id": sample["run_id"], "sample_key": sample["sample_key"], "catalog_id": sample["catalog_id"],
            "seed": sample["seed"], "metric": metric}


def video_url(sample: dict, output_root: str) -> str:
    """The absolute URL of a samples row's video (recorded relative to its run's samples.parquet)."""
    return resolve_uri(RunPaths(output_root, sample["run_id"]).samples, sample["video_uri"])


def scored_sample(sample: dict, settings: EvaluationSettings, output_root: str) -> tuple[list[dict], list, list]:
    """Metrics rows, similarity matrix and mean frame embedding (unit length, for near-duplicate
    search) of one video, reused when this video was scored before."""
    import torch.nn.functional as F

    from vstar_model.evaluation.similarity import similarity_matrix
    from vstar_model.video.reader import read_video_frames

    embedder = settings_embedder(settings)
    cached = CachePaths(output_root).metrics(sample["sample_key"], embedder.metric)
    if exists(cached):
        scored = json.loads(read_bytes(cached))
        if "embedding" in scored:  # scores cached before embeddings were kept are computed again
            rows = [{**row, "run_id": sample["run_id"]} for row in scored["rows"]]
            return rows, scored["matrix"], scored["embedding"]
    url = video_url(sample, output_root)
    frames = read_video_frames(url, storage_options=storage_options_for(url))
    embeddings = embedder.embed(frames)
    matrix = similarity_matrix(embeddings)
    rows = metric_rows(sample, embedder.metric, matrix) + motion_rows(sample, frames)
    embedding = F.normalize(F.normalize(embeddings.double(), dim=1).mean(dim=0), dim=0).float().tolist()
    write_bytes_atomic(cached, json.dumps({"rows": rows, "matrix": matrix.tolist(), "embedding": embedding}).encode())
    return rows, matrix.tolist(), embedding


def embedding_row(sample: dict, metric: str, embedding: list[float]) -> dict:
    """The embeddings.parquet row of one scored video."""
    return {"run_id": sample["run_id"], "sample_key": sample["sample_key"], "metric": metric, "embedding": embedding}


@task(task_run_name="evaluate-{sample[catalog_id]}-s{sample[seed]}", retries=1, retry_delay_seconds=2)
def evaluate_sample(sample: dict, settings: EvaluationSettings, output_root: str) -> tuple[list[dict], list, dict]:
    """Thin Prefect task: metrics rows, the similarity matrix (as lists, for plotting) and the
    video's embeddings.parquet row."""
    rows, matrix, embedding = scored_sample(sample, settings, output_root)
    summary = {row["name"]: row for row in rows if row["k"] == -1}
    get_run_logger().info(
        "%s seed %d: %s coherence %.3f, flicker %.3f, motion %.2f px/frame", sample["catalog_id"], sample["seed"],
        summary["coherence"]["metric"], summary["coherence"]["value"], summary["temporal_flicker"]["value"],
        summary["motion_magnitude"]["value"],
    )
    return rows, matrix, embedding_row(sample, summary["coherence"]["metric"], embedding)
