"""Flow ``generate-shard``: one machine's share of a production run's videos (see tasks/shards.py)."""

from __future__ import annotations

from functools import partial

from prefect import flow

from tasks.generate import SampleJob, generate_sample
from tasks.jobs import results_or_failures, sample_failure_row
from tasks.shards import write_shard_rows
from vstar_data.runs import RunPaths


@flow(name="generate-shard")
def generate_shard(jobs: list[SampleJob], output_root: str, run_id: str, shard: int = 0,
                   concurrency_limit: str | None = "vstar-gpu") -> int:
    """Generate (or reuse) ``jobs`` into run ``run_id`` and write their samples rows for the parent."""
    run = RunPaths(output_root, run_id)
    generated = [generate_sample.submit(job, run, concurrency_limit) for job in jobs]
    rows = results_or_failures(generated, jobs, partial(sample_failure_row, run=run))
    write_shard_rows(run, shard, rows)
    return len(rows)
