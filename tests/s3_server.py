"""moto's S3-compatible server on 127.0.0.1, as a subprocess, for tests against a real bucket API.

``moto_server`` (moto[server], in the test extra) serves S3 offline. The server records the
requests it gets while :meth:`S3Server.recording` is open (moto's recorder), so a test can say
what a run sent: which requests, and how many body bytes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SPACE = re.compile(r"\s*")
MOTO_SERVER = str(Path(sys.executable).with_name("moto_server"))
# Credentials moto accepts; short enough (7 characters) that redaction leaves them alone.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    url: str
    headers: dict[str, str]
    body_bytes: int

    @property
    def is_copy(self) -> bool:
        return any(name.lower() == "x-amz-copy-source" for name in self.headers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, folder: Path):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._recording = folder / "requests.jsonl"
        self._log = folder / "moto.log"
        env = {**os.environ, **CREDENTIALS, "MOTO_RECORDER_FILEPATH": str(self._recording)}
        self._process = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                         stdout=self._log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # a start-up bound, not a speed assumption
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=10)
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start: {self._log.read_text()[-2000:]}")
                time.sleep(0.2)

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name."""
        import boto3

        name = f"vstar-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **_client_credentials()).create_bucket(Bucket=name)
        return name

    def _post(self, action: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{action}", method="POST", data=b"")
        urllib.request.urlopen(request, timeout=30).read()

    @contextmanager
    def recording(self):
        """The requests the server gets inside the block (a list filled when the block ends)."""
        requests: list[RecordedRequest] = []
        self._post("reset-recording")
        self._post("start-recording")
        try:
            yield requests
        finally:
            self._post("stop-recording")
            for entry in _json_objects(self._recording.read_text()):
                body = entry.get("body") or ""
                size = len(base64.b64decode(body)) if entry.get("body_encoded") else len(body.encode())
                requests.append(RecordedRequest(entry["method"], entry["url"], entry["headers"], size))

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _json_objects(text: str) -> list[dict]:
    """The objects of moto's recording, one after the other. moto writes an entry and its newline
    in two writes, so entries of concurrent requests can share a line (each entry is one write)."""
    decoder, objects = json.JSONDecoder(), []
    position = _SPACE.match(text, 0).end()
    while position < len(text):
        entry, position = decoder.raw_decode(text, position)
        objects.append(entry)
        position = _SPACE.match(text, position).end()
    return objects


def _client_credentials() -> dict[str, str]:
    return {"aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": CREDENTIALS["AWS_DEFAULT_REGION"]}
