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
                    ["runs", "list", "--help"], ["catalog", "validate", "--help"]):
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


def test_wan_frame_counts_are_refused_before_prefect_starts(tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("- id: sixteen\n  prompt: a cat\n  frames: 16\n")
    out = tmp_path / "out"
    result = _vstar("produce", str(catalog), "--out", str(out), "--model", "tiny-wan", "--metric", "none",
                    env={"VSTAR_CACHE_DIR": str(tmp_path / "cache")}, tmp_path=tmp_path)
    assert result.returncode == 2
    assert "entry 'sixteen': model 'tiny-wan' makes 4k+1 frames" in result.stderr
    assert "use 13 or 17" in result.stderr and "Traceback" not in result.stdout + result.stderr
    assert not out.exists()
    assert not list((tmp_path / "prefect").glob("*"))  # Prefect's home is empty: no server, no database
    assert not (tmp_path / "cache").exists()  # and the built-in model was not even built

    catalog.write_text("- id: sixteen\n  prompt: a cat\n  frames: 16\n  model: tiny-wan\n")
    result = _vstar("catalog", "validate", str(catalog), tmp_path=tmp_path)
    assert result.returncode == 2 and "row 1" in result.stderr and "4k+1 frames" in result.stderr
