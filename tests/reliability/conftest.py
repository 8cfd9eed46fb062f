"""Shared pieces of the fault-injection suite: flow runs on the tiny model, CLI subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.produce import produce_dataset
from tasks.evaluate import EvaluationSettings
from tasks.jobs import ModelSettings

VSTAR = Path(sys.executable).with_name("vstar")  # the console script of this environment


def run_flow(catalog: Path, root: str, model_dir: Path, **overrides) -> str:
    """One produce-dataset run on the tiny model: 8 frames, 1 step, no metric; returns its run dir.

    As many GPU slots as videos: the model's lock serialises generation anyway, and a waiting
    task polls its slot for seconds.
    """
    params = dict(
        catalog=str(catalog),
        output_root=root,
        frames=8,
        gpu_slots=16,
        model=ModelSettings(path=str(model_dir), steps=1),
        evaluation=EvaluationSettings(metric="none"),
    )
    params.update(overrides)
    return produce_dataset(**params)


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    """Environment of a ``vstar`` subprocess: its own Prefect home (ephemeral API), offline."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    return {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def vstar(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the ``vstar`` command to completion; output captured as text."""
    return subprocess.run(
        [str(VSTAR), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
