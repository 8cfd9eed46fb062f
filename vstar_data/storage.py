"""Storage on any fsspec URL: atomic writes, reads, hashes, listings, with retries.

Local paths and ``file://`` URLs are written to a hidden temporary file in the target
directory, fsynced and renamed over the target, so readers see either the old file or the
whole new one. Object stores (``s3://``, ``gs://``) and ``memory://`` get the bytes in one
``pipe`` call: a single-object PUT is already all-or-nothing there.

Transient faults (connection resets, timeouts, other ``OSError`` s that are not known to be
permanent) are retried with exponential backoff; permanent ones (missing file, permission
denied, disk full, ...) and exhausted retries raise :class:`StorageError` naming the URL and
the cause.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

T = TypeVar("T")

# Prefix of the temporary files written next to local targets; listings skip them so a
# write killed before its rename never shows up in a manifest.
TEMP_PREFIX = ".tmp-"

_PERMANENT_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
_PERMANENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.EINVAL}
)


class StorageError(RuntimeError):
    """A storage operation failed for good; the message names the operation, URL and cause."""

    def __init__(self, operation: str, url: str, cause: BaseException, attempts: int = 1):
        self.operation = operation
        self.url = url
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{operation} {url} failed{tries}: {type(cause).__name__}: {cause}")


@dataclass(frozen=True)
class Retry:
    """How transient storage faults are retried: ``attempts`` tries in all, sleeping
    ``base_delay * 2**i`` seconds (at most ``max_delay``) between them."""

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Retry.attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(
                f"Retry delays must be >= 0, got base_delay={self.base_delay}, "
                f"max_delay={self.max_delay}"
            )

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after the ``failed_attempt``-th (0-based) failure."""
        return min(self.base_delay * 2**failed_attempt, self.max_delay)


DEFAULT_RETRY = Retry()


def is_transient(error: BaseException) -> bool:
    """Whether retrying the operation that raised ``error`` may succeed."""
    if not isinstance(error, OSError) or isinstance(error, _PERMANENT_ERRORS):
        return False
    return error.errno not in _PERMANENT_ERRNOS


def with_retry(operation: str, url: str, fn: Callable[[], T], retry: Retry = DEFAULT_RETRY) -> T:
    """Call ``fn()``, retrying transient faults; raise :class:`StorageError` otherwise.

    Any exception counts: filesystem packages raise their own types for permanent faults
    (s3fs, gcsfs retry their transient HTTP errors themselves), and the run must fail with
    the URL whatever they are.
    """
    for attempt in range(retry.attempts):
        try:
            return fn()
        except Exception as error:
            if not is_transient(error) or attempt == retry.attempts - 1:
                raise StorageError(operation, url, error, attempt + 1) from error
            retry.sleep(retry.delay(attempt))
    raise AssertionError("unreachable: the loop returns or raises")


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it.

    Raises:
        StorageError: unknown protocol, or its package (s3fs, gcsfs) is not installed.
    """
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise StorageError("open filesystem for", url, error) from error


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or local path with ``/``: ``join("s3://b/out", "runs", "x")``.

    Raises:
        ValueError: a part is empty, absolute, or contains ``..``, which would escape ``url``.
    """
    for part in parts:
        segments = part.split("/")
        if not part or part.startswith("/") or ".." in segments or "\\" in part:
            raise ValueError(f"cannot join path part {part!r} onto {url!r}")
    if not parts:
        return url
    return url + ("" if url.endswith("/") else "/") + "/".join(parts)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _write_local_atomic(path: str, data: bytes) -> None:
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def write_bytes_atomic(url: str, data: bytes, *, retry: Retry = DEFAULT_RETRY) -> None:
    """Write ``data`` to ``url`` so that readers never see a partial file."""
    fs, path = filesystem(url)
    if _is_local(fs):
        with_retry("write", url, lambda: _write_local_atomic(path, data), retry)
    else:
        with_retry("write", url, lambda: fs.pipe_file(path, data), retry)


def read_bytes(url: str, *, retry: Retry = DEFAULT_RETRY) -> bytes:
    """The whole content of ``url``."""
    fs, path = filesystem(url)
    return with_retry("read", url, lambda: fs.cat_file(path), retry)


def exists(url: str, *, retry: Retry = DEFAULT_RETRY) -> bool:
    """Whether a file or directory exists at ``url``."""
    fs, path = filesystem(url)
    return with_retry("check", url, lambda: fs.exists(path), retry)


def sha256(url: str, *, retry: Retry = DEFAULT_RETRY, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``url``, streamed in ``chunk_size`` blocks."""
    fs, path = filesystem(url)

    def digest() -> str:
        hasher = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            while chunk := handle.read(chunk_size):
                hasher.update(chunk)
        return hasher.hexdigest()

    return with_retry("hash", url, digest, retry)


def remove_stale_temp_files(url: str, max_age_seconds: float = 3600.0) -> int:
    """Delete temporary files of atomic writes under the local directory ``url`` that are older
    than ``max_age_seconds`` (a process killed mid-write leaves one); returns how many.

    A write in progress is seconds old, so concurrent runs sharing the directory are safe. Other
    filesystems write in one call and leave none: nothing to do there.
    """
    fs, root = filesystem(url)
    if not _is_local(fs) or not os.path.isdir(root):
        return 0
    cutoff = time.time() - max_age_seconds
    removed = 0
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            try:
                if name.startswith(TEMP_PREFIX) and os.stat(path).st_mtime < cutoff:
                    os.remove(path)
                    removed += 1
            except FileNotFoundError:  # another run's janitor got there first
                pass
    return removed


def list_files(url: str, *, retry: Retry = DEFAULT_RETRY) -> dict[str, int]:
    """Every file under the directory ``url``, recursively: ``{relative/posix/path: size}``.

    Temporary files of unfinished atomic writes are left out. A missing directory is empty.
    """
    fs, root = filesystem(url)
    root = root.rstrip("/")

    def find() -> dict[str, int]:
        if not fs.exists(root):
            return {}
        found = fs.find(root, detail=True)
        return {
            posixpath.relpath(path, root): int(info["size"])
            for path, info in found.items()
            if info.get("type", "file") == "file"
            and not posixpath.basename(path).startswith(TEMP_PREFIX)
        }

    return dict(sorted(with_retry("list", url, find, retry).items()))
