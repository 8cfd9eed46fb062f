"""The vstar command as a user runs it (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
