"""Frame-similarity evaluation speed: our one-embedding-per-frame matrix vs DreamSim's pairwise loop.

Both sides run the real ``dreamsim`` package code in one process, on a random-weight
``open_clip_vitb32`` cache built in a temporary folder (no network; the speed of a ViT-B/32 does
not depend on its weights). The video is synthetic, 64 frames of 256×256 by default.

    ours   embed every frame once (batched) + one matrix product -> all N(N-1)/2 similarities
    naive  DreamSim's ``model(a, b)`` for every pair i < j (each call embeds both images again);
           images are preprocessed once up front, which only flatters the naive side. Timing all
           2016 pairs takes long on a CPU, so ``--naive-pairs`` pairs spread over the matrix are
           timed per round and the total is extrapolated linearly (every pair costs the same).
The two sides alternate for ``--rounds`` rounds and medians are compared, so that load drift on a
shared machine hits both alike.

Prints frames/s for ours, pairs/s for naive, the speedup, and the largest difference between
our similarity and ``1 - model(a, b)`` on the timed pairs. Target (issue 6): speedup >= 20 on CPU.

    .venv/bin/python benchmarks/evaluate.py
    .venv/bin/python benchmarks/evaluate.py --device cuda --naive-pairs 200
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import vstar_model  # noqa: F401  (torchvision compat before dreamsim)
from devices import available_device
from vstar_model.evaluation.dreamsim_weights import save_random_dreamsim_cache
from vstar_model.evaluation.similarity import DreamSimEmbedder, similarity_matrix


def panning_video(num_frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 [num_frames, size, size, 3]: a window sliding across a smooth random texture."""
    step, cell = max(1, size // num_frames), 32
    width = size + step * num_frames
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // cell + 1, width // cell + 1, generator=generator)
    texture = F.interpolate(coarse, size=(size, width), mode="bicubic", align_corners=True)[0]
    frames = [texture[:, :, i * step : i * step + size] for i in range(num_frames)]
    return (torch.stack(frames).permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="frame height and width before DreamSim's resize")
    parser.add_argument("--rounds", type=int, default=3, help="alternating ours / naive rounds (medians reported)")
    parser.add_argument("--naive-pairs", type=int, default=16, help="pairs timed for the naive loop per round")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", type=available_device)
    args = parser.parse_args()
    device = torch.device(args.device)

    frames = panning_video(args.frames, args.size)
    all_pairs = list(itertools.combinations(range(args.frames), 2))
    stride = max(1, len(all_pairs) // (args.naive_pairs * args.rounds))
    timed_pairs = all_pairs[::stride][: args.naive_pairs * args.rounds]

    with tempfile.TemporaryDirectory(prefix="dreamsim-random-") as cache_dir:
        save_random_dreamsim_cache(cache_dir, "open_clip_vitb32", seed=0)
        embedder = DreamSimEmbedder("open_clip_vitb32", cache_dir, device=device, batch_size=args.batch_size)
    embedder.embed(frames[:2])  # warm-up: first-call allocations and kernel selection
    images = embedder.preprocess(frames).to(device)  # the naive side gets its preprocessing for free

    def naive(pairs):
        with torch.inference_mode():
            return [embedder.model(images[i : i + 1], images[j : j + 1]).item() for i, j in pairs]

    # Alternate the two sides so that load drift on a shared machine hits both alike.
    ours_times, naive_pair_times, gaps = [], [], []
    for round_pairs in (timed_pairs[r :: args.rounds] for r in range(args.rounds)):
        matrix, seconds = timed(lambda: similarity_matrix(embedder.embed(frames)), device)
        ours_times.append(seconds)
        distances, seconds = timed(lambda: naive(round_pairs), device)
        naive_pair_times.append(seconds / len(round_pairs))
        gaps += [abs(matrix[i, j].item() - (1 - d)) for (i, j), d in zip(round_pairs, distances)]
    ours_s = statistics.median(ours_times)
    naive_s = statistics.median(naive_pair_times) * len(all_pairs)

    print(f"metric {embedder.metric}, device {device}, {args.frames} frames of {args.size}x{args.size}, "
          f"{len(all_pairs)} pairs, batch size {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"medians of {args.rounds} alternating rounds")
    print(f"ours : {ours_s:8.2f} s = {args.frames / ours_s:7.2f} frames/s  ({args.frames} embeddings + 1 matmul)")
    print(f"naive: {naive_s:8.2f} s = {len(all_pairs) / naive_s:7.2f} pairs/s "
          f"({2 * len(all_pairs)} embeddings; extrapolated linearly from {len(timed_pairs)} timed pairs)")
    print(f"speedup (naive / ours): {naive_s / ours_s:.1f}x   target >= 20x")
    print(f"max |ours - (1 - model(a, b))| over timed pairs: {max(gaps):.2e}")


if __name__ == "__main__":
    main()
