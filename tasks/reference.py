"""Reference distributions from real videos, and the comparison of a run with one (paper Fig. S.1)."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.evaluate import EvaluationSettings, check_evaluation, score_video
from vstar_data.schemas import REFERENCE_SCHEMA, read_table, write_table
from vstar_data.storage import join


def reference_table_url(reference: str) -> str:
    """A reference given as its directory or as its ``reference.parquet``."""
    return reference if reference.endswith(".parquet") else join(reference, "reference.parquet")


@task(task_run_name="score-clip-{clip}", retries=1, retry_delay_seconds=2)
def score_clip(clip: str, num_frames: int, settings: EvaluationSettings) -> tuple[str, list[list[float]]]:
    """(metric, N×N similarity matrix) of a real clip resampled to ``num_frames``."""
    metric, matrix = score_video(clip, settings, num_frames)
    get_run_logger().info("%s: %d frames scored with %s", clip, num_frames, metric)
    return metric, matrix.tolist()


def reference_rows(reference_id: str, clips: list[str], scored: list[tuple[str, list]], num_frames: int) -> list[dict]:
    import torch

    from vstar_model.evaluation.similarity import interval_similarities

    rows = []
    for clip, (metric, matrix) in zip(clips, scored):
        for k, values in interval_similarities(torch.tensor(matrix)).items():
            rows.extend(
                {"reference_id": reference_id, "clip": clip, "metric": metric, "num_frames": num_frames, "k": k,
                 "value": float(v)}
                for v in values.tolist()
            )
    return rows


@task(task_run_name="write-reference", retries=2, retry_delay_seconds=[1, 5])
def write_reference(directory: str, reference_id: str, rows: list[dict]) -> str:
    url = join(directory, "reference.parquet")
    write_table(url, rows, REFERENCE_SCHEMA, run_id=reference_id)
    return url


def load_reference(reference: str) -> tuple[str, dict[int, "torch.Tensor"]]:  # noqa: F821
    """(metric, {k: pooled similarities of all clips}) of a stored reference."""
    import torch

    rows = read_table(reference_table_url(reference)).to_pylist()
    if not rows:
        raise ValueError(f"reference {reference} holds no similarities")
    metrics = {row["metric"] for row in rows}
    if len(metrics) != 1:
        raise ValueError(f"reference {reference} mixes metrics {sorted(metrics)}")
    pooled: dict[int, list[float]] = {}
    for row in rows:
        pooled.setdefault(row["k"], []).append(row["value"])
    return metrics.pop(), {k: torch.tensor(v, dtype=torch.float64) for k, v in sorted(pooled.items())}


def comparison_rows(run_id: str, scored: list[tuple[dict, list]], reference: str, metric: str) -> list[dict]:
    """Per variant: Wasserstein-1 per k between generated and reference similarities, and their mean.

    Only the same metric compares: a reference made with another metric is an error, not a number.
    """
    import torch

    from vstar_model.evaluation.similarity import compare_to_reference, interval_similarities, pool_intervals

    real = matching_reference(reference, metric)
    by_variant: dict[str, list] = {}
    for sample, matrix in scored:
        by_variant.setdefault(sample.get("variant") or "vstar", []).append(
            interval_similarities(torch.tensor(matrix))
        )
    rows = []
    for variant, videos in by_variant.items():
        result = compare_to_reference(pool_intervals(videos), real)
        base = {"run_id": run_id, "metric": metric, "variant": variant, "reference": reference}
        rows.extend({**base, "k": k, "name": "wasserstein", "value": value} for k, value in result.per_k.items())
        rows.append({**base, "k": -1, "name": "overall_score", "value": result.score})
    return rows


@task(task_run_name="compare-with-reference", retries=1, retry_delay_seconds=2)
def compare_with_reference(run_id: str, scored: list[tuple[dict, list]], reference: str, metric: str) -> list[dict]:
    return comparison_rows(run_id, scored, reference, metric)


def matching_reference(reference: str, metric: str | None) -> dict[int, "torch.Tensor"]:  # noqa: F821
    """The reference's pooled similarities per k; an error if it was scored with another metric."""
    if metric is None:
        raise ValueError("evaluation.reference needs a metric: evaluation.metric may not be 'none'")
    reference_metric, real = load_reference(reference)
    if reference_metric != metric:
        raise ValueError(
            f"reference {reference} was scored with {reference_metric!r} but this run scores with "
            f"{metric!r}; build the reference with the same metric"
        )
    return real


def check_reference(reference: str, metric: str | None) -> None:
    """Fail before any work if the reference is unreadable or made with another metric."""
    matching_reference(reference, metric)


def required_metric(settings: EvaluationSettings, purpose: str) -> str:
    """The metric ``settings`` measure; ``purpose`` (e.g. "a reference") cannot do without one."""
    metric = check_evaluation(settings)
    if metric is None:
        raise ValueError(f"{purpose} needs a metric: evaluation.metric may not be 'none'")
    return metric
