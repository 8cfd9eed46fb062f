"""The deployment path: a local Prefect server, `prefect deploy`, a process worker and
`prefect deployment run` with parameters — the way users run vstar in production."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vstar_data.manifest import list_runs, verify_manifest
from vstar_data.schemas import read_table

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # SIGTERM may not stop a worker quickly
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off", "--no-ui"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("prefect server did not become healthy")
                time.sleep(0.5)
        yield env
    finally:
        _stop(server)


def _prefect(env, *args, cwd, timeout=240):
    result = subprocess.run([PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_deployment_run_with_parameters_through_a_process_worker(prefect_server, tmp_path, tiny_model_dir):
    env = prefect_server
    project = tmp_path / "project"  # a clean copy: the worker runs the flow from this checkout
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "__pycache__"))
    out = tmp_path / "out"
    for pool in ("vstar-cpu", "vstar-gpu"):
        _prefect(env, "work-pool", "create", pool, "--type", "process", cwd=project)
    _prefect(env, "--no-prompt", "deploy", "--all", cwd=project)
    _prefect(
        env, "deployment", "run", "produce-dataset/demo",
        "--param", f"output_root={out}",
        "--param", "tar=64D4",
        "--param", f'model={{"path": "{tiny_model_dir}", "steps": 2}}',
        cwd=project,
    )
    worker = subprocess.run(
        [PREFECT, "worker", "start", "--pool", "vstar-cpu", "--run-once"],
        env=env, cwd=project, capture_output=True, text=True, timeout=400,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
    runs = list_runs(str(out)).to_pylist()
    assert len(runs) == 1 and runs[0]["status"] == "ok", worker.stdout[-3000:]
    run_dir = runs[0]["manifest_uri"].rsplit("/", 1)[0]
    samples = read_table(f"{run_dir}/samples.parquet").to_pylist()
    assert len(samples) == 4
    assert {(s["tar"], s["num_inference_steps"]) for s in samples} == {("64D4", 2)}
    assert {s["catalog_id"] for s in samples} == {"winter-to-spring", "candle-burning-down", "sunset-over-city"}
    assert verify_manifest(run_dir) == []
