"""From runs to training data, end to end: URIs that resolve from anywhere, the curate-dataset
flow, `vstar curate` and `vstar export` as a user runs them, and DataLoaders over the results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from flows.curate import curate_dataset
from flows.evaluate import evaluate_run
from flows.produce import produce_dataset
from tasks.evaluate import EvaluationSettings
from tasks.jobs import ModelSettings
from tests.synthetic_runs import START, Clip, write_run
from vstar_data.curate import CurationError
from vstar_data.manifest import list_runs, verify_manifest
from vstar_data.schemas import read_table
from vstar_data.storage import exists, list_files, sha256, using_storage_options
from vstar_data.torch_dataset import FrameSampling, IterableVideoDataset, VideoDataset, collate_clips
from vstar_data.uris import resolve_uri

pytestmark = pytest.mark.usefixtures("prefect_harness")

REPO = Path(__file__).resolve().parents[2]
VSTAR = str(Path(sys.executable).with_name("vstar"))
CATALOG = "- id: dusk\n  prompt: a street from day to night\n  synopsis: [a sunny street, a street at night]\n"


def _produce(catalog, root, tiny_model_dir, frames: int | None = 8, steps: int | None = 1, storage_options=None):
    return produce_dataset(catalog=str(catalog), output_root=root, frames=frames, storage_options=storage_options or {},
                           model=ModelSettings(path=str(tiny_model_dir), steps=steps),
                           evaluation=EvaluationSettings(metric="pixel_cosine"))


@pytest.fixture
def s3_root(s3_bucket, monkeypatch):
    """A bucket on the local S3 server and its endpoint, also in the environment (``AWS_ENDPOINT_URL_S3``)
    for the `vstar` subprocesses, as a user with an S3-compatible store would set it."""
    bucket, options = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", options["endpoint_url"])
    return bucket, options["endpoint_url"]


def _assert_run_resolves(run_dir: str) -> None:
    """Every URI the run and its index entry record points at the file the manifest lists."""
    samples_url = f"{run_dir}/samples.parquet"
    for row in read_table(samples_url).to_pylist():
        assert not row["video_uri"].startswith(("/", ".")) and "://" not in row["video_uri"]
        video = resolve_uri(samples_url, row["video_uri"])
        assert sha256(video) == row["video_sha256"] and exists(resolve_uri(samples_url, row["strip_uri"]))


def test_a_run_written_with_a_relative_out_resolves_from_another_cwd_and_after_a_move(
    tmp_path, monkeypatch, tiny_model_dir
):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "catalog.yaml").write_text(CATALOG)
    monkeypatch.chdir(tmp_path / "work")
    run_dir = _produce("catalog.yaml", "out", tiny_model_dir)
    run_id = run_dir.rsplit("/", 1)[-1]
    index_entry = read_table(f"out/runs/_index/{run_id}.parquet").to_pylist()[0]
    assert index_entry["manifest_uri"] == f"../{run_id}/manifest.json"
    assert index_entry["catalog"] == str(tmp_path / "work" / "catalog.yaml")  # outside the root: absolute

    shutil.move(str(tmp_path / "work" / "out"), str(tmp_path / "moved"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved_run = str(tmp_path / "moved" / "runs" / run_id)
    _assert_run_resolves(moved_run)
    assert [r["manifest_uri"] for r in list_runs(str(tmp_path / "moved")).to_pylist()] == [
        f"{moved_run}/manifest.json"]
    # Readers find the videos: scoring the moved run again, and a loader over it.
    evaluation = evaluate_run(run_dir=moved_run, evaluation=EvaluationSettings(metric="pixel_cosine"))
    assert read_table(f"{evaluation}/metrics.parquet").num_rows > 0
    item = VideoDataset(moved_run, FrameSampling(num_frames=8))[0]
    assert item["frames"].shape == (8, 3, 64, 64) and item["captions"][0] == "a sunny street"


def test_a_run_in_a_bucket_resolves_and_loads_with_two_workers(tmp_path, s3_root, tiny_model_dir):
    s3_bucket, s3_endpoint = s3_root
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG + "  seeds: [0, 1]\n")
    options = {"endpoint_url": s3_endpoint}
    run_dir = _produce(catalog, f"{s3_bucket}/vstar", tiny_model_dir, storage_options=options)
    assert run_dir.startswith(f"{s3_bucket}/vstar/runs/")
    with using_storage_options(s3_bucket, options):
        _assert_run_resolves(run_dir)
        assert verify_manifest(run_dir) == []
    clips = VideoDataset(run_dir, FrameSampling(num_frames=4, stride=2, random_offset=True),
                         storage_options={"endpoint_url": s3_endpoint})
    batches = list(DataLoader(clips, batch_size=2, num_workers=2, collate_fn=collate_clips))
    assert len(batches) == 1 and batches[0]["frames"].shape == (2, 4, 3, 64, 64)
    assert sorted(m["seed"] for m in batches[0]["metadata"]) == [0, 1]


def test_the_curate_flow_selects_by_date_and_writes_index_card_and_manifest_last(tmp_path):
    root = str(tmp_path / "out")
    for day, run_id in enumerate(["20261201T120000Z-aaaaaa", "20261202T120000Z-bbbbbb"]):
        write_run(root, run_id, [
            Clip(f"entry-{day}-{i}", seed=i, states=["A", "B", "C"], metrics={
                "coherence": 0.55 + i / 10, "dynamics_slope": -0.001 * i, "temporal_flicker": 0.9,
                "motion_magnitude": 1.0}, embedding=[1.0, float(i)])
            for i in range(4)
        ], created_at=START + timedelta(days=day))
    directory = curate_dataset(name="picked", output_root=root, since=START + timedelta(hours=12),
                               where=["coherence >= 0.6", "dynamics_slope < -0.0015"])
    files = list_files(directory)
    assert {"index.parquet", "README.md", "manifest.json", "card/metrics.png"} <= set(files)
    assert verify_manifest(directory) == []
    index = read_table(f"{directory}/index.parquet").to_pylist()
    assert [(r["run_id"], r["catalog_id"]) for r in index] == [
        ("20261202T120000Z-bbbbbb", "entry-1-2"), ("20261202T120000Z-bbbbbb", "entry-1-3")]
    assert index[0]["keyframe_indices"] == [0, 4, 8] and index[0]["frame_captions"][4] == "B"
    card = (Path(directory) / "README.md").read_text()
    assert "| where coherence >= 0.6 | 3 |" in card and "| where dynamics_slope < -0.0015 | 2 |" in card
    assert "![metric histograms](card/metrics.png)" in card
    manifest = json.loads((Path(directory) / "manifest.json").read_text())
    assert manifest["parameters"]["where"] == ["coherence >= 0.6", "dynamics_slope < -0.0015"]
    assert manifest["row_counts"] == {"clips": 2, "runs": 1}
    by_id = curate_dataset(name="picked", output_root=root, runs=["20261201T120000Z-aaaaaa"], max_per_prompt=1)
    assert len(read_table(f"{by_id}/index.parquet")) == 4 and by_id != directory
    with pytest.raises(CurationError, match="unknown column 'coherance'"):
        curate_dataset(name="bad", output_root=root, where=["coherance > 0"])
    assert not exists(f"{root}/datasets/bad")


def _vstar(*args, env=None):
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", **(env or {})}
    result = subprocess.run([VSTAR, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"vstar {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip().splitlines()


@pytest.mark.slow
def test_curate_two_demo_runs_export_both_formats_and_train_from_shards_and_a_bucket(
    tmp_path, tiny_model_dir, s3_root
):
    s3_bucket, s3_endpoint = s3_root
    root = str(tmp_path / "outputs")
    demo = REPO / "catalogs" / "demo.yaml"
    # The demo's own settings (16 frames, the preset's steps): one step would make near-identical noise.
    first = _produce(demo, root, tiny_model_dir, frames=None, steps=None)
    second = _produce(demo, root, tiny_model_dir, frames=None, steps=None)  # resumed: the same four videos

    dataset = _vstar("curate", "--root", root, "--name", "demo", "--where", "status == ok",
                     "--where", "temporal_flicker > 0", "--dedup", "0.999")[-1]
    index = read_table(f"{dataset}/index.parquet").to_pylist()
    # The second run's videos are byte-identical copies: near-duplicate removal keeps one of each.
    assert len(index) == 4 and {r["run_id"] for r in index} <= {first.rsplit("/", 1)[-1], second.rsplit("/", 1)[-1]}
    assert {r["catalog_id"] for r in index} == {"winter-to-spring", "candle-burning-down", "sunset-over-city"}
    typo = subprocess.run([VSTAR, "curate", "--root", root, "--name", "typo", "--where", "coherance >= 0.8"],
                          env={**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"},
                          capture_output=True, text=True, timeout=600)
    assert typo.returncode == 2 and "unknown column 'coherance'" in typo.stderr and "coherence" in typo.stderr
    assert "Traceback" not in typo.stderr
    winter = next(r for r in index if r["catalog_id"] == "winter-to-spring")
    assert len(winter["frame_captions"]) == 16 and winter["frame_captions"][0] == winter["states"][0]

    shards = _vstar("export", dataset, "--format", "webdataset", "--out", str(tmp_path / "shards"),
                    "--shard-size", "2")
    assert [s.rsplit("/", 1)[-1] for s in shards] == ["000000.tar", "000001.tar"]
    hf = _vstar("export", f"{root}/datasets/demo", "--format", "hf", "--out", str(tmp_path / "hf"))
    from datasets import load_dataset

    rows = load_dataset("parquet", data_files=hf, split="train")
    assert rows.num_rows == 4 and sorted(rows["clip_id"]) == sorted(r["clip_id"] for r in index)

    sampling = FrameSampling(num_frames=8, stride=2, random_offset=True, dtype=torch.float32)
    local = IterableVideoDataset(str(tmp_path / "shards"), sampling)
    seen = [(b["frames"].shape, p) for b in DataLoader(local, batch_size=2, num_workers=2, collate_fn=collate_clips)
            for p in b["prompt"]]
    assert len(seen) == 4 and all(shape == (2, 8, 3, 64, 64) for shape, _ in seen)

    bucket_shards = _vstar("export", dataset, "--format", "webdataset", "--out", f"{s3_bucket}/shards",
                           "--shard-size", "1")
    assert len(bucket_shards) == 4 and all(s.startswith(f"{s3_bucket}/shards/") for s in bucket_shards)
    remote = IterableVideoDataset(f"{s3_bucket}/shards/{{000000..000003}}.tar", sampling,
                                  storage_options={"endpoint_url": s3_endpoint})
    prompts = [p for b in DataLoader(remote, batch_size=2, num_workers=2, collate_fn=collate_clips)
               for p in b["prompt"]]
    assert sorted(prompts) == sorted(r["prompt"] for r in index)
