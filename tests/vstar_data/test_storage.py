from __future__ import annotations

import errno
import hashlib
import os
from typing import ClassVar

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from vstar_data import storage
from vstar_data.storage import (
    Retry,
    StorageError,
    exists,
    is_transient,
    join,
    list_files,
    read_bytes,
    sha256,
    write_bytes_atomic,
)


class FlakyFileSystem(MemoryFileSystem):
    """memory:// that raises the queued ``faults`` one per operation before working."""

    protocol = "flaky"
    faults: ClassVar[list[BaseException]] = []
    calls: ClassVar[int] = 0

    def _maybe_fail(self) -> None:
        type(self).calls += 1
        if self.faults:
            raise self.faults.pop(0)

    def cat_file(self, path, *args, **kwargs):
        self._maybe_fail()
        return super().cat_file(path, *args, **kwargs)

    def pipe_file(self, path, *args, **kwargs):
        self._maybe_fail()
        return super().pipe_file(path, *args, **kwargs)


@pytest.fixture
def flaky():
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.faults = []
    FlakyFileSystem.calls = 0
    yield FlakyFileSystem
    FlakyFileSystem.faults = []


class RecordingSleep:
    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleep():
    return RecordingSleep()


@pytest.mark.parametrize(
    "url, parts, expected",
    [
        ("/data/out", ("runs", "r1"), "/data/out/runs/r1"),
        ("/data/out/", ("runs/r1", "x.parquet"), "/data/out/runs/r1/x.parquet"),
        ("s3://bucket/out", ("runs",), "s3://bucket/out/runs"),
        ("memory://", ("a", "b"), "memory://a/b"),
        ("gs://b", (), "gs://b"),
    ],
)
def test_join(url, parts, expected):
    assert join(url, *parts) == expected


@pytest.mark.parametrize("part", ["", "/etc", "..", "a/../b", "a\\b"])
def test_join_rejects_parts_that_escape(part):
    with pytest.raises(ValueError, match="cannot join"):
        join("memory://root", part)


@pytest.mark.parametrize("kind", ["path", "file-url", "memory"])
def test_write_read_round_trip_creates_parents(kind, tmp_path, memory_root):
    base = {"path": str(tmp_path), "file-url": f"file://{tmp_path}", "memory": memory_root}[kind]
    url = join(base, "deep", "er", "blob.bin")
    assert not exists(url)
    write_bytes_atomic(url, b"first")
    write_bytes_atomic(url, b"second")
    assert exists(url)
    assert read_bytes(url) == b"second"
    assert sha256(url) == hashlib.sha256(b"second").hexdigest()
    assert list_files(base) == {"deep/er/blob.bin": len(b"second")}


def test_sha256_streams_in_chunks(tmp_path):
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    assert sha256(str(tmp_path / "f"), chunk_size=333) == hashlib.sha256(data).hexdigest()


def test_local_write_failing_before_rename_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "table.parquet"
    write_bytes_atomic(str(target), b"old complete content")

    def crash(src, dst):
        raise KeyboardInterrupt  # as if the process were stopped between write and rename

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(str(target), b"new")
    assert target.read_bytes() == b"old complete content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]


def test_listing_skips_temp_files_left_by_a_killed_writer(tmp_path):
    write_bytes_atomic(str(tmp_path / "a.mp4"), b"a")
    (tmp_path / f"{storage.TEMP_PREFIX}b.mp4.1234abcd").write_bytes(b"half")
    assert list_files(str(tmp_path)) == {"a.mp4": 1}


def test_stale_temp_files_are_removed_fresh_ones_and_data_kept(tmp_path, memory_root):
    (tmp_path / "samples").mkdir()
    stale = tmp_path / "samples" / f"{storage.TEMP_PREFIX}a.mp4.1234abcd"
    fresh = tmp_path / f"{storage.TEMP_PREFIX}b.json.5678abcd"  # a write in progress elsewhere
    data = tmp_path / "samples" / "a.mp4"
    for path in (stale, fresh, data):
        path.write_bytes(b"x")
    two_hours_ago = os.stat(stale).st_mtime - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    os.utime(data, (two_hours_ago, two_hours_ago))
    assert storage.remove_stale_temp_files(str(tmp_path)) == 1
    assert not stale.exists() and fresh.exists() and data.exists()
    assert storage.remove_stale_temp_files(f"{memory_root}/cache") == 0  # object stores leave none
    assert storage.remove_stale_temp_files(str(tmp_path / "missing")) == 0


def test_list_files_of_missing_directory_is_empty(memory_root):
    assert list_files(join(memory_root, "nothing")) == {}


@pytest.mark.parametrize(
    "error, transient",
    [
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (OSError(errno.EIO, "I/O error"), True),
        (OSError("unspecified"), True),
        (FileNotFoundError("gone"), False),
        (PermissionError("denied"), False),
        (IsADirectoryError("dir"), False),
        (OSError(errno.ENOSPC, "disk full"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_transient(error, transient):
    assert is_transient(error) is transient


def test_transient_faults_are_retried_with_backoff(flaky, sleep):
    retry = Retry(attempts=4, base_delay=0.5, max_delay=1.5, sleep=sleep)
    flaky.faults = [ConnectionResetError("reset"), TimeoutError("timed out")]
    write_bytes_atomic("flaky://bucket/a.bin", b"payload", retry=retry)
    flaky.faults = [ConnectionError("refused")]
    assert read_bytes("flaky://bucket/a.bin", retry=retry) == b"payload"
    assert flaky.calls == 5
    assert sleep.delays == [0.5, 1.0, 0.5]


def test_exhausted_retries_raise_storage_error_naming_path_and_cause(flaky, sleep):
    flaky.faults = [TimeoutError("timed out")] * 3
    with pytest.raises(StorageError) as raised:
        write_bytes_atomic("flaky://bucket/b.bin", b"x", retry=Retry(attempts=3, sleep=sleep))
    message = str(raised.value)
    assert (
        "flaky://bucket/b.bin" in message and "TimeoutError" in message and "3 attempts" in message
    )
    assert isinstance(raised.value.__cause__, TimeoutError)
    assert len(sleep.delays) == 2


@pytest.mark.parametrize(
    "fault",
    [PermissionError("access denied"), OSError(errno.ENOSPC, "full"), RuntimeError("HTTP 400")],
)
def test_permanent_fault_fails_at_once(flaky, sleep, fault):
    flaky.faults = [fault]
    with pytest.raises(StorageError, match=r"flaky://bucket/c\.bin") as raised:
        write_bytes_atomic("flaky://bucket/c.bin", b"x", retry=Retry(attempts=5, sleep=sleep))
    assert raised.value.__cause__ is fault
    assert flaky.calls == 1 and sleep.delays == []


def test_missing_file_is_a_permanent_error(memory_root, sleep):
    url = join(memory_root, "missing.bin")
    with pytest.raises(StorageError, match=r"missing\.bin.*FileNotFoundError"):
        read_bytes(url, retry=Retry(sleep=sleep))
    assert sleep.delays == []


def test_unknown_protocol_is_a_storage_error():
    with pytest.raises(StorageError, match="nosuchproto://x"):
        read_bytes("nosuchproto://x")


def test_retry_rejects_bad_settings():
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=0)
    with pytest.raises(ValueError, match="delays"):
        Retry(base_delay=-1)
