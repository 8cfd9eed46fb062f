"""Loader throughput: decoded frames/s of vstar's VideoDataset (through a DataLoader, 0 and 2
workers) against a hand-written PyAV loop over the same files and the same frames.

The clips are synthetic panning videos encoded the way vstar encodes its own (H.264, our
encoder), written to a temporary curated dataset. Each item samples ``--frames`` frames
``--stride`` apart from a random offset (drawn the same way on both sides, seeded per round), as
a training job would. The hand-written loop opens each
file with PyAV, decodes from the start and keeps the wanted frames, stopping after the last: the
obvious loop a user would write. Rounds alternate and medians are compared, so load drift on a
shared machine hits both alike. Wall-clock time (workers are processes). Target (issue 13):
loader ≥ 0.9× the hand loop with 0 and with 2 workers.

The 2-worker loader keeps its workers between epochs (``persistent_workers=True``, as a training
job runs it) and its first epoch, which starts the worker processes, is timed apart and printed
as the start-up cost: with 16 clips an epoch lasts under a second, so a fresh pair of processes
per epoch would measure process start-up, not loading.

    .venv/bin/python benchmarks/loader.py
    .venv/bin/python benchmarks/loader.py --clips 32 --clip-frames 128 --size 320 --frames 16 --stride 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.evaluate import panning_video  # noqa: E402
from tests.synthetic_runs import Clip, write_run  # noqa: E402
from vstar_data.curate import candidates, index_table, write_index  # noqa: E402
from vstar_data.runs import DatasetPaths  # noqa: E402
from vstar_data.torch_dataset import FrameSampling, VideoDataset, collate_clips  # noqa: E402
from vstar_model.video.writer import encode_mp4  # noqa: E402

RUN = "20261201T120000Z-aaaaaa"


def build_dataset(root: str, clips: int, clip_frames: int, size: int) -> str:
    write_run(root, RUN, [Clip(f"clip-{i}", seed=i, num_frames=clip_frames,
                               video=encode_mp4(panning_video(clip_frames, size, seed=i), fps=8))
                          for i in range(clips)])
    dataset = DatasetPaths(root, "bench", "20261202T000000Z-cccccc")
    write_index(dataset.index, index_table(candidates([f"{root}/runs/{RUN}"]), dataset.index, root), dataset.version)
    return dataset.directory


def hand_written(paths: list[str], starts: list[int], frames: int, stride: int) -> int:
    """The loop a user would write: decode from the start, keep the wanted frames, stop after the last."""
    decoded = 0
    for path, start in zip(paths, starts):
        wanted = set(range(start, start + frames * stride, stride))
        kept = []
        with av.open(path) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    kept.append(frame.to_ndarray(format="rgb24"))
                if index >= max(wanted):
                    break
        torch.from_numpy(np.stack(kept)).permute(0, 3, 1, 2).contiguous()
        decoded += len(kept)
    return decoded


def data_loader(dataset: VideoDataset, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_clips,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def epoch(batches: DataLoader) -> int:
    """Frames decoded in one pass over ``batches``."""
    return sum(batch["frames"].shape[0] * batch["frames"].shape[1] for batch in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--clip-frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        directory = build_dataset(f"{folder}/out", args.clips, args.clip_frames, args.size)
        sampling = FrameSampling(num_frames=args.frames, stride=args.stride, random_offset=True)
        dataset = VideoDataset(directory, sampling)
        paths = [row["video_uri"] for row in dataset.rows]
        span = (args.frames - 1) * args.stride + 1
        loaders = {"VideoDataset, 0 workers": data_loader(dataset, 0),
                   "VideoDataset, 2 workers": data_loader(dataset, 2)}
        start = time.perf_counter()
        epoch(loaders["VideoDataset, 2 workers"])  # starts the two worker processes
        startup = time.perf_counter() - start
        results: dict[str, list[float]] = {"hand-written PyAV loop": [], **{name: [] for name in loaders}}
        for round_ in range(args.rounds):
            rng = np.random.default_rng(round_)
            starts = rng.integers(0, args.clip_frames - span + 1, size=len(paths)).tolist()
            torch.manual_seed(round_)
            runs = {"hand-written PyAV loop": lambda: hand_written(paths, starts, args.frames, args.stride),
                    **{name: (lambda batches=batches: epoch(batches)) for name, batches in loaders.items()}}
            for name, run in runs.items():
                start = time.perf_counter()
                frames = run()
                results[name].append(frames / (time.perf_counter() - start))
        baseline = statistics.median(results["hand-written PyAV loop"])
        print(f"{args.clips} clips of {args.clip_frames} frames at {args.size}², {args.frames} frames "
              f"{args.stride} apart per item, medians of {args.rounds} rounds (wall clock)")
        for name, values in results.items():
            median = statistics.median(values)
            spread = f"{min(values):.0f}–{max(values):.0f}"
            print(f"  {name:<26} {median:8.1f} frames/s ({spread})  {median / baseline:5.2f}× the hand-written loop")
        print(f"  first 2-worker epoch (starts the workers, not in the medians): {startup:.2f} s")


if __name__ == "__main__":
    main()
