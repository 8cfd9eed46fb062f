"""The resume key of a video: every input that changes the video changes the key, nothing else does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tasks.generate import ReferenceBand, SampleJob, sample_row
from vstar_data.runs import RunPaths, new_run_id
from vstar_model.backbones import presets
from vstar_model.tar import unet as tar_unet


@pytest.fixture
def job(tiny_model_dir) -> SampleJob:
    return SampleJob(
        entry_id="meadow",
        prompt="a meadow from winter to spring",
        states=["a snowy meadow", "a green meadow"],
        synopsis_source="catalog",
        seed=3,
        model="tiny",
        model_path=str(tiny_model_dir),
        num_frames=8,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=9.0,
        eta=1.0,
        negative_prompt="",
        fps=8,
        tar="64D1",
        vsp=True,
    )


def _other_weights(tmp_path) -> str:
    """Another weights folder (another revision of the same model, as a hub snapshot would be)."""
    folder = tmp_path / "snapshots" / "0123abcd"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    return str(folder)


# Each input that changes the pixels or the file of a video, with a changed value.
CHANGES = {
    "prompt": {"prompt": "a meadow from spring to winter"},
    "states": {"states": ["a snowy meadow", "a meadow in bloom"]},
    "one state fewer": {"states": ["a snowy meadow"]},
    "seed": {"seed": 4},
    "frames": {"num_frames": 16},
    "height": {"height": 128},
    "width": {"width": 128},
    "steps": {"num_inference_steps": 25},
    "guidance": {"guidance_scale": 7.5},
    "guidance zero": {"guidance_scale": 0.0},
    "eta": {"eta": 0.0},
    "negative prompt": {"negative_prompt": "blurry"},
    "model preset": {"model": "modelscope"},  # same folder, another preset's loading and defaults
    "dtype": {"dtype": "bfloat16"},
    "device": {"device": "cuda"},
    "TAR sigma": {"tar": "64D4"},
    "TAR levels": {"tar": "64D1_32D8"},
    "TAR stem": {"tar": "64D1+stem"},
    "TAR off": {"tar": "off"},
    "VSP off": {"vsp": False, "states": ["a meadow from winter to spring"]},
    "fps": {"fps": 24},
}


def test_an_unchanged_job_has_the_same_key(job):
    assert job.model_copy().key() == job.key()
    # What does not reach the video: the entry's id, where its synopsis came from, the variant name.
    renamed = job.model_copy(update={"entry_id": "other", "synopsis_source": "llm", "variant": "tar"})
    assert renamed.key() == job.key()
    assert job.model_copy(update={"tar": "64d1.0"}).key() == job.key()  # the same TAR, spelt otherwise


@pytest.mark.parametrize("change", list(CHANGES.values()), ids=list(CHANGES))
def test_each_input_of_the_video_changes_its_key(job, change):
    assert job.model_copy(update=change).key() != job.key()


def test_other_weights_change_the_key(job, tmp_path):
    assert job.model_copy(update={"model_path": _other_weights(tmp_path)}).key() != job.key()


@pytest.mark.parametrize(
    ("field", "value"), [("revision", "v2"), ("fps_condition", 24)], ids=["preset revision", "fps conditioning"]
)
def test_the_presets_revision_and_fps_conditioning_change_the_key(job, monkeypatch, field, value):
    before = job.key()
    monkeypatch.setitem(presets.PRESETS, "tiny", dataclasses.replace(presets.PRESETS["tiny"], **{field: value}))
    assert job.key() != before


def test_a_new_sampler_revision_changes_every_key(job, monkeypatch):
    from tasks import generate

    before = job.key()
    monkeypatch.setattr(generate, "SAMPLER_REVISION", generate.SAMPLER_REVISION + 1)
    assert job.key() != before


def test_the_tar_step_window_changes_the_key(job, monkeypatch):
    before = job.key()
    monkeypatch.setattr(tar_unet, "DEFAULT_ACTIVE_STEPS", 0.4)
    assert tar_unet.parse_tar(job.tar).active_steps == 0.4
    assert job.key() != before
    assert job.model_copy(update={"tar": "off"}).key() == job.model_copy(update={"tar": "none"}).key()


# --- ΔA from a real clip on a DiT (paper Fig. 9 over latent frames) ---------------------------------


@pytest.fixture
def wan_job(tiny_wan_dir) -> SampleJob:
    return SampleJob(
        entry_id="meadow", prompt="a meadow from winter to spring", states=["a snowy meadow", "a green meadow"],
        synopsis_source="catalog", seed=3, model="tiny-wan", model_path=str(tiny_wan_dir), num_frames=17,
        height=32, width=32, num_inference_steps=2, guidance_scale=5.0, fps=16, tar="b0-1D1s0.5", flow_shift=3.0,
    )


def _band(value=0.5, **changes) -> ReferenceBand:
    matrix = [[1.0 if i == j else value for j in range(17)] for i in range(17)]
    return ReferenceBand(**{"matrix": matrix, "clip": "/clips/bikes.mp4", "metric": "pixel_cosine",
                            "sha256": "0" * 64, **changes})


def test_a_band_and_each_of_its_inputs_change_a_dit_videos_key(wan_job):
    jobs = [wan_job, *(wan_job.model_copy(update={"tar_band": band}) for band in (
        _band(), _band(0.4), _band(metric="dreamsim"), _band(sha256="1" * 64), _band(clip="/clips/other.mp4"),
    ))]
    assert len({job.key() for job in jobs}) == len(jobs)
    assert jobs[1].model_copy().key() == jobs[1].key()


def test_generation_takes_the_dit_or_unet_band_builder_by_family(wan_job, job, monkeypatch):
    from tasks import generate
    from vstar_model.tar.dit import DiTTARConfig
    from vstar_model.tar.reference import resample_band
    from vstar_model.tar.unet import TARConfig

    installed = []
    monkeypatch.setattr(generate, "generate_video", lambda *args, tar, **kwargs: installed.append(tar) or object())
    generate.generate_job_video(None, wan_job.model_copy(update={"tar_band": _band()}))
    unet_band = _band().model_copy(update={"matrix": [[1.0 if i == j else 0.5 for j in range(8)] for i in range(8)]})
    generate.generate_job_video(None, job.model_copy(update={"tar_band": unet_band}))
    dit, unet = installed
    assert isinstance(dit, DiTTARConfig) and dit.preset == "b0-1D1s0.5"
    torch.testing.assert_close(dit.matrix, resample_band(torch.tensor(_band().matrix), 5))  # 17 frames → 5 latent
    assert isinstance(unet, TARConfig) and unet.mode == "matrix" and unet.matrix.shape == (8, 8)


def test_a_band_videos_record_names_the_clip_and_no_sigma(wan_job):
    run = RunPaths("memory://records", new_run_id())
    row = sample_row(wan_job.model_copy(update={"tar_band": _band()}), run, "k", None, error="not made")
    assert (row["tar"], row["tar_layers"], row["tar_sigmas"]) == ("b0-1D1s0.5", ["b0-1"], None)
    assert (row["tar_band_clip"], row["tar_band_metric"], row["tar_band_sha256"]) == (
        "/clips/bikes.mp4", "pixel_cosine", "0" * 64)
    gaussian = sample_row(wan_job, run, "k", None, error="not made")
    assert (gaussian["tar_sigmas"], gaussian["tar_band_clip"]) == ([1.0], None)
