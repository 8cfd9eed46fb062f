import io

import av
import pytest
import torch
from PIL import Image

from vstar_model.video.writer import encode_mp4, frame_strip, strip_indices


def _frames(n=12, h=32, w=48):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def test_mp4_is_h264_with_every_frame_and_fps():
    data = encode_mp4(_frames(), fps=12)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 12
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 12 and decoded[0].shape == (32, 48, 3)


def test_mp4_is_deterministic():
    assert encode_mp4(_frames()) == encode_mp4(_frames())


def test_odd_sizes_are_padded_to_even():
    data = encode_mp4(_frames(h=31, w=45))
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0))
    assert (frame.height, frame.width) == (32, 46)


def test_bad_frames_rejected():
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(torch.zeros(4, 8, 8, 3))


def test_strip_indices_span_first_to_last():
    assert strip_indices(64, 8) == [0, 9, 18, 27, 36, 45, 54, 63]
    assert strip_indices(5, 8) == [0, 1, 2, 3, 4]
    assert strip_indices(10, 1) == [0]


def test_strip_png_has_count_frames_side_by_side():
    frames = _frames(n=20, h=16, w=24)
    image = Image.open(io.BytesIO(frame_strip(frames, count=4, gap=2)))
    assert image.size == (4 * 24 + 3 * 2, 16)
    assert torch.equal(torch.from_numpy(__import__("numpy").array(image))[:, :24], frames[0])
