"""Two runs into the same output root at the same time, sharing its cache, do not interfere."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.reliability.conftest import run_flow
from vstar_data.manifest import list_runs, verify_manifest
from vstar_data.schemas import read_table
from vstar_data.storage import list_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

CATALOG = """\
- id: shared
  prompt: a lake freezing over
  synopsis: [a blue lake, a frozen lake]
  seeds: [0, 1]
- id: own
  prompt: a forest in autumn
  synopsis: [a green forest, a red forest, a bare forest]
"""


def test_two_simultaneous_runs_into_one_root_both_complete_intact(tiny_model_dir, tmp_path, monkeypatch):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    root = str(tmp_path / "out")
    # Each run's first video waits for the other run's: both are inside generation at once,
    # whatever the scheduling (a timeout here means the runs were serialised).
    from tasks import generate

    real, meeting, seen, lock = generate.produce_sample, threading.Barrier(2, timeout=600), set(), threading.Lock()

    def meet_then_produce(job, run, *args, **kwargs):
        with lock:
            first = run.run_id not in seen
            seen.add(run.run_id)
        if first:
            meeting.wait()
        return real(job, run, *args, **kwargs)

    monkeypatch.setattr("tasks.generate.produce_sample", meet_then_produce)
    # Same catalog and seeds: both runs race for the same cache entries.
    with ThreadPoolExecutor(max_workers=2) as pool:
        run_dirs = list(pool.map(lambda _: run_flow(catalog, root, tiny_model_dir), range(2)))

    assert run_dirs[0] != run_dirs[1]
    tables = [read_table(f"{run_dir}/samples.parquet").to_pylist() for run_dir in run_dirs]
    keys = [sorted((r["catalog_id"], r["seed"], r["status"], r["video_sha256"]) for r in t) for t in tables]
    assert len(keys[0]) == 3 and {k[2] for k in keys[0]} == {"ok"}
    assert keys[0] == keys[1]
    for run_dir in run_dirs:
        assert verify_manifest(run_dir) == []
        assert len([f for f in list_files(run_dir) if f.endswith(".mp4")]) == 3
    runs = list_runs(root).to_pylist()
    assert sorted(r["manifest_uri"].rsplit("/", 1)[0] for r in runs) == sorted(run_dirs)
    assert {r["status"] for r in runs} == {"ok"}
    first, second = runs
    assert second["created_at"] < first["finished_at"]  # they did overlap
