"""Storage on any fsspec URL: atomic writes, reads, hashes, listings, with retries.

Local paths and ``file://`` URLs are written to a hidden temporary file in the target
directory, fsynced and renamed over the target, so readers see either the old file or the
whole new one. Object stores (``s3://``, ``gs://``) and ``memory://`` get the bytes in one
``pipe`` call: a single-object PUT is already all-or-nothing there.

Transient faults (connection resets, timeouts, other ``OSError`` s that are not known to be
permanent, and the connection, timeout, throttling and 5xx errors of botocore/aiobotocore, s3fs,
gcsfs and aiohttp, recognised by class name so none of them is imported here) are retried with
exponential backoff; permanent ones (missing file or bucket, permission denied, disk full, other
4xx, ...) and exhausted retries raise :class:`StorageError` naming the URL and the cause.

Every filesystem is made by :func:`filesystem`, which applies the storage options (endpoint,
region, ...) that :func:`using_storage_options` set for a root's protocol.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import os
import posixpath
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
# Network faults of the object-store clients, which are not OSErrors: botocore / aiobotocore
# (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ...), aiohttp (under s3fs and
# gcsfs) and google-auth's transport.
_TRANSIENT_CLASS_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ProxyConnectionError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "HTTPClientError",
        "ClientConnectionError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientPayloadError",
        "TransportError",
    }
)
# Error codes and HTTP statuses that say "try again later" (S3 and its look-alikes, GCS).
_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "SlowDown",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


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

    # 11 s of waits in all (0.2, 0.4, ... capped at 5): an endpoint down for several seconds (an 8 s
    # outage was seen) comes back within them.
    attempts: int = 7
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
# Before any work a user waits for the verdict: one try (with the object-store client's own
# retries, which ride out a blip) names a wrong endpoint in seconds, not after the run's 11 s backoff.
PREFLIGHT_RETRY = Retry(attempts=1)


def _http_status_and_code(error: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and service error code of a botocore ``ClientError`` (its ``response``
    dict) or a gcsfs ``HttpError`` (its ``code``); (None, None) for anything else."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return (status if isinstance(status, int) else None), response.get("Error", {}).get("Code")
    code = getattr(error, "code", None)
    if isinstance(code, int) and not isinstance(code, bool) and 100 <= code < 600:
        return code, None
    return None, None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from (s3fs turns a ClientError into an OSError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(error: BaseException) -> bool:
    """Whether retrying the operation that raised ``error`` may succeed."""
    for cause in _causes(error):
        if {cls.__name__ for cls in type(cause).__mro__} & _TRANSIENT_CLASS_NAMES:
            return True
        status, code = _http_status_and_code(cause)
        if code in _THROTTLING_CODES or status in _TRANSIENT_STATUSES:
            return True
        if status is not None or code is not None:  # any other answer of the service is final
            return False
    if not isinstance(error, OSError) or isinstance(error, _PERMANENT_ERRORS):
        return False
    return error.errno not in _PERMANENT_ERRNOS


def with_retry(operation: str, url: str, fn: Callable[[], T], retry: Retry = DEFAULT_RETRY) -> T:
    """Call ``fn()``, retrying transient faults; raise :class:`StorageError` otherwise.

    Any exception counts: filesystem packages raise their own types for permanent faults, and
    the run must fail with the URL whatever they are.
    """
    for attempt in range(retry.attempts):
        try:
            return fn()
        except Exception as error:
            if not is_transient(error) or attempt == retry.attempts - 1:
                raise StorageError(operation, url, error, attempt + 1) from error
            retry.sleep(retry.delay(attempt))
    raise AssertionError("unreachable: the loop returns or raises")


# {protocol: fsspec options} for this flow run (copied into the threads Prefect runs tasks in).
_STORAGE_OPTIONS: contextvars.ContextVar[Mapping[str, Mapping[str, Any]]] = contextvars.ContextVar(
    "vstar_storage_options", default={}
)
# Option names that carry credentials: they would be recorded in the manifest and in Prefect's
# database with the run's parameters, so they must come from the environment instead.
_SECRET_OPTION = re.compile(r"(^|_)(key|secret|token|password|passwd|credentials?)($|_)", re.IGNORECASE)
# gcsfs's token modes name no secret.
_NON_SECRET_TOKENS = frozenset({"anon", "cloud", "google_default", "browser"})


def protocol_of(url: str) -> str:
    """``"s3"`` for ``s3://b/x``, ``"file"`` for a local path."""
    protocol, _ = fsspec.core.split_protocol(str(url))
    return protocol or "file"


def check_storage_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as a dict, refusing credentials (they belong in the environment).

    Raises:
        ValueError: an option names a key, secret, token or password.
    """
    for name, value in options.items():
        if _SECRET_OPTION.search(name) and not (isinstance(value, str) and value in _NON_SECRET_TOKENS):
            raise ValueError(
                f"storage option {name!r} holds a credential, which would be stored with the run's "
                "parameters: set it in the environment instead (AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY / AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) or a config file"
            )
    return dict(options)


def parse_storage_option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` as (key, value); the value is read as JSON when it parses
    (``use_ssl=false``, ``client_kwargs={"region_name": "eu-west-1"}``), else kept as text."""
    import json

    name, separator, raw = text.partition("=")
    if not separator or not name.strip():
        raise ValueError(f"storage option {text!r} is not KEY=VALUE")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name.strip(), value


@contextmanager
def using_storage_options(root_url: str, options: Mapping[str, Any] | None) -> Iterator[None]:
    """Apply fsspec ``options`` to every URL with ``root_url``'s protocol inside the block
    (``endpoint_url`` of an S3-compatible server, ``client_kwargs``, ``anon``, ...)."""
    if not options:
        yield
        return
    merged = {**_STORAGE_OPTIONS.get(), protocol_of(root_url): check_storage_options(options)}
    token = _STORAGE_OPTIONS.set(merged)
    try:
        yield
    finally:
        _STORAGE_OPTIONS.reset(token)


def storage_options_for(url: str) -> dict[str, Any]:
    """The options :func:`filesystem` applies to ``url`` (for readers that open it themselves)."""
    return dict(_STORAGE_OPTIONS.get().get(protocol_of(url), {}))


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` (with the storage options in force) and the path in it.

    Raises:
        StorageError: unknown protocol, or its package (s3fs, gcsfs) is not installed.
    """
    try:
        return fsspec.core.url_to_fs(url, **storage_options_for(url))
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


def _replace_local_atomically(path: str, fill: Callable[[str], None]) -> None:
    """``fill`` a hidden temporary file next to ``path``, then rename it over ``path``."""
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{name}.{uuid.uuid4().hex[:8]}")
    try:
        fill(temp)
        os.replace(temp, path)
    except BaseException:
        if os.path.lexists(temp):
            os.remove(temp)
        raise


def _write_local_atomic(path: str, data: bytes) -> None:
    def fill(temp: str) -> None:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    _replace_local_atomically(path, fill)


def write_bytes_atomic(url: str, data: bytes, *, retry: Retry = DEFAULT_RETRY) -> None:
    """Write ``data`` to ``url`` so that readers never see a partial file."""
    fs, path = filesystem(url)
    if _is_local(fs):
        with_retry("write", url, lambda: _write_local_atomic(path, data), retry)
    else:
        with_retry("write", url, lambda: fs.pipe_file(path, data), retry)


def _copy_local_atomic(source: str, target: str) -> None:
    def fill(temp: str) -> None:
        try:
            os.link(source, temp)  # the cache file's bytes, without reading them
        except OSError as error:
            if isinstance(error, FileNotFoundError):
                raise
            shutil.copyfile(source, temp)  # another device, or no hard links here
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())

    _replace_local_atomically(target, fill)


def copy_file(source_url: str, target_url: str, *, retry: Retry = DEFAULT_RETRY) -> None:
    """Copy a file so that its bytes do not pass through this process where the storage allows:
    on one object store the server copies (S3 CopyObject, GCS rewrite), on a local disk the target
    is a hard link (else a copy) renamed into place; readers never see a partial target.

    Local files are never rewritten in place (writes rename a new file over the old), so a
    hard-linked copy keeps its content when its source is replaced.
    """
    source_fs, source = filesystem(source_url)
    target_fs, target = filesystem(target_url)
    if _is_local(source_fs) and _is_local(target_fs):
        with_retry("copy", f"{source_url} to {target_url}", lambda: _copy_local_atomic(source, target), retry)
    elif source_fs == target_fs:
        with_retry("copy", f"{source_url} to {target_url}", lambda: target_fs.copy(source, target), retry)
    else:  # two stores: the bytes have to travel through here
        write_bytes_atomic(target_url, read_bytes(source_url, retry=retry), retry=retry)


def remove(url: str, *, recursive: bool = False, retry: Retry = DEFAULT_RETRY) -> None:
    """Delete the file (or, with ``recursive``, the directory tree) at ``url``."""
    fs, path = filesystem(url)
    with_retry("delete", url, lambda: fs.rm(path, recursive=recursive), retry)


def check_writable(url: str, *, retry: Retry = PREFLIGHT_RETRY) -> None:
    """Write and delete a small file under the directory ``url``, so that a wrong endpoint, a
    missing bucket or missing permissions show before any work (as :class:`StorageError`)."""
    probe = join(url, f"{TEMP_PREFIX}write-check-{uuid.uuid4().hex[:8]}")
    write_bytes_atomic(probe, b"", retry=retry)
    remove(probe, retry=retry)


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
