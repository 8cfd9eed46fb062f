"""Flow ``curate-dataset``: runs → filtered, deduplicated clips → a versioned dataset with its card."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict, Field

from tasks.curate import read_candidates, select_clips, select_runs, write_dataset_card, write_dataset_index
from tasks.outputs import write_directory_manifest
from vstar_data.curate import Ranking, parse_condition
from vstar_data.runs import DatasetPaths, check_entry_id, new_run_id


class CurateParameters(BaseModel):
    """What goes into a curated dataset (see vstar_data.curate for the selection rules)."""

    model_config = ConfigDict(extra="forbid")

    output_root: str = Field("./outputs", description="output root holding the runs; the dataset goes to "
                                                      "datasets/<name>/<version>/ there")
    name: str = Field(description="dataset name")
    runs: list[str] = Field([], description="run ids or run directories; default: every finished run indexed")
    since: datetime | None = Field(None, description="only runs created at or after this time")
    until: datetime | None = Field(None, description="only runs created before this time")
    where: list[str] = Field([], description="conditions, all must hold, e.g. 'coherence >= 0.8'")
    dedup_threshold: float | None = Field(None, gt=0, le=1, description="cosine of mean frame embeddings at or "
                                                                         "above which clips are near-duplicates")
    keep_best: str = Field("coherence:max", description="<column>:max|min, the clip kept among duplicates and "
                                                        "under the cap per prompt")
    max_per_prompt: int | None = Field(None, ge=1, description="at most this many clips per prompt")


@flow(name="curate-dataset")
def curate_dataset(
    name: str,
    output_root: str = "./outputs",
    runs: list[str] = [],  # noqa: B006  (Prefect parameters: a literal default for the schema)
    since: datetime | None = None,
    until: datetime | None = None,
    where: list[str] = [],  # noqa: B006
    dedup_threshold: float | None = None,
    keep_best: str = "coherence:max",
    max_per_prompt: int | None = None,
) -> str:
    """Select clips from runs and write ``datasets/<name>/<version>/`` (index.parquet, README.md,
    card/, manifest.json last); returns the dataset directory. Videos are referenced, not copied."""
    p = CurateParameters(**{key: value for key, value in locals().items()})
    check_entry_id(p.name)
    conditions = [parse_condition(text) for text in p.where]  # a bad condition stops before any read
    Ranking.parse(p.keep_best)
    run_dirs = select_runs(p.output_root, p.runs, p.since, p.until)
    table = read_candidates(run_dirs)
    selected, steps = select_clips(quote(table), conditions, p.dedup_threshold, p.keep_best, p.max_per_prompt)
    dataset = DatasetPaths(p.output_root, p.name, new_run_id())
    created_at = datetime.now(timezone.utc)
    index = write_dataset_index(dataset, quote(selected))
    write_dataset_card(dataset, quote(index), quote(selected), steps, run_dirs)
    write_directory_manifest(dataset.directory, dataset.version, p.model_dump(mode="json"),
                             {"clips": index.num_rows, "runs": len(run_dirs)}, created_at)
    get_run_logger().info("dataset %s version %s: %d clips from %d runs → %s", p.name, dataset.version,
                          index.num_rows, len(run_dirs), dataset.directory)
    return dataset.directory
