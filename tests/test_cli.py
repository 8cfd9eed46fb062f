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


def _index_entries(root: Path, count: int) -> list[str]:
    import json
    from datetime import UTC, datetime, timedelta

    from vstar_data.manifest import append_run_index
    from vstar_data.runs import new_run_id

    start = datetime(2026, 11, 2, tzinfo=UTC)
    ids = [new_run_id(start + timedelta(hours=i)) for i in range(count)]
    for run_id in ids:
        append_run_index(str(root), {
            "run_id": run_id, "created_at": start, "finished_at": start, "status": "ok", "catalog": "c.yaml",
            "num_samples": 4, "num_failed": 0, "num_synopses_fallback": 0, "num_synopses_failed": 0,
            "parameters_json": json.dumps({}), "manifest_uri": None,
        })
    return ids


def test_runs_list_exits_cleanly_every_time(tmp_path):
    """Arrow's I/O threads reading a Python file object could still be calling into Python when the
    interpreter exited: the process aborted with 134 after printing (seen in 2 of 10 calls)."""
    ids = _index_entries(tmp_path / "out", 10)
    for attempt in range(20):
        result = _vstar("runs", "list", str(tmp_path / "out"), tmp_path=tmp_path)
        assert result.returncode == 0, (attempt, result.returncode, result.stderr[-2000:])
        assert all(run_id in result.stdout for run_id in ids)
