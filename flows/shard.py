"""Flow ``generate-shard``: one machine's share of a production run's videos (see tasks/shards.py)."""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow

from tasks.generate import SampleJob, generate_sample
from tasks.jobs import results_or_failures, sample_failure_row, submit_in_window
from tasks.shards import write_shard_rows
from vstar_data.runs import RunPaths
from vstar_data.storage import using_storage_options


@flow(name="generate-shard")
def generate_shard(jobs: list[SampleJob], output_root: str, run_id: str, shard: int = 0,
                   concurrency_limit: str | None = "vstar-gpu", storage_options: dict[str, Any] | None = None) -> int:
    """Generate (or reuse) ``jobs`` into run ``run_id`` and write their samples rows for the parent."""
    run = RunPaths(output_root, run_id)
    with using_storage_options(output_root, storage_options):
        # One process holds one model and generates one video at a time (VideoModel.lock).
        generated = submit_in_window(generate_sample, jobs, 1, run, concurrency_limit)
        rows = results_or_failures(generated, jobs, partial(sample_failure_row, run=run))
        write_shard_rows(run, shard, rows)
    return len(rows)
