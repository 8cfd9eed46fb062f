"""Curate a dataset from runs: select the runs, their candidate clips, the selection, the index and card."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.retries import retry_unless
from vstar_data.curate import Condition, CurationError, Ranking, candidates, index_table, parse_condition, select, write_index
from vstar_data.dataset_card import card_markdown, metric_histograms_png
from vstar_data.manifest import list_runs
from vstar_data.runs import DatasetPaths, RunPaths, check_run_id
from vstar_data.storage import StorageError, exists, read_bytes, write_bytes_atomic
from vstar_data.uris import absolute_url

EXAMPLES = 4  # frame strips shown on the card


@task(task_run_name="select-runs", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless(ValueError, StorageError))
def select_runs(output_root: str, runs: list[str], since: datetime | None, until: datetime | None) -> list[str]:
    """The run directories to curate: ``runs`` (run ids under ``output_root`` or run directory
    URLs) or else every finished run of the run index, optionally created in [since, until)."""
    if runs and (since or until):
        raise ValueError("select runs either by id or by a date range, not both")
    if runs:
        return [RunPaths(output_root, check_run_id(run)).run_dir if "/" not in run else absolute_url(run).rstrip("/")
                for run in runs]
    selected = [
        row["manifest_uri"].rsplit("/", 1)[0]
        for row in list_runs(output_root).to_pylist()
        if row["status"] in ("ok", "partial") and row["manifest_uri"]
        and (since is None or row["created_at"] >= since) and (until is None or row["created_at"] < until)
    ]
    if not selected:
        window = f" created in [{since or '…'}, {until or '…'})" if since or until else ""
        raise CurationError(f"no finished runs{window} in the run index of {output_root}")
    return selected


def check_curation(output_root: str, runs: list[str], since: datetime | None, until: datetime | None,
                   where: list[str], dedup_threshold: float | None, keep_best: str, max_per_prompt: int | None) -> None:
    """Raise the error curation would raise (a bad condition, an unknown column, no runs) before
    Prefect starts, so the command line can print it as one line. Reads the runs' tables once."""
    conditions, ranking = [parse_condition(text) for text in where], Ranking.parse(keep_best)
    run_dirs = select_runs.fn(output_root, runs, since, until)
    select(candidates(run_dirs).slice(0, 0), conditions, dedup_threshold=dedup_threshold, keep_best=ranking,
           max_per_prompt=max_per_prompt)


@task(task_run_name="read-candidates", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_unless(ValueError, StorageError))
def read_candidates(run_dirs: list[str]) -> pa.Table:
    """Candidate clips of the runs: their ok videos with metrics as columns."""
    table = candidates(run_dirs)
    get_run_logger().info("%d candidate clips from %d runs", table.num_rows, len(run_dirs))
    return table


@task(task_run_name="select-clips", cache_policy=NO_CACHE)
def select_clips(table: pa.Table, conditions: list[Condition], dedup_threshold: float | None, keep_best: str,
                 max_per_prompt: int | None) -> tuple[pa.Table, list[tuple[str, int]]]:
    """Filters, near-duplicate removal, cap per prompt; the selected rows and (step, clips left)."""
    selected, steps = select(table, conditions, dedup_threshold=dedup_threshold, keep_best=Ranking.parse(keep_best),
                             max_per_prompt=max_per_prompt)
    logger = get_run_logger()
    for step in steps:
        logger.info("%s: %d clips", step.description, step.remaining)
    return selected, [(step.description, step.remaining) for step in steps]


@task(task_run_name="write-dataset-index", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_unless(StorageError))
def write_dataset_index(dataset: DatasetPaths, selected: pa.Table) -> pa.Table:
    """``index.parquet`` of the dataset (videos referenced, not copied); returns the index."""
    index = index_table(selected, dataset.index, dataset.output_root)
    write_index(dataset.index, index, dataset.version)
    return index


@task(task_run_name="write-dataset-card", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_unless(StorageError))
def write_dataset_card(dataset: DatasetPaths, index: pa.Table, selected: pa.Table, steps: list[tuple[str, int]],
                       run_dirs: list[str]) -> str:
    """README.md with histograms and example frame strips copied beside it (small PNGs)."""
    histogram = metric_histograms_png(index)
    if histogram is not None:
        write_bytes_atomic(dataset.card_file("metrics.png"), histogram)
    strips = dict(zip(index["clip_id"].to_pylist(), selected["strip_uri"].to_pylist()))
    examples = []
    for clip_id, strip in list(strips.items())[:EXAMPLES]:
        if strip and exists(strip):
            write_bytes_atomic(dataset.card_file(f"{clip_id}.png"), read_bytes(strip))
            examples.append((clip_id, f"card/{clip_id}.png"))
    runs = [run_dir.rsplit("/", 1)[-1] for run_dir in run_dirs]
    markdown = card_markdown(dataset.name, dataset.version, index, steps, runs,
                             "card/metrics.png" if histogram else None, examples)
    write_bytes_atomic(dataset.card, markdown.encode())
    return dataset.card
