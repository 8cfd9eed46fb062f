"""PyTorch datasets of vstar clips: map-style over a curated dataset or a run, iterable over
WebDataset shards (``vstar export --format webdataset``).

Each item is a dict: ``frames`` (uint8 [T, C, H, W], or float in [0, 1]), ``frame_indices`` (the
frames sampled), ``prompt``, ``captions`` (the synopsis state each sampled frame shows),
``metadata`` (the index row: states, keyframes, metrics, provenance). Batch them with
``collate_clips``. Videos are decoded with PyAV straight from any fsspec URL, seeking to the
first sampled frame and stopping after the last. Both work with ``num_workers > 0``: items hold
only URLs, and each worker opens its own files. ``storage_options`` (e.g. ``{"endpoint_url": …}``)
go to fsspec for every file; by default fsspec's own configuration applies (environment, ~/.aws).
"""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import fsspec
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vstar_data.export import dataset_version_dir, read_index
from vstar_data.runs import RunPaths
from vstar_data.schemas import read_table
from vstar_data.storage import exists, join
from vstar_data.uris import absolute_url, resolve_uri
from vstar_model.video.reader import decode_frames_at, even_indices


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a clip an item holds, and how they are shaped.

    ``mode="stride"``: ``num_frames`` frames ``stride`` apart from ``offset`` (or from a random
    start when ``random_offset``). ``mode="uniform"``: ``num_frames`` spread evenly over the whole
    clip (with ``random_offset``, one random frame from each of ``num_frames`` equal segments).
    ``resize``: the shorter side in pixels, or (height, width); then ``crop`` (an int for a
    square, or (height, width)) at the centre or at random. ``dtype``: uint8, or a float type
    for values in [0, 1]. Random choices use torch's generator, seeded per DataLoader worker.
    """

    num_frames: int = 16
    mode: Literal["stride", "uniform"] = "stride"
    stride: int = 1
    offset: int = 0
    random_offset: bool = False
    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    random_crop: bool = False
    dtype: torch.dtype = torch.uint8

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.stride < 1 or self.offset < 0:
            raise ValueError(f"num_frames and stride must be >= 1 and offset >= 0, got {self}")
        if self.mode not in ("stride", "uniform"):
            raise ValueError(f"mode must be 'stride' or 'uniform', got {self.mode!r}")

    def indices(self, total: int) -> list[int]:
        """The frame indices to sample from a clip of ``total`` frames."""
        if self.mode == "uniform":
            if not self.random_offset:
                return even_indices(total, self.num_frames)
            if total < self.num_frames:
                raise ValueError(f"cannot sample {self.num_frames} frames from a clip of {total}")
            edges = torch.linspace(0, total, self.num_frames + 1)
            jitter = torch.rand(self.num_frames)
            return [min(int(edges[i] + jitter[i] * (edges[i + 1] - edges[i])), total - 1)
                    for i in range(self.num_frames)]
        span = (self.num_frames - 1) * self.stride + 1
        if span > total:
            raise ValueError(f"{self.num_frames} frames {self.stride} apart need {span} frames; the clip has {total}")
        start = int(torch.randint(0, total - span + 1, ())) if self.random_offset else self.offset
        if start + span > total:
            raise ValueError(f"offset {start} + {span} frames runs past the clip's {total} frames")
        return list(range(start, start + span, self.stride))

    def frames(self, file, total: int) -> tuple[torch.Tensor, list[int]]:
        """(frames [T, C, H, W] of ``dtype``, their indices) of the video ``file`` of ``total`` frames."""
        indices = self.indices(total)
        array = decode_frames_at(file, indices, size=self.resize)
        frames = torch.from_numpy(array).permute(0, 3, 1, 2)
        if self.crop is not None:
            frames = self._cropped(frames)
        if self.dtype != torch.uint8:
            frames = frames.to(self.dtype) / 255.0
        return frames.contiguous(), indices

    def _cropped(self, frames: torch.Tensor) -> torch.Tensor:
        height, width = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
        full_height, full_width = frames.shape[-2:]
        if height > full_height or width > full_width:
            raise ValueError(f"crop {height}×{width} is larger than the frames ({full_height}×{full_width})")
        if self.random_crop:
            top = int(torch.randint(0, full_height - height + 1, ()))
            left = int(torch.randint(0, full_width - width + 1, ()))
        else:
            top, left = (full_height - height) // 2, (full_width - width) // 2
        return frames[..., top:top + height, left:left + width]


def _item(frames: torch.Tensor, indices: list[int], metadata: dict) -> dict[str, Any]:
    captions = metadata["frame_captions"]
    return {"frames": frames, "frame_indices": indices, "prompt": metadata["prompt"],
            "captions": [captions[i] for i in indices], "metadata": metadata}


def _plain(row: dict) -> dict:
    """A row with datetimes as ISO strings: what every collate function and JSON take."""
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


def _run_rows(run_dir: str) -> list[dict]:
    """The ok rows of a run's samples.parquet as clip rows: video URIs absolute, captions computed."""
    from vstar_model.vsp.captions import frame_captions
    from vstar_model.vsp.embeddings import keyframe_indices

    run_dir = run_dir.rstrip("/")
    run = RunPaths(run_dir.rpartition("/runs/")[0], run_dir.rsplit("/", 1)[-1])
    rows = []
    for row in read_table(run.samples).to_pylist():
        if row["status"] != "ok":
            continue
        row["clip_id"] = f"{row['run_id']}_{row['sample_key']}"
        row["video_uri"] = resolve_uri(run.samples, row["video_uri"])
        row["keyframe_indices"] = keyframe_indices(len(row["states"]), row["num_frames"]).tolist()
        row["frame_captions"] = frame_captions(row["states"], row["num_frames"])
        rows.append(_plain(row))
    return rows


def _open(url: str, storage_options: dict | None):
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs.open(path, "rb")


class VideoDataset(Dataset):
    """Map-style dataset over the clips of a curated dataset (its version folder, or its name
    folder for the newest version) or of a run directory (its ok videos)."""

    def __init__(self, source: str, sampling: FrameSampling = FrameSampling(), *,
                 storage_options: dict | None = None):
        source = absolute_url(source).rstrip("/")
        self.sampling = sampling
        self.storage_options = storage_options
        if exists(join(source, "samples.parquet")):
            self.rows = _run_rows(source)
        else:
            index_url, table = read_index(dataset_version_dir(source))
            self.rows = [{**_plain(row), "video_uri": resolve_uri(index_url, row["video_uri"])}
                         for row in table.to_pylist()]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        with _open(row["video_uri"], self.storage_options) as file:
            frames, indices = self.sampling.frames(file, row["num_frames"])
        return _item(frames, indices, row)


def expand_shards(shards: str | list[str], storage_options: dict | None = None) -> list[str]:
    """Shard URLs from a list, a folder or bucket prefix (every ``*.tar`` in it, in name order),
    or a brace pattern ``…/{000000..000009}.tar``."""
    if isinstance(shards, list):
        return [absolute_url(url) for url in shards]
    match = re.search(r"\{(\d+)\.\.(\d+)\}", shards)
    if match:
        first, last = match.groups()
        return [absolute_url(shards[:match.start()] + f"{i:0{len(first)}d}" + shards[match.end():])
                for i in range(int(first), int(last) + 1)]
    folder = absolute_url(shards).rstrip("/")
    fs, path = fsspec.core.url_to_fs(folder, **(storage_options or {}))
    names = sorted(name.rsplit("/", 1)[-1] for name in fs.ls(path, detail=False) if name.endswith(".tar"))
    if not names:
        raise FileNotFoundError(f"no .tar shards in {shards}")
    return [join(folder, name) for name in names]


def _consumer() -> tuple[int, int]:
    """(this consumer's number, how many there are) over distributed ranks × DataLoader workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    worker = get_worker_info()
    worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
    return rank * workers + worker_id, world * workers


def read_shard(url: str, storage_options: dict | None = None) -> Iterator[tuple[bytes, dict]]:
    """(mp4 bytes, metadata) of each sample of a WebDataset shard, streamed."""
    pending: dict[str, dict[str, bytes]] = {}
    with _open(url, storage_options) as file, tarfile.open(fileobj=file, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            key, _, extension = name.partition(".")
            parts = pending.setdefault(key, {})
            parts[extension] = tar.extractfile(member).read()
            if "mp4" in parts and "json" in parts:
                del pending[key]
                yield parts["mp4"], json.loads(parts["json"])


class IterableVideoDataset(IterableDataset):
    """Iterable dataset over WebDataset shards: each (distributed rank, DataLoader worker) reads
    its own shards, ``shards[consumer::consumers]``, so every sample is read once per epoch.

    With ``shuffle_shards`` the shard order changes per epoch (``set_epoch``), the same on every
    rank. Fewer shards than consumers leaves some idle: export more, smaller shards.
    """

    def __init__(self, shards: str | list[str], sampling: FrameSampling = FrameSampling(), *,
                 shuffle_shards: bool = False, seed: int = 0, storage_options: dict | None = None):
        self.storage_options = storage_options
        self.shards = expand_shards(shards, storage_options)
        self.sampling = sampling
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards_of_this_consumer(self) -> list[str]:
        shards = list(self.shards)
        if self.shuffle_shards:
            random.Random(self.seed + self.epoch).shuffle(shards)
        consumer, consumers = _consumer()
        if len(shards) < consumers:
            warnings.warn(f"{len(shards)} shards for {consumers} consumers (ranks × workers): some get none",
                          stacklevel=2)
        return shards[consumer::consumers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for url in self.shards_of_this_consumer():
            for video, metadata in read_shard(url, self.storage_options):
                frames, indices = self.sampling.frames(io.BytesIO(video), metadata["num_frames"])
                yield _item(frames, indices, metadata)


def collate_clips(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch: ``frames`` stacked to [B, T, C, H, W] (same sampling, same sizes), every other
    field a list of B values."""
    collated = {key: [item[key] for item in batch] for key in batch[0]}
    collated["frames"] = torch.stack(collated["frames"])
    return collated
