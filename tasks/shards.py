"""Generation sharded over machines: each shard is a flow run of a deployment on the GPU pool.

Every GPU machine runs ``prefect worker start --pool vstar-gpu`` in a checkout; the parent run
splits its jobs, starts one ``generate-shard`` run per shard and collects the samples rows the
shards write next to the cache. The output root must be storage all machines reach (a bucket or a
shared file system).
"""

from __future__ import annotations

import json
from datetime import datetime

from prefect import get_run_logger, task

from tasks.generate import SampleJob, sample_row
from vstar_data.runs import RunPaths
from vstar_data.storage import exists, join, read_bytes, write_bytes_atomic


def split_jobs(jobs: list[SampleJob], shards: int) -> list[list[SampleJob]]:
    """Round-robin, so every shard gets a share of each catalog entry; empty shards are dropped."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return [part for part in (jobs[i::shards] for i in range(shards)) if part]


def shard_rows_url(run: RunPaths, shard: int) -> str:
    return join(run.output_root, "cache", "shards", run.run_id, f"{shard}.json")


def write_shard_rows(run: RunPaths, shard: int, rows: list[dict]) -> None:
    write_bytes_atomic(shard_rows_url(run, shard), json.dumps(rows, default=datetime.isoformat).encode())


def read_shard_rows(run: RunPaths, shard: int) -> list[dict] | None:
    url = shard_rows_url(run, shard)
    if not exists(url):
        return None
    rows = json.loads(read_bytes(url))
    for row in rows:
        row["created_at"] = datetime.fromisoformat(row["created_at"])
    return rows


@task(task_run_name="shard-{shard}")
def run_shard(
    deployment: str, jobs: list[SampleJob], run: RunPaths, shard: int, concurrency_limit: str | None,
    storage_options: dict | None = None,
) -> list[dict]:
    """Start the shard's flow run on the deployment's pool, wait for it, and return its rows; a
    shard that died leaves its videos recorded as failed with the flow run's final state."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        deployment,
        parameters={"jobs": [job.model_dump() for job in jobs], "output_root": run.output_root,
                    "run_id": run.run_id, "shard": shard, "concurrency_limit": concurrency_limit,
                    "storage_options": storage_options or {}},
        flow_run_name=f"{run.run_id}-shard-{shard}",
        poll_interval=2,
    )
    rows = read_shard_rows(run, shard)
    get_run_logger().info("shard %d (%s): %s, %s rows", shard, flow_run.name, flow_run.state_name,
                          "no" if rows is None else len(rows))
    if rows is not None:
        return rows
    reason = f"shard {shard} flow run {flow_run.name} ended {flow_run.state_name}: {flow_run.state.message or ''}"
    return [sample_row(job, run, job.key(), None, error=reason) for job in jobs]
