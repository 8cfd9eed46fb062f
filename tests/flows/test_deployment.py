"""The deployment path: a local Prefect server, `prefect deploy`, process workers and
`prefect deployment run` with parameters — the way users run vstar in production."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.flows.conftest import PREFECT, prefect_cli, stop_process
from vstar_data.manifest import list_runs, verify_manifest
from vstar_data.schemas import read_table

pytestmark = pytest.mark.slow


def _deploy(env, project):
    for pool in ("vstar-cpu", "vstar-gpu"):
        prefect_cli(env, "work-pool", "create", pool, "--type", "process", "--overwrite", cwd=project)
    prefect_cli(env, "--no-prompt", "deploy", "--all", cwd=project)


def _elsewhere(tmp_path):
    """A folder that is no checkout: workers start there and find the code through VSTAR_CHECKOUT."""
    folder = tmp_path / "elsewhere"
    folder.mkdir(exist_ok=True)
    return folder


def _run_once(env, checkout, pool, cwd):
    worker = subprocess.run([PREFECT, "worker", "start", "--pool", pool, "--run-once"],
                            env={**env, "VSTAR_CHECKOUT": str(checkout)}, cwd=cwd, capture_output=True, text=True,
                            timeout=900)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    return worker


def test_a_deployed_run_sharded_over_gpu_workers_runs_the_checkout_their_environment_names(
    prefect_server, project, tmp_path, tiny_model_dir
):
    """One deployment run covers both production paths (each run costs a minute of workers and
    flow-run processes): workers started outside any checkout, and generation sharded over a
    GPU pool."""
    env = {**prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    out = tmp_path / "out"
    _deploy(env, project)
    # The pull step is recorded as written, to be read on the worker's machine...
    for deployment in ("produce-dataset/demo", "generate-shard/gpu"):
        recorded = prefect_cli(env, "deployment", "inspect", deployment, cwd=project)
        assert "{{ $VSTAR_CHECKOUT }}" in recorded and str(project) not in recorded, deployment
    # ...so the deploying checkout may be gone: the workers' checkout lives somewhere else.
    checkout = shutil.move(project, tmp_path / "gpu-machine-checkout")
    logs = [tmp_path / f"gpu-worker-{i}.log" for i in range(2)]
    gpu_workers = [
        subprocess.Popen([PREFECT, "worker", "start", "--pool", "vstar-gpu", "--limit", "1"],
                         env={**env, "VSTAR_CHECKOUT": str(checkout)}, cwd=_elsewhere(tmp_path),
                         stdout=log.open("w"), stderr=subprocess.STDOUT)
        for log in logs
    ]
    try:
        prefect_cli(
            env, "deployment", "run", "produce-dataset/demo",
            "--param", f"output_root={out}",
            "--param", "tar=64D4",
            "--param", "shard_deployment=generate-shard/gpu",
            "--param", "shards=2",
            "--param", "gpu_slots=2",
            "--param", f'model={{"path": "{tiny_model_dir}", "steps": 2}}',
            cwd=checkout,
        )
        worker = _run_once(env, checkout, "vstar-cpu", cwd=_elsewhere(tmp_path))
    finally:
        for process in gpu_workers:
            stop_process(process)
    runs = list_runs(str(out)).to_pylist()
    assert len(runs) == 1 and runs[0]["status"] == "ok", (worker.stdout + worker.stderr)[-4000:]
    run_dir = runs[0]["manifest_uri"].rsplit("/", 1)[0]
    samples = read_table(f"{run_dir}/samples.parquet").to_pylist()
    assert sorted((s["catalog_id"], s["seed"]) for s in samples) == [
        ("candle-burning-down", 0), ("candle-burning-down", 7), ("sunset-over-city", 0), ("winter-to-spring", 0),
    ]
    assert {(s["status"], s["tar"], s["num_inference_steps"]) for s in samples} == {("ok", "64D4", 2)}
    assert verify_manifest(run_dir) == []
    # Each GPU worker ran one shard.
    ran = [log.read_text().count("shard") for log in logs]
    assert all(count > 0 for count in ran), [log.read_text()[-2000:] for log in logs]
