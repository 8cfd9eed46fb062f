"""kill -9 a run half-way, run it again: the dataset equals an uninterrupted run's.

The killed run is a real ``vstar produce`` process with Prefect's ephemeral API; it loses its whole
process group, Prefect server included, as on a power cut or an OOM kill. The run that resumes it
and the uninterrupted reference run the same flow with the same parameters in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.evaluate import EvaluationSettings
from tasks.jobs import ModelSettings
from tests.reliability.conftest import run_flow
from vstar_data.manifest import list_runs, verify_manifest
from vstar_data.schemas import read_table
from vstar_data.storage import TEMP_PREFIX, list_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

KILLED_PRODUCE = Path(__file__).with_name("killed_produce.py")

CATALOG = """\
- id: melt
  prompt: an ice cube melting
  synopsis: [an ice cube, a puddle]
- id: bloom
  prompt: a flower blooming
  synopsis: [a closed bud, an open flower]
  seeds: [1, 2]
- id: dusk
  prompt: a street from day to night
  synopsis: [a sunny street, a street at dusk, a street at night]
"""


def _cli_args(catalog: Path, root: Path, model_dir: Path) -> list[str]:
    return ["produce", str(catalog), "--out", str(root), "--model-path", str(model_dir), "--frames", "8",
            "--steps", "2", "--metric", "pixel_cosine", "--gpu-slots", "4"]


def _same_run_in_process(catalog: Path, root: Path, model_dir: Path) -> str:
    """What :func:`_cli_args` asks for, through the flow in this process."""
    return run_flow(catalog, str(root), model_dir, model=ModelSettings(path=str(model_dir), steps=2),
                    gpu_slots=4, evaluation=EvaluationSettings(metric="pixel_cosine"))


def _samples(run_dir: str) -> list[tuple]:
    rows = read_table(f"{run_dir}/samples.parquet").to_pylist()
    return sorted((r["catalog_id"], r["seed"], r["variant"], tuple(r["states"]), r["status"], r["video_sha256"])
                  for r in rows)


def _assert_readers_see_only_whole_files(root: Path) -> None:
    """Every visible Parquet file parses; every cache record's video is complete; manifests verify."""
    for path in root.rglob("*.parquet"):
        if not path.name.startswith(TEMP_PREFIX):
            pq.read_table(path)
    for record in (root / "cache" / "samples").glob("*.json"):
        video = record.with_suffix(".mp4").read_bytes()
        assert hashlib.sha256(video).hexdigest() == json.loads(record.read_bytes())["video_sha256"], record
    assert not [name for name in list_files(str(root)) if Path(name).name.startswith(TEMP_PREFIX)]
    for manifest in root.glob("runs/*/manifest.json"):
        assert verify_manifest(str(manifest.parent)) == [], manifest


def test_a_run_killed_half_way_resumes_to_the_dataset_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    crashed, reference = tmp_path / "crashed", tmp_path / "reference"
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = tmp_path / "crashed.log"
    # A session of its own: killing its group takes the ephemeral Prefect server down too. The run
    # kills its group itself right after its first video's record (killed_produce.py).
    process = subprocess.Popen([sys.executable, str(KILLED_PRODUCE), *_cli_args(catalog, crashed, tiny_model_dir)],
                               env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    records = crashed / "cache" / "samples"

    # Half-way: some videos, no manifest, nothing in the run index; what is visible is whole.
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert 1 <= len(list(records.glob("*.json"))) < 4
    assert not list(crashed.glob("runs/*/manifest.json"))
    assert len(list_runs(str(crashed))) == 0
    _assert_readers_see_only_whole_files(crashed)

    resumed_dir = _same_run_in_process(catalog, crashed, tiny_model_dir)
    reference_dir = _same_run_in_process(catalog, reference, tiny_model_dir)

    [run] = list_runs(str(crashed)).to_pylist()
    assert run["status"] == "ok" and run["num_samples"] == 4
    assert _samples(resumed_dir) == _samples(reference_dir)  # same rows, same video bytes
    for table in ("synopses", "metrics"):
        assert read_table(f"{resumed_dir}/{table}.parquet").drop(["run_id"]).equals(
            read_table(f"{reference_dir}/{table}.parquet").drop(["run_id"])
        ), table
    _assert_readers_see_only_whole_files(crashed)
