from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow.dataset as ds
import pytest

from vstar_data import manifest as manifest_module
from vstar_data.manifest import (
    PACKAGES,
    append_run_index,
    build_manifest,
    code_version,
    list_runs,
    read_manifest,
    run_status,
    verify_manifest,
    write_manifest,
)
from vstar_data.runs import RunPaths, new_run_id, run_index_dir
from vstar_data.schemas import METRICS_SCHEMA, RUNS_SCHEMA, write_table
from vstar_data.storage import TEMP_PREFIX, read_bytes, write_bytes_atomic

START = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["local", "memory"])
def output_root(request, tmp_path, memory_root):
    return str(tmp_path) if request.param == "local" else memory_root


def fill_run(paths: RunPaths) -> dict[str, bytes]:
    """Write a small run's files; return their content by path relative to the run dir."""
    files = {
        "videos/a__s0.mp4": b"\x00video a" * 100,
        "videos/a__s0.png": b"strip a",
        "plots/dynamics.png": b"plot",
    }
    for relative, data in files.items():
        write_bytes_atomic(f"{paths.run_dir}/{relative}", data)
    row = dict(
        run_id=paths.run_id,
        sample_key="0" * 16,
        catalog_id="a",
        seed=0,
        metric="m",
        k=-1,
        name="mean",
        value=0.5,
    )
    write_table(paths.metrics, [row], METRICS_SCHEMA, run_id=paths.run_id)
    files["metrics.parquet"] = read_bytes(paths.metrics)
    return files


def test_manifest_lists_every_file_with_size_and_hash(output_root):
    paths = RunPaths(output_root, new_run_id(START))
    files = fill_run(paths)
    manifest = build_manifest(
        paths.run_dir,
        paths.run_id,
        parameters={"frames": 16, "tar": "paper"},
        row_counts={"metrics": 1},
        created_at=START,
        finished_at=START + timedelta(minutes=2),
    )
    assert manifest["files"] == {
        path: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for path, data in files.items()
    }
    assert manifest["run_id"] == paths.run_id
    assert manifest["parameters"] == {"frames": 16, "tar": "paper"}
    assert manifest["row_counts"] == {"metrics": 1}
    assert manifest["created_at"] == START.isoformat()
    assert set(manifest["packages"]) == set(PACKAGES)
    assert manifest["packages"]["pyarrow"] is not None
    assert manifest["code_version"]


def test_written_manifest_reads_back_and_verifies(output_root):
    paths = RunPaths(output_root, new_run_id(START))
    fill_run(paths)
    manifest = build_manifest(
        paths.run_dir, paths.run_id, parameters={}, row_counts={}, created_at=START
    )
    assert write_manifest(paths.run_dir, manifest) == paths.manifest
    assert read_manifest(paths.run_dir) == manifest
    assert verify_manifest(paths.run_dir) == []

    # A rebuilt manifest does not list the manifest itself.
    again = build_manifest(
        paths.run_dir, paths.run_id, parameters={}, row_counts={}, created_at=START
    )
    assert "manifest.json" not in again["files"]


def test_verify_reports_missing_changed_and_unlisted_files(tmp_path):
    paths = RunPaths(str(tmp_path), new_run_id(START))
    files = fill_run(paths)
    write_manifest(
        paths.run_dir,
        build_manifest(paths.run_dir, paths.run_id, parameters={}, row_counts={}, created_at=START),
    )
    run_dir = tmp_path / "runs" / paths.run_id
    (run_dir / "plots" / "dynamics.png").unlink()
    (run_dir / "videos" / "a__s0.png").write_bytes(b"strip A")  # same size, other content
    (run_dir / "videos" / "b__s0.mp4").write_bytes(b"late")
    (run_dir / "videos" / f"{TEMP_PREFIX}c__s0.mp4.1a2b3c4d").write_bytes(b"half")
    (run_dir / "metrics.parquet").write_bytes(b"cut")
    strip_sha = hashlib.sha256(b"strip a").hexdigest()
    assert verify_manifest(paths.run_dir) == [
        "missing: plots/dynamics.png",
        "not in manifest: videos/b__s0.mp4",
        f"changed: metrics.parquet (3 bytes, the manifest says {len(files['metrics.parquet'])})",
        f"changed: videos/a__s0.png (sha256 {hashlib.sha256(b'strip A').hexdigest()}, the manifest says {strip_sha})",
    ]


def test_bad_manifest_inputs_fail_before_anything_is_written(tmp_path):
    paths = RunPaths(str(tmp_path), new_run_id(START))
    fill_run(paths)
    with pytest.raises(ValueError, match="timezone-aware"):
        build_manifest(
            paths.run_dir,
            paths.run_id,
            parameters={},
            row_counts={},
            created_at=datetime(2026, 1, 1),
        )
    with pytest.raises(TypeError):
        build_manifest(
            paths.run_dir,
            paths.run_id,
            parameters={"path": tmp_path},
            row_counts={},
            created_at=START,
        )
    with pytest.raises(ValueError, match="not of the form"):
        build_manifest(paths.run_dir, "latest", parameters={}, row_counts={}, created_at=START)
    assert not (tmp_path / "runs" / paths.run_id / "manifest.json").exists()


def test_code_version_falls_back_to_the_package_version(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(manifest_module.subprocess, "run", no_git)
    assert code_version() == f"vstar {manifest_module.package_versions(['vstar'])['vstar']}"


def test_code_version_uses_git_describe_when_tracked(monkeypatch):
    calls = []

    def fake_git(command, **kwargs):
        calls.append(command[1])
        return subprocess.CompletedProcess(command, 0, stdout="v0.1.0-3-gabc1234-dirty\n")

    monkeypatch.setattr(manifest_module.subprocess, "run", fake_git)
    assert code_version() == "v0.1.0-3-gabc1234-dirty"
    assert calls == ["ls-files", "describe"]


def index_row(run_id: str, status: str = "ok", **changes) -> dict:
    return (
        dict(
            run_id=run_id,
            created_at=START,
            finished_at=None if status == "running" else START + timedelta(minutes=1),
            status=status,
            catalog="catalogs/demo.yaml",
            num_samples=4,
            num_failed=0,
            parameters_json=json.dumps({"frames": 16}),
            manifest_uri=None,
        )
        | changes
    )


def test_run_index_updates_a_run_in_place(output_root):
    run_id = new_run_id(START)
    append_run_index(output_root, index_row(run_id, "running", num_samples=0))
    append_run_index(output_root, index_row(run_id, "ok", manifest_uri="m.json"))
    runs = list_runs(output_root).to_pylist()
    assert [
        (row["run_id"], row["status"], row["num_samples"], row["manifest_uri"]) for row in runs
    ] == [(run_id, "ok", 4, f"{output_root}/runs/_index/m.json")]  # recorded relative to the index file


def test_concurrent_runs_keep_each_others_rows(tmp_path):
    root = str(tmp_path)
    writers, per_writer = 4, 8
    barrier = threading.Barrier(writers)
    run_ids = [
        [new_run_id(START + timedelta(seconds=w * 100 + i)) for i in range(per_writer)]
        for w in range(writers)
    ]

    def write_all(ids: list[str]) -> None:
        barrier.wait()
        for run_id in ids:
            append_run_index(root, index_row(run_id, "running"))
            append_run_index(root, index_row(run_id, "ok"))

    threads = [threading.Thread(target=write_all, args=(ids,)) for ids in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = list_runs(root)
    assert sorted(listed.column("run_id").to_pylist()) == sorted(
        run_id for ids in run_ids for run_id in ids
    )
    assert set(listed.column("status").to_pylist()) == {"ok"}


def test_run_index_is_one_dataset_for_every_reader(tmp_path):
    root = str(tmp_path)
    ids = [new_run_id(START + timedelta(hours=h)) for h in (2, 0, 1)]
    for run_id in ids:
        append_run_index(root, index_row(run_id))
    index = run_index_dir(root)
    assert list_runs(root).column("run_id").to_pylist() == sorted(ids)
    assert list_runs(root).schema.equals(RUNS_SCHEMA)
    assert sorted(ds.dataset(index).to_table().column("run_id").to_pylist()) == sorted(ids)
    fetched = duckdb.sql(
        f"SELECT run_id FROM read_parquet('{index}/*.parquet') ORDER BY run_id"
    ).fetchall()
    assert [run_id for (run_id,) in fetched] == sorted(ids)


@pytest.mark.parametrize(
    "failures, status",
    [
        ({"synopses_fallback": 0, "synopses_failed": 0, "samples_failed": 0}, "ok"),
        ({"synopses_fallback": 3, "synopses_failed": 0, "samples_failed": 0}, "degraded"),
        ({"synopses_fallback": 3, "synopses_failed": 0, "samples_failed": 1}, "partial"),
        ({"synopses_fallback": 0, "synopses_failed": 1, "samples_failed": 0}, "partial"),
    ],
)
def test_run_status_says_degraded_for_fallbacks_and_partial_for_failures(failures, status):
    assert run_status(failures) == status


def test_index_entries_written_before_the_counts_existed_still_list(tmp_path):
    import pyarrow as pa

    old_schema = pa.schema([f for f in RUNS_SCHEMA if not f.name.startswith("num_synopses_")])
    old_id, new_id = new_run_id(START), new_run_id(START + timedelta(hours=1))
    old_row = {k: v for k, v in index_row(old_id).items() if not k.startswith("num_synopses_")}
    write_table(RunPaths(str(tmp_path), old_id).index_entry, [old_row], old_schema, run_id=old_id)
    append_run_index(str(tmp_path), index_row(new_id, "degraded", num_synopses_fallback=2, num_synopses_failed=0))
    runs = list_runs(str(tmp_path))
    assert runs.schema.equals(RUNS_SCHEMA)
    assert [(r["run_id"], r["status"], r["num_synopses_fallback"]) for r in runs.to_pylist()] == [
        (old_id, "ok", None), (new_id, "degraded", 2),
    ]


def test_list_runs_of_an_empty_root(memory_root):
    runs = list_runs(memory_root)
    assert runs.num_rows == 0 and runs.schema.equals(RUNS_SCHEMA)


def test_run_index_rejects_rows_without_a_valid_run_id(memory_root):
    with pytest.raises(ValueError, match="not of the form"):
        append_run_index(memory_root, index_row("../../elsewhere"))
