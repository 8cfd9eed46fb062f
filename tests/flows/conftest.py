"""A local Prefect server for the deployment tests (the way users run vstar in production)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # SIGTERM may not stop a worker quickly
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """One server for a module's tests (its start-up is ~20 s of a loaded suite); each test
    deploys into it again and writes under its own folder."""
    port = _free_port()
    home = tmp_path_factory.mktemp("prefect-server") / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off", "--no-ui"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300  # a start-up bound for a loaded machine, not a speed check
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("prefect server did not become healthy")
                time.sleep(0.5)
        yield env
    finally:
        stop_process(server)


def prefect_cli(env, *args, cwd, timeout=600):
    result = subprocess.run([PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout



@pytest.fixture
def project(tmp_path) -> Path:
    """A clean copy of the checkout: workers run flows from the directory they start in."""
    copy = tmp_path / "project"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "__pycache__"))
    return copy
