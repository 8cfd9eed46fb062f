"""Read clips as uint8 frame tensors: video files (mp4, gif, ... through PyAV) and folders of images.

Paths may be local or any fsspec URL (``s3://``, ``gs://``, ``memory://``, ``file://``); files are
streamed through fsspec, never downloaded whole to disk first.
"""

from __future__ import annotations

import io
import os
import re

import fsspec
import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def even_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``0..total-1``, first and last included."""
    if count < 1:
        raise ValueError(f"num_frames must be >= 1, got {count}")
    if count > total:
        raise ValueError(f"cannot pick {count} distinct frames from a clip of {total} frames")
    if count == 1:
        return [0]
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


def _natural_key(path: str) -> list:
    # frame_2.png sorts before frame_10.png
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _read_image_folder(fs: fsspec.AbstractFileSystem, folder: str, num_frames: int | None) -> list[np.ndarray]:
    from PIL import Image

    paths = sorted((p for p in fs.ls(folder, detail=False) if p.lower().endswith(IMAGE_SUFFIXES)), key=_natural_key)
    if not paths:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in frame folder {folder!r}")
    if num_frames is not None:
        paths = [paths[i] for i in even_indices(len(paths), num_frames)]
    frames = []
    for path in paths:
        with fs.open(path, "rb") as file:
            frames.append(np.asarray(Image.open(io.BytesIO(file.read())).convert("RGB")))
    return frames


def _read_video_file(fs: fsspec.AbstractFileSystem, path: str, num_frames: int | None) -> list[np.ndarray]:
    import av

    with fs.open(path, "rb") as file, av.open(file) as container:
        if not container.streams.video:
            raise ValueError(f"{path!r} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # Containers that state their frame count (mp4) let us keep only the frames we need; gif does not.
        wanted = set(even_indices(stream.frames, num_frames)) if num_frames is not None and stream.frames else None
        frames = [
            frame.to_ndarray(format="rgb24")
            for index, frame in enumerate(container.decode(stream))
            if wanted is None or index in wanted
        ]
    if num_frames is not None and wanted is None:
        frames = [frames[i] for i in even_indices(len(frames), num_frames)]
    elif wanted is not None and len(frames) != len(wanted):
        raise ValueError(f"{path!r} states {stream.frames} frames but decoding gave fewer")
    return frames


def read_video_frames(
    path_or_url: str | os.PathLike, num_frames: int | None = None, *, storage_options: dict | None = None
) -> torch.Tensor:
    """All frames of a clip, or ``num_frames`` of them spread evenly: uint8 [N, H, W, 3].

    ``path_or_url`` is a video file PyAV can decode (mp4, gif, webm, ...) or a folder of images,
    ordered by file name with numbers compared as numbers. A clip shorter than ``num_frames`` is an
    error: repeating frames would fake temporal similarity. ``storage_options`` go to fsspec
    (an S3-compatible endpoint, ...).
    """
    fs, path = fsspec.core.url_to_fs(str(path_or_url), **(storage_options or {}))
    if not fs.exists(path):
        raise FileNotFoundError(f"no such video or frame folder: {path_or_url}")
    frames = _read_image_folder(fs, path, num_frames) if fs.isdir(path) else _read_video_file(fs, path, num_frames)
    if not frames:
        raise ValueError(f"no frames decoded from {path_or_url}")
    if len({frame.shape for frame in frames}) > 1:
        raise ValueError(f"frames of {path_or_url} differ in size: {sorted({frame.shape for frame in frames})}")
    return torch.from_numpy(np.stack(frames))


def decode_frames_at(file, indices: list[int], size: int | tuple[int, int] | None = None) -> np.ndarray:
    """The frames at ``indices`` (any order, repeats allowed) of the first video stream of
    ``file`` (a path or a binary file object), uint8 [len(indices), H, W, 3]; scaled by swscale
    to ``size`` when given: (height, width), or an int for the shorter side (aspect kept).

    Seeks to the keyframe at or before the first wanted frame and decodes forward only until the
    last one, so sampling a few frames of a long clip neither reads nor decodes all of it. Frame
    numbers come from presentation timestamps at the stream's average rate (constant frame rate,
    as vstar writes); a stream without them is decoded from the start, counting frames.

    Raises:
        ValueError: an index beyond the clip's last frame, or no video stream.
    """
    import av

    if not indices:
        raise ValueError("no frame indices to decode")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    wanted = set(indices)
    first, last = min(wanted), max(wanted)
    found: dict[int, np.ndarray] = {}
    with av.open(file) as container:
        if not container.streams.video:
            raise ValueError(f"{file!r} has no video stream")
        stream = container.streams.video[0]
        height, width = _output_size(stream.codec_context.height, stream.codec_context.width, size)
        rate, time_base = stream.average_rate, stream.time_base
        start = stream.start_time or 0
        timed = bool(rate and time_base)
        if timed and first > 0:
            container.seek(start + int(first / rate / time_base), stream=stream, backward=True, any_frame=False)
        position = -1
        for frame in container.decode(stream):
            if timed and frame.pts is not None:
                position = round((frame.pts - start) * time_base * rate)
            elif timed and first > 0:
                raise ValueError(f"{file!r}: frames without timestamps after a seek; cannot number them")
            else:
                position += 1
            if position in wanted:
                found[position] = frame.to_ndarray(format="rgb24", width=width, height=height)
            if position >= last:
                break
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{file!r} has no frame {missing[0]} (it ends at frame {position})")
    return np.stack([found[i] for i in indices])


def _output_size(height: int, width: int, size: int | tuple[int, int] | None) -> tuple[int | None, int | None]:
    if size is None:
        return None, None
    if isinstance(size, int):
        scale = size / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return size


VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".mkv", ".avi")


def list_clips(url: str | os.PathLike, *, storage_options: dict | None = None) -> list[str]:
    """The clips directly under a folder or bucket prefix: video files and folders of frames.

    Returns fsspec URLs (with the protocol of ``url``) in natural name order.
    """
    fs, root = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    if not fs.isdir(root):
        raise FileNotFoundError(f"no such folder of clips: {url}")
    clips = []
    for entry in fs.ls(root, detail=True):
        name = entry["name"]
        if entry["type"] == "directory":
            if any(p.lower().endswith(IMAGE_SUFFIXES) for p in fs.ls(name, detail=False)):
                clips.append(name)
        elif name.lower().endswith(VIDEO_SUFFIXES):
            clips.append(name)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    return [prefix + clip if prefix and not clip.startswith(prefix) else clip for clip in sorted(clips, key=_natural_key)]
