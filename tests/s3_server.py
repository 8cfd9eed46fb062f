"""A local S3-compatible server (moto_server on 127.0.0.1) for tests of buckets; pinned in
pyproject's test extra. The process and its environment (endpoint, fake keys) last one session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

MOTO_SERVER = str(Path(sys.executable).with_name("moto_server"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """The endpoint URL of a moto S3 server; s3fs (here and in subprocesses) finds it through the
    environment, with fake credentials."""
    port = _free_port()
    server = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in ("AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL",
                                                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                     "AWS_DEFAULT_REGION")}
    try:
        deadline = time.monotonic() + 120  # start-up only; no test result depends on it
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.2)
        os.environ.update(AWS_ENDPOINT_URL_S3=endpoint, FSSPEC_S3_ENDPOINT_URL=endpoint,
                          AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1")
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A new empty bucket on the local server: ``s3://<name>``."""
    import fsspec

    name = f"vstar-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
