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


# -- object-store faults, recognised without importing the clients --------------------------------


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause  # how s3fs turns a ClientError into an OSError
    return error


class HttpError(Exception):
    """Shaped like gcsfs.retry.HttpError: the HTTP status in ``code``."""

    def __init__(self, code: int):
        super().__init__(f"HTTP {code}")
        self.code = code


def _object_store_faults():
    from aiohttp import ServerDisconnectedError
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    return [
        ("endpoint-down", EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        ("connect-timeout", ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        ("read-timeout", ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        ("disconnected", ServerDisconnectedError(), True),
        ("slow-down", _client_error("SlowDown", 503), True),
        ("throttled", _client_error("ThrottlingException", 400), True),
        ("internal-error", _client_error("InternalError", 500), True),
        ("s3fs-eio-from-503", _raised_from(OSError(errno.EIO, "x"), _client_error("ServiceUnavailable", 503)), True),
        ("gcs-503", HttpError(503), True),
        ("gcs-429", HttpError(429), True),
        ("access-denied", _client_error("AccessDenied", 403), False),
        ("no-such-bucket", _client_error("NoSuchBucket", 404), False),
        ("s3fs-permission", _raised_from(PermissionError("denied"), _client_error("AccessDenied", 403)), False),
        ("s3fs-eio-from-400", _raised_from(OSError(errno.EIO, "x"), _client_error("InvalidArgument", 400)), False),
        ("gcs-404", HttpError(404), False),
    ]


@pytest.mark.parametrize("name, error, transient", _object_store_faults(), ids=[f[0] for f in _object_store_faults()])
def test_object_store_faults_are_transient_or_permanent_by_class_and_status(name, error, transient):
    assert is_transient(error) is transient


def test_an_endpoint_outage_is_retried_and_a_denial_is_not(flaky, sleep):
    from botocore.exceptions import EndpointConnectionError

    flaky.faults = [EndpointConnectionError(endpoint_url="http://127.0.0.1:1")] * 2
    write_bytes_atomic("flaky://bucket/d.bin", b"x", retry=Retry(attempts=3, sleep=sleep))
    assert flaky.calls == 3 and len(sleep.delays) == 2
    flaky.faults = [_client_error("AccessDenied", 403)]
    with pytest.raises(StorageError, match="ClientError"):
        write_bytes_atomic("flaky://bucket/d.bin", b"x", retry=Retry(attempts=3, sleep=sleep))
    assert flaky.calls == 4 and len(sleep.delays) == 2


def test_the_storage_module_imports_no_object_store_client():
    import subprocess
    import sys

    code = "import sys, vstar_data.storage; print(sorted(m for m in ('botocore', 'aiohttp', 's3fs', 'gcsfs') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- copies that keep bytes where they are --------------------------------------------------------


def test_a_local_copy_is_a_hard_link_that_keeps_its_content_when_the_source_is_replaced(tmp_path):
    source, target = tmp_path / "cache" / "v.mp4", tmp_path / "run" / "videos" / "v.mp4"
    write_bytes_atomic(str(source), b"first video")
    storage.copy_file(str(source), str(target))
    assert target.read_bytes() == b"first video"
    assert os.stat(target).st_ino == os.stat(source).st_ino  # no bytes were read or written
    write_bytes_atomic(str(source), b"replaced")
    assert target.read_bytes() == b"first video"
    assert [p.name for p in target.parent.iterdir()] == ["v.mp4"]


def test_a_local_copy_falls_back_to_copying_where_links_fail(tmp_path, monkeypatch):
    def no_links(*args):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(storage.os, "link", no_links)
    source, target = tmp_path / "a.bin", tmp_path / "b" / "a.bin"
    source.write_bytes(b"payload")
    storage.copy_file(str(source), str(target))
    assert target.read_bytes() == b"payload" and os.stat(target).st_ino != os.stat(source).st_ino


def test_a_copy_on_one_store_asks_the_store_to_copy(memory_root, monkeypatch):
    write_bytes_atomic(join(memory_root, "cache/v.mp4"), b"video")
    copies = []
    real_copy = MemoryFileSystem.copy
    monkeypatch.setattr(MemoryFileSystem, "copy", lambda self, a, b, **kw: copies.append((a, b)) or real_copy(self, a, b, **kw))
    monkeypatch.setattr(MemoryFileSystem, "cat_file", lambda *a, **kw: pytest.fail("the bytes were read"))
    storage.copy_file(join(memory_root, "cache/v.mp4"), join(memory_root, "run/v.mp4"))
    monkeypatch.undo()
    assert len(copies) == 1 and read_bytes(join(memory_root, "run/v.mp4")) == b"video"


def test_a_copy_of_a_missing_file_fails_naming_it(tmp_path, sleep):
    with pytest.raises(StorageError, match="missing.mp4.*FileNotFoundError"):
        storage.copy_file(str(tmp_path / "missing.mp4"), str(tmp_path / "out.mp4"), retry=Retry(sleep=sleep))
    assert sleep.delays == [] and not (tmp_path / "out.mp4").exists()


# -- the output root check and storage options ----------------------------------------------------


def test_check_writable_leaves_nothing_and_names_an_unusable_root(tmp_path, memory_root, sleep):
    storage.check_writable(str(tmp_path / "new-root"))
    storage.check_writable(memory_root)
    assert list((tmp_path / "new-root").iterdir()) == [] and list_files(memory_root) == {}
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StorageError, match="a-file"):
        storage.check_writable(str(tmp_path / "a-file"), retry=Retry(sleep=sleep))


class OptionsFileSystem(MemoryFileSystem):
    protocol = "withoptions"

    def __init__(self, endpoint_url=None, **kwargs):
        super().__init__(**kwargs)
        self.endpoint_url = endpoint_url


def test_storage_options_reach_filesystems_of_the_roots_protocol_only_inside_the_block():
    fsspec.register_implementation("withoptions", OptionsFileSystem, clobber=True)
    with storage.using_storage_options("withoptions://bucket/out", {"endpoint_url": "http://127.0.0.1:9"}):
        fs, _ = storage.filesystem("withoptions://bucket/out/runs/x")
        assert fs.endpoint_url == "http://127.0.0.1:9"
        assert storage.storage_options_for("memory://elsewhere") == {}
    fs, _ = storage.filesystem("withoptions://bucket/out/runs/x")
    assert fs.endpoint_url is None


@pytest.mark.parametrize("name", ["key", "secret", "token", "aws_secret_access_key", "password"])
def test_credentials_are_refused_as_storage_options(name):
    with pytest.raises(ValueError, match="environment"):
        storage.check_storage_options({name: "value"})


def test_storage_options_parse_json_values_and_keep_other_text():
    assert storage.parse_storage_option("use_ssl=false") == ("use_ssl", False)
    assert storage.parse_storage_option('client_kwargs={"region_name": "eu-west-1"}') == (
        "client_kwargs", {"region_name": "eu-west-1"})
    assert storage.parse_storage_option("endpoint_url=http://127.0.0.1:9000") == (
        "endpoint_url", "http://127.0.0.1:9000")
    assert storage.check_storage_options({"token": "anon"}) == {"token": "anon"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        storage.parse_storage_option("no-equals-sign")


def test_the_default_retries_outlast_an_endpoint_outage_of_several_seconds():
    waits = [storage.DEFAULT_RETRY.delay(i) for i in range(storage.DEFAULT_RETRY.attempts - 1)]
    assert sum(waits) > 8  # an 8 s outage was seen; our waits alone span it (the clients add their own)
