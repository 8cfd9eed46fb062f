"""URIs recorded in vstar's files, and how a reader resolves them from anywhere.

The rule: a URI that points inside the output root is recorded *relative to the directory of the
file that records it* (``samples.parquet``: ``videos/<name>.mp4``; the run index
``runs/_index/<id>.parquet``: ``../<run_id>/manifest.json``; a curated index:
``../../../runs/<id>/videos/<name>.mp4``), so a root moved, copied to a bucket or read from
another machine still resolves. Anything outside the output root (real clips, a catalog) is
recorded as an absolute URL: local paths are made absolute.

``resolve_uri(file_that_records_it, uri)`` gives the absolute fsspec URL for any base, local or
``s3://``/``gs://``/``memory://``.
"""

from __future__ import annotations

import os
import posixpath


def _split(url: str) -> tuple[str, str]:
    """(protocol with ``://``, or "" for local paths; path)."""
    protocol, separator, path = url.partition("://")
    if not separator:
        return "", url
    if protocol == "file":
        return "", path
    return protocol + "://", path


def is_absolute(uri: str) -> bool:
    """Whether ``uri`` is a URL with a protocol or an absolute local path."""
    return "://" in uri or os.path.isabs(uri)


def absolute_url(url: str) -> str:
    """A local path (relative to the working directory, or ``file://``) made absolute; any other
    URL unchanged."""
    protocol, path = _split(url)
    if protocol:
        return url
    return os.path.abspath(os.path.expanduser(path))


def resolve_uri(recorded_in: str, uri: str) -> str:
    """The absolute URL of ``uri`` as recorded in the file ``recorded_in`` (a URL or local path).

    Absolute URIs come back as they are; relative ones are joined onto ``recorded_in``'s directory,
    ``..`` included.
    """
    if is_absolute(uri):
        return absolute_url(uri)
    protocol, base = _split(absolute_url(recorded_in))
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(base), uri))
    if protocol and base and not base.startswith("/") and joined.startswith(".."):
        raise ValueError(f"{uri!r} recorded in {recorded_in!r} points above the top of its store")
    return protocol + joined


def relative_uri(target: str, recorded_in: str) -> str:
    """``target`` relative to the directory of the file ``recorded_in`` (both on one store).

    Raises:
        ValueError: the two are on different stores (protocols), so no relative path joins them.
    """
    target_protocol, target_path = _split(absolute_url(target))
    base_protocol, base_path = _split(absolute_url(recorded_in))
    if target_protocol != base_protocol:
        raise ValueError(f"{target!r} and {recorded_in!r} are on different stores; record an absolute URL")
    return posixpath.relpath(posixpath.normpath(target_path), posixpath.dirname(posixpath.normpath(base_path)))


def is_inside(target: str, root: str) -> bool:
    """Whether ``target`` lies under the directory ``root`` (same store)."""
    target_protocol, target_path = _split(absolute_url(target))
    root_protocol, root_path = _split(absolute_url(root))
    root_path = posixpath.normpath(root_path)
    return target_protocol == root_protocol and (
        posixpath.normpath(target_path) + "/"
    ).startswith(root_path.rstrip("/") + "/")


def recorded_uri(target: str, recorded_in: str, output_root: str) -> str:
    """How a file at ``recorded_in`` records ``target``: relative when ``target`` lies inside
    ``output_root``, else its absolute URL."""
    if is_inside(target, output_root):
        return relative_uri(target, recorded_in)
    return absolute_url(target)
