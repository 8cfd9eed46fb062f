"""Export a curated dataset for training: WebDataset shards or a Hugging Face datasets layout.

- **WebDataset**: ``<out>/000000.tar, 000001.tar, …``; one sample is ``<clip_id>.mp4`` plus
  ``<clip_id>.json`` (the index row: prompt, states, keyframes, per-frame captions, metrics,
  provenance). A shard closes at ``max_count`` samples or before it would pass ``max_bytes``.
  Readable by the ``webdataset`` package and by ``tarfile``.
- **Hugging Face**: ``<out>/data/train-00000-of-0000N.parquet`` holding the index columns plus
  ``video`` (struct of the mp4 ``bytes`` and its file name ``path``, the layout of HF's Video
  feature), and a ``README.md`` whose YAML header declares the files, so
  ``load_dataset("parquet", data_files=…)`` or the hub reads it. Decode a row with PyAV:
  ``av.open(io.BytesIO(row["video"]["bytes"]))``.

Both write to any fsspec URL, check every video against its ``video_sha256``, and write
``manifest.json`` last. The output folder must be empty.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from vstar_data.manifest import build_manifest, write_manifest
from vstar_data.schemas import DATASET_SCHEMA, RUN_ID_KEY, read_table, table_run_id
from vstar_data.storage import TEMP_PREFIX, exists, filesystem, join, list_files, read_bytes, write_bytes_atomic
from vstar_data.uris import absolute_url, resolve_uri

Progress = Callable[[int, int], None]  # (samples done, total)
VIDEO_STRUCT = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


class ExportError(ValueError):
    """The dataset cannot be exported as asked (no dataset there, a video changed, a non-empty output)."""


def dataset_version_dir(url: str) -> str:
    """A dataset version folder (with ``index.parquet``), or a dataset name folder: its newest
    finished version (one with ``manifest.json``)."""
    url = absolute_url(url).rstrip("/")
    if exists(join(url, "index.parquet")):
        return url
    versions = sorted({path.split("/", 1)[0] for path in list_files(url) if path.endswith("/manifest.json")
                       and path.count("/") == 1})
    if not versions:
        raise ExportError(f"no curated dataset at {url} (expected index.parquet, or versions with a manifest.json)")
    return join(url, versions[-1])


def read_index(dataset_dir: str) -> tuple[str, pa.Table]:
    """(index URL, index table) of a dataset version folder."""
    index_url = join(dataset_dir, "index.parquet")
    table = read_table(index_url)
    missing = sorted(set(DATASET_SCHEMA.names) - set(table.column_names))
    if missing:
        raise ExportError(f"{index_url} is not a vstar dataset index: columns {missing} missing")
    return index_url, table


def plan_shards(sizes: list[int], max_count: int, max_bytes: int | None) -> list[list[int]]:
    """Consecutive samples grouped into shards of at most ``max_count`` samples and, where a
    shard holds more than one, at most ``max_bytes`` bytes (a larger sample gets a shard alone)."""
    if max_count < 1 or (max_bytes is not None and max_bytes < 1):
        raise ExportError(f"shard limits must be >= 1, got max_count={max_count}, max_bytes={max_bytes}")
    shards: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for i, size in enumerate(sizes):
        if current and (len(current) >= max_count or (max_bytes is not None and current_bytes + size > max_bytes)):
            shards.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def sample_metadata(row: dict, index_url: str) -> dict:
    """The JSON metadata of one clip: its index row, the video's URI made absolute."""
    metadata = dict(row)
    metadata["video_uri"] = resolve_uri(index_url, row["video_uri"])
    metadata["created_at"] = row["created_at"].isoformat()
    return metadata


@contextmanager
def _atomic_output(url: str) -> Iterator[IO[bytes]]:
    """A file to stream into that appears at ``url`` only once complete: a renamed temporary file
    locally; on object stores the upload itself (an object appears only when its upload completes)."""
    from fsspec.implementations.local import LocalFileSystem

    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        with fs.open(path, "wb") as handle:
            yield handle
        return
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f"{TEMP_PREFIX}{name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(temp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def _check_empty(out: str) -> None:
    if list_files(out):
        raise ExportError(f"{out} is not empty: export into a new folder")


def _verified_video(row: dict, index_url: str) -> bytes:
    url = resolve_uri(index_url, row["video_uri"])
    data = read_bytes(url)
    if hashlib.sha256(data).hexdigest() != row["video_sha256"]:
        raise ExportError(f"{url} does not match the sha256 the dataset recorded for clip {row['clip_id']}")
    return data


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: same dataset, same shard bytes
    tar.addfile(info, io.BytesIO(data))


def _finish(out: str, dataset_dir: str, table: pa.Table, kind: str, files: list[str], extra: dict) -> str:
    version = table_run_id(table) or dataset_dir.rsplit("/", 1)[-1]
    manifest = build_manifest(out, version, parameters={"dataset": dataset_dir, "format": kind, **extra},
                              row_counts={"clips": table.num_rows, "files": len(files)},
                              created_at=datetime.now(timezone.utc))
    return write_manifest(out, manifest)


def _video_sizes(table: pa.Table, index_url: str) -> list[int]:
    """Each clip's video size in bytes (listing the folders, not reading the videos)."""
    sizes: dict[str, int] = {}
    uris = [resolve_uri(index_url, uri) for uri in table["video_uri"].to_pylist()]
    for folder in sorted({uri.rsplit("/", 1)[0] for uri in uris}):
        sizes.update({join(folder, name): size for name, size in list_files(folder).items() if "/" not in name})
    return [sizes.get(uri, 0) for uri in uris]


def _plan_export(dataset: str, out: str, max_count: int, max_bytes: int | None):
    """(dataset version folder, index URL, index, absolute empty output URL, shards of row numbers)."""
    dataset_dir = dataset_version_dir(dataset)
    index_url, table = read_index(dataset_dir)
    out = absolute_url(out).rstrip("/")
    _check_empty(out)
    return dataset_dir, index_url, table, out, plan_shards(_video_sizes(table, index_url), max_count, max_bytes)


def export_webdataset(dataset: str, out: str, *, max_count: int = 1000, max_bytes: int | None = None,
                      progress: Progress | None = None) -> list[str]:
    """WebDataset shards of a curated dataset (see the module docstring); returns the shard URLs."""
    dataset_dir, index_url, table, out, shards = _plan_export(dataset, out, max_count, max_bytes)
    rows = table.to_pylist()
    urls, done = [], 0
    for number, members in enumerate(shards):
        urls.append(join(out, f"{number:06d}.tar"))
        with _atomic_output(urls[-1]) as handle, tarfile.open(fileobj=handle, mode="w|") as tar:
            for i in members:
                metadata = sample_metadata(rows[i], index_url)
                _tar_member(tar, f"{rows[i]['clip_id']}.mp4", _verified_video(rows[i], index_url))
                _tar_member(tar, f"{rows[i]['clip_id']}.json", json.dumps(metadata, sort_keys=True).encode())
                done += 1
                if progress:
                    progress(done, len(rows))
    _finish(out, dataset_dir, table, "webdataset", urls, {"max_count": max_count, "max_bytes": max_bytes})
    return urls


def hf_readme(card: str, shards: int) -> str:
    """The dataset card with the YAML header the Hugging Face hub and ``load_dataset`` read."""
    header = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train",
              "    path: data/train-*.parquet", "---", ""]
    usage = [
        "",
        "## Loading",
        "",
        "```python",
        "import io, av",
        "from datasets import load_dataset",
        f"ds = load_dataset('parquet', data_files='<this folder>/data/train-*.parquet', split='train')  # {shards} files",
        "row = ds[0]  # prompt, states, keyframe_indices, frame_captions, metrics, provenance, video",
        "with av.open(io.BytesIO(row['video']['bytes'])) as container:",
        "    frames = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]",
        "```",
        "",
    ]
    return "\n".join(header) + card + "\n".join(usage)


def export_hf(dataset: str, out: str, *, max_count: int = 1000, max_bytes: int | None = None,
              progress: Progress | None = None) -> list[str]:
    """A Hugging Face datasets layout of a curated dataset (see the module docstring); returns the Parquet URLs."""
    dataset_dir, index_url, table, out, shards = _plan_export(dataset, out, max_count, max_bytes)
    schema = DATASET_SCHEMA.append(pa.field("video", VIDEO_STRUCT)).with_metadata(
        {**DATASET_SCHEMA.metadata, RUN_ID_KEY: (table_run_id(table) or "").encode()})
    urls, done = [], 0
    for number, members in enumerate(shards):
        part = table.take(members)
        rows = part.to_pylist()
        videos = []
        for row in rows:
            videos.append({"bytes": _verified_video(row, index_url), "path": f"{row['clip_id']}.mp4"})
            done += 1
            if progress:
                progress(done, table.num_rows)
        part = part.set_column(part.schema.get_field_index("video_uri"), DATASET_SCHEMA.field("video_uri"),
                               pa.array([resolve_uri(index_url, r["video_uri"]) for r in rows], pa.string()))
        part = pa.Table.from_arrays([*part.select(DATASET_SCHEMA.names).columns, pa.array(videos, VIDEO_STRUCT)],
                                    schema=schema)
        urls.append(join(out, "data", f"train-{number:05d}-of-{len(shards):05d}.parquet"))
        buffer = io.BytesIO()
        pq.write_table(part, buffer, row_group_size=64)  # small row groups: a reader holds few videos at once
        write_bytes_atomic(urls[-1], buffer.getvalue())
    card_url = join(dataset_dir, "README.md")
    card = read_bytes(card_url).decode() if exists(card_url) else f"# vstar dataset {dataset_dir}\n"
    for name in list_files(join(dataset_dir, "card")):
        write_bytes_atomic(join(out, "card", name), read_bytes(join(dataset_dir, "card", name)))
    write_bytes_atomic(join(out, "README.md"), hf_readme(card, len(shards)).encode())
    _finish(out, dataset_dir, table, "hf", urls, {"max_count": max_count, "max_bytes": max_bytes})
    return urls
