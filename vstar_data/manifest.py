"""A run's manifest (written last) and the index of all runs under an output root.

The manifest lists every file of the run with its size and SHA-256, so a reader that finds
``manifest.json`` knows the run is complete and can verify it. The run index is one small
Parquet file per run under ``<output_root>/runs/_index/``: concurrent runs each write only
their own file, so none can lose another's row, and readers see the directory as one table
(``pyarrow.dataset.dataset(dir)``, ``duckdb: SELECT * FROM '<dir>/*.parquet'``).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import posixpath
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from vstar_data.runs import RUN_ID_PATTERN, RunPaths, check_run_id, run_index_dir
from vstar_data.schemas import RUNS_SCHEMA, read_table, write_table
from vstar_data.storage import (
    DEFAULT_RETRY,
    Retry,
    filesystem,
    join,
    list_files,
    read_bytes,
    sha256,
    with_retry,
    write_bytes_atomic,
)
from vstar_data.uris import resolve_uri

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "prefect",
    "litellm",
    "dreamsim",
    "pyarrow",
    "fsspec",
    "vstar",
)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in ``names``; None where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_version() -> str:
    """``git describe --always --dirty --tags`` of the source tree this module is tracked in,
    else ``vstar <installed version>``."""
    this_file = Path(__file__).resolve()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=this_file.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        # An installed copy may sit in some other repository (a project's .venv): only a
        # checkout that tracks this very file describes vstar's code.
        git("ls-files", "--error-unmatch", this_file.name)
        described = git("describe", "--always", "--dirty", "--tags")
    except (OSError, subprocess.SubprocessError):
        described = ""
    return described or f"vstar {package_versions(['vstar'])['vstar']}"


def build_manifest(
    run_url: str,
    run_id: str,
    *,
    parameters: Mapping[str, Any],
    row_counts: Mapping[str, int],
    created_at: datetime,
    finished_at: datetime | None = None,
    recorded_sha256: Mapping[str, str] | None = None,
    retry: Retry = DEFAULT_RETRY,
) -> dict[str, Any]:
    """The manifest of the run directory ``run_url``: every file in it (except the manifest
    itself) with size and SHA-256, plus the run's id, parameters, row counts and versions.

    ``recorded_sha256`` maps paths relative to ``run_url`` to hashes already known (copies of
    cached videos, whose hash was taken from their bytes when they were made): those files are
    not read again, which on a bucket would download the whole dataset. Every other file is read
    and hashed. ``parameters`` must be JSON-serialisable; times must be timezone-aware.
    """
    check_run_id(run_id)
    for name, moment in (("created_at", created_at), ("finished_at", finished_at)):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware, got {moment!r}")
    recorded = recorded_sha256 or {}
    files = {
        path: {"size": size, "sha256": recorded.get(path) or sha256(join(run_url, path), retry=retry)}
        for path, size in list_files(run_url, retry=retry).items()
        if path != MANIFEST_NAME
    }
    finished_at = finished_at or datetime.now(UTC)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "run_id": run_id,
        "created_at": created_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "parameters": dict(parameters),
        "row_counts": dict(row_counts),
        "code_version": code_version(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "files": files,
    }
    json.dumps(manifest, allow_nan=False)  # fail here, not half-way through writing
    return manifest


def write_manifest(
    run_url: str, manifest: Mapping[str, Any], *, retry: Retry = DEFAULT_RETRY
) -> str:
    """Write ``manifest`` as ``<run_url>/manifest.json`` atomically; call it after every data
    file of the run is written. Returns the manifest's URL."""
    url = join(run_url, MANIFEST_NAME)
    data = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False).encode("utf-8")
    write_bytes_atomic(url, data + b"\n", retry=retry)
    return url


def read_manifest(run_url: str, *, retry: Retry = DEFAULT_RETRY) -> dict[str, Any]:
    """The manifest of the run directory ``run_url``."""
    return json.loads(read_bytes(join(run_url, MANIFEST_NAME), retry=retry))


def verify_manifest(run_url: str, *, retry: Retry = DEFAULT_RETRY) -> list[str]:
    """Differences between the run directory and its manifest: files missing, changed or not
    listed. An empty list means the run is complete and intact."""
    listed = read_manifest(run_url, retry=retry)["files"]
    present = {
        path: size
        for path, size in list_files(run_url, retry=retry).items()
        if path != MANIFEST_NAME
    }
    problems = [f"missing: {path}" for path in sorted(set(listed) - set(present))]
    problems += [f"not in manifest: {path}" for path in sorted(set(present) - set(listed))]
    for path in sorted(set(listed) & set(present)):
        expected = listed[path]
        if present[path] != expected["size"]:
            problems.append(f"changed: {path} ({present[path]} bytes, the manifest says {expected['size']})")
        elif (digest := sha256(join(run_url, path), retry=retry)) != expected["sha256"]:
            problems.append(f"changed: {path} (sha256 {digest}, the manifest says {expected['sha256']})")
    return problems


@dataclass(frozen=True)
class IncompleteRun:
    """A run directory without ``manifest.json``: killed, failed, or still being written."""

    run_id: str
    run_dir: str
    last_written: datetime  # its newest file's time, else the time in its run id
    files: int
    size: int


def _modified_at(info: Mapping[str, Any]) -> datetime | None:
    """When fsspec's ``info`` says a file was last written (local, S3, GCS, memory)."""
    for key in ("mtime", "LastModified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                pass
    return None


def incomplete_runs(output_root: str, *, retry: Retry = DEFAULT_RETRY) -> list[IncompleteRun]:
    """Run directories under ``output_root`` that have no manifest, oldest first."""
    runs_url = join(output_root, "runs")
    fs, runs_path = filesystem(runs_url)

    def run_ids() -> list[str]:
        if not fs.exists(runs_path):
            return []
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(runs_path, detail=False)]
        return sorted(name for name in names if RUN_ID_PATTERN.match(name))

    found = []
    for run_id in with_retry("list", runs_url, run_ids, retry):
        run_dir = join(runs_url, run_id)
        _, path = filesystem(run_dir)
        if with_retry("check", run_dir, lambda: fs.exists(posixpath.join(path, MANIFEST_NAME)), retry):
            continue
        infos = with_retry("list", run_dir, lambda: fs.find(path, detail=True), retry)
        files = [info for info in infos.values() if info.get("type", "file") == "file"]
        times = [t for t in map(_modified_at, files) if t is not None]
        stamp = datetime.strptime(run_id.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        found.append(IncompleteRun(run_id, run_dir, max(times, default=stamp), len(files),
                                   sum(int(info.get("size") or 0) for info in files)))
    return found


def append_run_index(
    output_root: str, row: Mapping[str, Any], *, retry: Retry = DEFAULT_RETRY
) -> str:
    """Record ``row`` (fields of ``RUNS_SCHEMA``) as its run's entry in the run index,
    replacing that run's earlier entry (e.g. status "running" -> "ok"). Returns its URL."""
    run_id = check_run_id(row.get("run_id", ""))
    url = RunPaths(output_root, run_id).index_entry
    write_table(url, [row], RUNS_SCHEMA, run_id=run_id, retry=retry)
    return url


def run_status(failures: Mapping[str, int]) -> str:
    """What a finished run's index entry says: "partial" when a video or a catalog entry failed,
    "degraded" when all were made but some synopses fell back to the plain prompt, else "ok"."""
    if failures.get("samples_failed") or failures.get("synopses_failed"):
        return "partial"
    return "degraded" if failures.get("synopses_fallback") else "ok"


def _as_runs_schema(table: pa.Table) -> pa.Table:
    """An index entry in the current ``RUNS_SCHEMA``: columns added since it was written are null."""
    for field in RUNS_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(RUNS_SCHEMA.names)


def list_runs(output_root: str, *, retry: Retry = DEFAULT_RETRY) -> pa.Table:
    """All runs recorded under ``output_root``, oldest first, as a ``RUNS_SCHEMA`` table whose
    ``manifest_uri`` is resolved to an absolute URL (each index file records it relative to itself)."""
    index_dir = run_index_dir(output_root)
    tables = [
        _resolved_manifest_uris(_as_runs_schema(read_table(url, retry=retry)), url)
        for url in (
            join(index_dir, name)
            for name in list_files(index_dir, retry=retry)
            if name.endswith(".parquet") and "/" not in name
        )
    ]
    if not tables:
        return RUNS_SCHEMA.empty_table()
    runs = pa.concat_tables(tables).cast(RUNS_SCHEMA)
    return runs.sort_by([("created_at", "ascending"), ("run_id", "ascending")])


def _resolved_manifest_uris(table: pa.Table, index_file: str) -> pa.Table:
    column = table.schema.get_field_index("manifest_uri")
    resolved = [None if uri is None else resolve_uri(index_file, uri) for uri in table["manifest_uri"].to_pylist()]
    return table.set_column(column, table.schema.field(column), pa.array(resolved, pa.string()))
