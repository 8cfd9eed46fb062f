"""``vstar produce`` whose whole process group (Prefect's ephemeral server included) is killed with
SIGKILL right after its first finished video is recorded, as on a power cut or an OOM kill.

The crash-safety test runs this instead of the console script so that the kill lands at the same
point on any machine, however fast: a test that polled for the first video and then killed would
race the run (on a fast or idle machine every video can finish between two polls).
"""

from __future__ import annotations

import os
import signal
import sys

from vstar_cli import app  # first: it sets Prefect's defaults before Prefect is imported

import tasks.generate  # noqa: E402

_write = tasks.generate.write_bytes_atomic


def _write_then_lose_power(url: str, data: bytes, **kwargs) -> None:
    _write(url, data, **kwargs)
    if "/cache/samples/" in url and url.endswith(".json"):  # a video's record: the video is complete
        os.killpg(os.getpgid(0), signal.SIGKILL)


tasks.generate.write_bytes_atomic = _write_then_lose_power

if __name__ == "__main__":
    sys.exit(app(sys.argv[1:], prog_name="vstar"))
