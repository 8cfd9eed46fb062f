"""Encode generated frames: H.264 mp4 bytes and a PNG strip of subsampled frames (paper figures)."""

from __future__ import annotations

import io

import torch


def encode_mp4(frames: torch.Tensor, fps: int = 8, *, crf: int = 18) -> bytes:
    """(N, H, W, 3) uint8 frames → H.264 (yuv420p) mp4 bytes.

    Bytes rather than a path so the caller can write them through fsspec in one atomic step.
    Odd sizes are padded by one pixel (yuv420p needs even dimensions). Deterministic: the same
    frames give the same bytes.
    """
    import av

    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = torch.nn.functional.pad(frames.permute(0, 3, 1, 2), (0, pad_w, 0, pad_h), mode="replicate")
        frames = frames.permute(0, 2, 3, 1)
    array = frames.contiguous().numpy()
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = array.shape[2], array.shape[1]
        stream.pix_fmt = "yuv420p"
        # x264's macroblock-tree rate control gives different bytes from run to run under load;
        # without it the same frames always give the same file (and sha256).
        stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "no-mbtree=1"}
        for image in array:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def strip_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly from the first to the last frame."""
    if count < 1:
        raise ValueError(f"count must be ≥ 1, got {count}")
    if num_frames <= count:
        return list(range(num_frames))
    if count == 1:
        return [0]
    return [round(i * (num_frames - 1) / (count - 1)) for i in range(count)]


def frame_strip(frames: torch.Tensor, count: int = 8, *, gap: int = 2) -> bytes:
    """A PNG of ``count`` evenly subsampled frames side by side, like the paper's figures."""
    from PIL import Image

    picked = frames[strip_indices(frames.shape[0], count)]
    n, h, w, _ = picked.shape
    canvas = torch.full((h, n * w + (n - 1) * gap, 3), 255, dtype=torch.uint8)
    for i, image in enumerate(picked):
        canvas[:, i * (w + gap) : i * (w + gap) + w] = image
    buffer = io.BytesIO()
    Image.fromarray(canvas.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()
