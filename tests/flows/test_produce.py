"""The produce-dataset flow end to end on the tiny model, through Prefect's real engine."""

from __future__ import annotations

import inspect
import json
import textwrap

import duckdb
import fsspec
import pyarrow.dataset as ds
import pytest

from flows.produce import ProduceParameters, produce_dataset
from tasks.evaluate import EvaluationSettings
from tasks.jobs import ModelSettings
from vstar_data.catalog import CatalogError
from vstar_data.manifest import list_runs, verify_manifest
from vstar_data.schemas import SAMPLES_SCHEMA, read_table, table_run_id
from vstar_data.storage import list_files, read_bytes

pytestmark = pytest.mark.usefixtures("prefect_harness")

CATALOG = """\
- id: snow-to-spring
  prompt: a meadow from winter to spring
  synopsis: [a snowy meadow, a green meadow with flowers]
- id: day-to-night
  prompt: a street from day to night
  synopsis: [a sunny street, a street at dusk, a street at night]
  seeds: [3, 11]
"""


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    return str(path)


def _run(catalog, root, tiny_model_dir, **overrides):
    params = dict(
        catalog=catalog,
        output_root=root,
        frames=8,
        tar="64D1",
        model=ModelSettings(path=str(tiny_model_dir), steps=2),
        evaluation=EvaluationSettings(metric="pixel_cosine"),
    )
    params.update(overrides)
    return produce_dataset(**params)


def test_flow_signature_matches_the_parameter_model():
    """Deployments take top-level --param values; they must mean what ProduceParameters says."""
    signature = inspect.signature(produce_dataset.fn).parameters
    assert list(signature) == list(ProduceParameters.model_fields)
    for name, field in ProduceParameters.model_fields.items():
        if not field.is_required():
            assert signature[name].default == field.default, name


def test_run_into_memory_writes_a_complete_versioned_run(catalog, tiny_model_dir):
    run_dir = _run(catalog, "memory://vstar-e2e", tiny_model_dir)
    run_id = run_dir.rsplit("/", 1)[-1]
    files = list_files(run_dir)
    assert {"synopses.parquet", "samples.parquet", "metrics.parquet", "manifest.json"} <= set(files)
    videos = sorted(f for f in files if f.startswith("videos/"))
    assert videos == [
        "videos/day-to-night__s11.mp4", "videos/day-to-night__s11.png",
        "videos/day-to-night__s3.mp4", "videos/day-to-night__s3.png",
        "videos/snow-to-spring__s0.mp4", "videos/snow-to-spring__s0.png",
    ]
    assert any(f.startswith("plots/") and f.endswith(".png") for f in files)

    samples = read_table(f"{run_dir}/samples.parquet")
    assert samples.schema.remove_metadata() == SAMPLES_SCHEMA.remove_metadata()
    assert table_run_id(samples) == run_id
    rows = samples.to_pylist()
    assert len(rows) == 3 and {r["status"] for r in rows} == {"ok"}
    day = next(r for r in rows if r["catalog_id"] == "day-to-night")
    assert day["states"] == ["a sunny street", "a street at dusk", "a street at night"]
    assert (day["num_frames"], day["height"], day["width"], day["tar"]) == (8, 64, 64, "64D1")

    synopses = read_table(f"{run_dir}/synopses.parquet").to_pylist()
    assert [s["source"] for s in synopses] == ["catalog", "catalog"]
    metrics = read_table(f"{run_dir}/metrics.parquet").to_pylist()
    # Per video: 7 summaries for each k = 1..7, coherence and slope, all pixel_cosine; then the
    # weight-free flicker and motion, each under its own metric.
    assert {m["metric"] for m in metrics if m["name"] not in ("temporal_flicker", "motion_magnitude")} == {
        "pixel_cosine"
    }
    assert sorted((m["metric"], m["name"], m["k"]) for m in metrics if m["sample_key"] == rows[0]["sample_key"]
                  and m["metric"] != "pixel_cosine") == [
        ("farneback_flow", "motion_magnitude", -1), ("temporal_flicker", "temporal_flicker", -1)]
    assert len(metrics) == 3 * (7 * 7 + 2 + 2)
    embeddings = read_table(f"{run_dir}/embeddings.parquet").to_pylist()
    assert sorted(e["sample_key"] for e in embeddings) == sorted(r["sample_key"] for r in rows)
    assert {e["metric"] for e in embeddings} == {"pixel_cosine"}
    assert all(abs(sum(v * v for v in e["embedding"]) - 1) < 1e-4 for e in embeddings)

    manifest = json.loads(read_bytes(f"{run_dir}/manifest.json"))
    assert manifest["run_id"] == run_id
    assert manifest["row_counts"] == {"synopses": 2, "samples": 3, "metrics": len(metrics)}
    assert verify_manifest(run_dir) == []
    index = list_runs("memory://vstar-e2e").to_pylist()
    assert [r["run_id"] for r in index] == [run_id] and index[0]["status"] == "ok"


def test_local_run_is_readable_by_dataset_readers_and_resumes_without_regenerating(
    catalog, tiny_model_dir, tmp_path, monkeypatch
):
    root = str(tmp_path / "out")
    first = _run(catalog, root, tiny_model_dir)
    table = ds.dataset(f"{first}/samples.parquet").to_table()
    assert table.num_rows == 3
    assert duckdb.sql(f"select count(*) from read_parquet('{first}/metrics.parquet')").fetchall()[0][0] > 0
    import pandas

    assert len(pandas.read_parquet(f"{first}/synopses.parquet")) == 2

    from tasks import evaluate, generate
    from vstar_model.video import reader

    real_generate, real_score, real_read = generate.generate_video, evaluate.score_video, reader.read_video_frames

    def must_not_generate(*args, **kwargs):
        raise AssertionError("an unchanged catalog must reuse every finished video")

    from vstar_data import manifest

    def hash_no_video(url, **kwargs):
        assert "/videos/" not in url, f"the manifest re-read {url} instead of taking its recorded hash"
        return real_sha256(url, **kwargs)

    real_sha256 = manifest.sha256
    monkeypatch.setattr("tasks.generate.generate_video", must_not_generate)
    monkeypatch.setattr("vstar_model.video.reader.read_video_frames", must_not_generate)  # nor re-score one
    monkeypatch.setattr(manifest, "sha256", hash_no_video)
    second = _run(catalog, root, tiny_model_dir)
    monkeypatch.setattr(manifest, "sha256", real_sha256)
    assert second != first
    # The resumed run's videos are the cached files themselves (hard links), not copies of their bytes.
    import os

    for video in (tmp_path / "out" / "runs" / second.rsplit("/", 1)[-1] / "videos").iterdir():
        assert os.stat(video).st_nlink >= 3, video  # cache, first run, second run
    hashes = [
        {(r["catalog_id"], r["seed"]): r["video_sha256"] for r in read_table(f"{run}/samples.parquet").to_pylist()}
        for run in (first, second)
    ]
    assert hashes[0] == hashes[1]
    assert len(list_runs(root)) == 2
    assert verify_manifest(second) == []

    # One input changed (guidance 0 instead of the preset's): every video is made again.
    generated = []

    def counted_generate(*args, **kwargs):
        generated.append(kwargs["seed"])
        return real_generate(*args, **kwargs)

    monkeypatch.setattr("tasks.generate.generate_video", counted_generate)
    monkeypatch.setattr("tasks.evaluate.score_video", real_score)
    monkeypatch.setattr("vstar_model.video.reader.read_video_frames", real_read)  # new videos are scored
    third = _run(catalog, root, tiny_model_dir, model=ModelSettings(path=str(tiny_model_dir), steps=2, guidance_scale=0))
    keys = [{r["sample_key"] for r in read_table(f"{run}/samples.parquet").to_pylist()} for run in (first, third)]
    assert sorted(generated) == [0, 3, 11] and not keys[0] & keys[1]


def test_a_failing_video_is_recorded_and_others_complete(catalog, tiny_model_dir, monkeypatch):
    from tasks import generate

    real = generate.generate_video

    def flaky(model, states, config, *, seed, **kwargs):
        if seed == 11:
            raise RuntimeError("CUDA out of memory (injected)")
        return real(model, states, config, seed=seed, **kwargs)

    monkeypatch.setattr("tasks.generate.generate_video", flaky)
    run_dir = _run(catalog, "memory://vstar-failing", tiny_model_dir)
    rows = {(r["catalog_id"], r["seed"]): r for r in read_table(f"{run_dir}/samples.parquet").to_pylist()}
    assert rows[("day-to-night", 11)]["status"] == "failed"
    assert "out of memory" in rows[("day-to-night", 11)]["error"]
    assert rows[("day-to-night", 11)]["video_uri"] is None
    assert {rows[k]["status"] for k in rows if k != ("day-to-night", 11)} == {"ok"}
    assert list_runs("memory://vstar-failing").to_pylist()[0]["num_failed"] == 1
    assert verify_manifest(run_dir) == []


def test_bad_catalog_stops_before_anything_is_written(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        - id: ok-entry
          prompt: fine
        - id: ../escape
          prompt: ""
        """))
    root = tmp_path / "never"
    with pytest.raises(CatalogError, match="bad.yaml"):
        _run(str(bad), str(root), tiny_model_dir)
    assert not root.exists()
    fs = fsspec.filesystem("memory")
    assert not fs.exists("/never")


def test_ablation_variants_share_seeds_and_differ_only_in_vsp_and_tar(catalog, tiny_model_dir):
    run_dir = _run(catalog, "memory://vstar-ablation", tiny_model_dir, variants=["baseline", "tar", "vsp", "vstar"])
    rows = read_table(f"{run_dir}/samples.parquet").to_pylist()
    day = {r["variant"]: r for r in rows if r["catalog_id"] == "day-to-night" and r["seed"] == 3}
    assert set(day) == {"baseline", "tar", "vsp", "vstar"}
    assert {v: (r["vsp"], r["tar"]) for v, r in day.items()} == {
        "baseline": (False, "off"), "tar": (False, "64D1"), "vsp": (True, "off"), "vstar": (True, "64D1"),
    }
    assert day["baseline"]["states"] == ["a street from day to night"]
    assert day["vstar"]["states"] == ["a sunny street", "a street at dusk", "a street at night"]
    assert len({r["video_sha256"] for r in day.values()}) == 4
    assert day["vstar"]["video_uri"].endswith("day-to-night__s3.mp4")
    assert day["baseline"]["video_uri"].endswith("day-to-night__s3__baseline.mp4")
    assert len(rows) == 3 * 4 and verify_manifest(run_dir) == []


def test_the_summary_artifact_is_keyed_shows_the_frame_strips_bounded_and_warns_in_the_run_log(
    catalog, tiny_model_dir, tmp_path, monkeypatch, caplog
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks import outputs

    monkeypatch.setattr(outputs, "STRIPS_EMBEDDED", 2)
    empty_cache = tmp_path / "no-dreamsim-weights"
    empty_cache.mkdir()
    run_dir = _run(catalog, "memory://vstar-summary", tiny_model_dir, evaluation=EvaluationSettings(
        metric="dreamsim_open_clip_vitb32", fallback="pixel_cosine", cache_dir=str(empty_cache)))
    run_id = run_dir.rsplit("/", 1)[-1]

    with get_client(sync_client=True) as client:
        [summary] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"vstar-run-{run_id.lower()}-summary"])))
    strips = summary.data.split("## Videos", 1)[1]
    assert strips.count("data:image/png;base64,") - 3 == 2  # two strips inline, then the three plots
    listed = [line for line in strips.splitlines() if line.startswith("- ")]
    assert "1 more (strips not embedded)" in strips and len(listed) == 1 and listed[0].endswith(".png`")
    # The metric fallback reached the flow run's own logger (what the UI shows), not only the terminal.
    assert any(r.name.startswith("prefect.flow_runs") and "fallback metric 'pixel_cosine'" in r.getMessage()
               for r in caplog.records)


def test_credentials_cannot_be_storage_options_of_a_run():
    with pytest.raises(ValueError, match="environment"):
        ProduceParameters(catalog="c.yaml", storage_options={"secret": "abc"})
    assert ProduceParameters(catalog="c.yaml", storage_options={"endpoint_url": "http://127.0.0.1:9000"})
