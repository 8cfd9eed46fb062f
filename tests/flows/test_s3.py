"""Runs against an S3-compatible server (moto's, on 127.0.0.1): produce, resume, readers, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.produce import produce_dataset
from tasks.evaluate import EvaluationSettings
from tasks.jobs import ModelSettings
from vstar_data.manifest import list_runs, verify_manifest
from vstar_data.schemas import read_table
from vstar_data.storage import list_files, using_storage_options

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

VSTAR = str(Path(sys.executable).with_name("vstar"))
REPO = Path(__file__).resolve().parents[2]
CATALOG = """\
- id: melt
  prompt: an ice cube melting
  synopsis: [an ice cube, a puddle]
- id: bloom
  prompt: a flower blooming
  synopsis: [a closed bud, an open flower]
  seeds: [1, 2]
"""


def _produce(catalog: Path, root: str, options: dict, model_dir: Path) -> str:
    return produce_dataset(catalog=str(catalog), output_root=root, storage_options=options, frames=8,
                           model=ModelSettings(path=str(model_dir), steps=1),
                           evaluation=EvaluationSettings(metric="pixel_cosine"))


def test_a_resumed_run_on_a_bucket_copies_videos_server_side_and_readers_read_it(
    s3_server, s3_bucket, tiny_model_dir, tmp_path, capsys
):
    bucket, options = s3_bucket
    root = f"{bucket}/out"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    with s3_server.recording() as first_requests:
        first = _produce(catalog, root, options, tiny_model_dir)
    with s3_server.recording() as resumed_requests:
        resumed = _produce(catalog, root, options, tiny_model_dir)

    with using_storage_options(root, options):
        files = list_files(resumed)
        assert verify_manifest(first) == [] and verify_manifest(resumed) == []
        assert [r["status"] for r in list_runs(root).to_pylist()] == ["ok", "ok"]
        hashes = [sorted(r["video_sha256"] for r in read_table(f"{run}/samples.parquet").to_pylist())
                  for run in (first, resumed)]
    assert hashes[0] == hashes[1]

    # No video byte went through the client on the resumed run: every video and strip was copied by
    # the server (CopyObject), none was uploaded or downloaded.
    placed = sorted(path for path in files if path.startswith("videos/"))
    media_bytes = sum(files[path] for path in placed)
    assert len(placed) == 6
    copies = [r for r in resumed_requests if r.method == "PUT" and r.is_copy and "/videos/" in r.url]
    assert sorted(r.url.rsplit("/videos/", 1)[-1] for r in copies) == [p.removeprefix("videos/") for p in placed]
    assert len([r for r in resumed_requests if r.is_copy and "/plots/" in r.url]) == 3  # the plots too
    moved = [(r.method, r.url) for r in resumed_requests if not r.is_copy and r.method in ("PUT", "POST", "GET")
             and r.url.split("?")[0].endswith((".mp4", ".png")) and "/plots/" not in r.url]
    # Only the frame strips the summary artifact embeds are read; no video, and nothing is uploaded.
    assert {method for method, url in moved} <= {"GET"} and not [url for _, url in moved if url.endswith(".mp4")]
    sent = sum(r.body_bytes for r in resumed_requests)
    first_sent = sum(r.body_bytes for r in first_requests)
    with capsys.disabled():
        print(f"\nresumed run on S3: {len(resumed_requests)} requests, {sent} request-body bytes sent "
              f"({len(copies)} server-side copies of {media_bytes} bytes of videos and strips); "
              f"first run: {len(first_requests)} requests, {first_sent} bytes sent")

    # The readers users have read the bucket's tables.
    import duckdb
    import duckdb_extension_httpfs
    import pandas
    import pyarrow.parquet as pq
    import s3fs

    samples_url = f"{resumed}/samples.parquet"
    fs = s3fs.S3FileSystem(endpoint_url=options["endpoint_url"])
    assert pq.read_table(samples_url.removeprefix("s3://"), filesystem=fs).num_rows == 3
    assert len(pandas.read_parquet(samples_url, storage_options=options)) == 3
    extension = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    connection = duckdb.connect()
    connection.load_extension(str(extension))
    connection.execute(f"""CREATE SECRET moto (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1',
        ENDPOINT '{options["endpoint_url"].removeprefix("http://")}', URL_STYLE 'path', USE_SSL false)""")
    counted = connection.execute(f"SELECT count(*) FROM read_parquet('{root}/runs/*/samples.parquet')").fetchone()
    assert counted == (6,)


def _vstar(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    return subprocess.run([VSTAR, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_cli_writes_to_a_bucket_with_storage_options_and_refuses_a_wrong_endpoint_in_one_line(
    s3_bucket, tiny_model_dir, tmp_path
):
    bucket, options = s3_bucket
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    common = [str(catalog), "--out", f"{bucket}/out", "--model-path", str(tiny_model_dir), "--frames", "8",
              "--steps", "1", "--metric", "none"]

    # A port nothing listens on: refused before Prefect starts, in one line, nothing run.
    wrong = _vstar("produce", *common, "--storage-option", "endpoint_url=http://127.0.0.1:9", tmp_path=tmp_path)
    assert wrong.returncode == 2, wrong.stderr
    assert "Traceback" not in wrong.stderr and "temporary server" not in wrong.stderr
    [line] = wrong.stderr.strip().splitlines()
    assert line.startswith(f"output root {bucket}/out is not usable") and "EndpointConnectionError" in line

    done = _vstar("produce", *common, "--storage-option", f"endpoint_url={options['endpoint_url']}",
                  tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = done.stdout.strip().splitlines()[-1]
    assert run_dir.startswith(f"{bucket}/out/runs/")
    assert "ok: 3 videos made, 0 failed" in done.stderr.strip().splitlines()[-2]
    listed = _vstar("runs", "list", f"{bucket}/out", "--storage-option", f"endpoint_url={options['endpoint_url']}",
                    tmp_path=tmp_path)
    assert listed.returncode == 0 and run_dir.rsplit("/", 1)[-1] in listed.stdout
    verified = _vstar("runs", "verify", run_dir, "--storage-option", f"endpoint_url={options['endpoint_url']}",
                      tmp_path=tmp_path)
    assert verified.returncode == 0 and "match the manifest" in verified.stdout
