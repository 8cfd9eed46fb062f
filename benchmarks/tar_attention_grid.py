"""tar_attention against SDPA over a grid of temporal-attention shapes, in the layouts diffusers passes.

For each shape ``[batch, heads, frames, head_dim]`` and layout, ``tar_attention`` with a Gaussian
band and ``F.scaled_dot_product_attention`` (what a temporal layer runs without TAR) are timed
alternately in one process (see ``paired_timing``; a sample repeats short calls to last at
least --sample-ms) and the median TAR/SDPA ratio of the pairs is
printed with its 95 % confidence interval, in CPU time and wall time. glibc's allocator is
settled first (``paired_timing.settle_allocator``): otherwise whether one side's output comes
from fresh pages depends on the order of earlier frees, and the grid's first shape read 1.38 and
2.32 in two runs of three, every other shape ≤ 1.08. Layouts:

    contiguous  query, key and value each a contiguous [batch, heads, N, head_dim] tensor
    diffusers   what AttnProcessor2_0 hands the attention: attn.to_q(hidden_states) is
                [batch, N, heads·head_dim], and .view(batch, -1, heads, head_dim).transpose(1, 2)
                makes a [batch, heads, N, head_dim] view with strides (N·heads·d, d, heads·d, 1);
                key and value are separate projections, so three separate tensors

Grid: heads 1, 2, 4, 5, 8, 16 × N 16, 32, 64, 128, 256, head_dim 64; the batch is the largest of
2·40·64 = 5120 (a 320×512 video's full-resolution level with guidance), 1280, 320, 80, 20 whose
logits fit in --max-logits elements (so every shape takes about as long as the others), and
the real shapes of the mid UNet of tar_overhead.py and of ModelScope at 320×512 are added.
Target (issue 15): every ratio ≤ 1.5.

    .venv/bin/python benchmarks/tar_attention_grid.py                 # CPU, torch's threads
    .venv/bin/python benchmarks/tar_attention_grid.py --threads 1 --pairs 15
    .venv/bin/python benchmarks/tar_attention_grid.py --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import vstar_model  # noqa: F401  (torchvision compat before anything imports it)
from devices import available_device
from paired_timing import Ratio, alternate, paired_ratio, settle_allocator
from vstar_model.tar.attention import tar_attention
from vstar_model.tar.bands import gaussian_band

HEADS = (1, 2, 4, 5, 8, 16)
FRAMES = (16, 32, 64, 128, 256)
BATCHES = (5120, 1280, 320, 80, 20)
LAYOUTS = ("contiguous", "diffusers")
# (batch, heads, N, head_dim) that real UNets pass: the mid UNet of tar_overhead.py (16×16 latent,
# guidance batch 2, 64 frames) at levels 64, 32, 16/8, and ModelScope at 320×512 (5 heads at
# level 64, 10 at 32; 16 and 64 frames).
REAL_SHAPES = (
    (512, 1, 64, 64), (128, 2, 64, 64), (32, 4, 64, 64),
    (5120, 5, 16, 64), (1280, 10, 16, 64), (5120, 5, 64, 64), (1280, 10, 64, 64),
)


def grid_shapes(max_logits: int, head_dim: int) -> list[tuple[int, int, int, int]]:
    shapes = []
    for heads, frames in itertools.product(HEADS, FRAMES):
        fitting = [b for b in BATCHES if b * heads * frames * frames <= max_logits] or [BATCHES[-1]]
        shapes.append((fitting[0], heads, frames, head_dim))
    return shapes + [s for s in REAL_SHAPES if s not in shapes]


def make_inputs(shape, layout: str, device, dtype, generator) -> tuple[torch.Tensor, ...]:
    batch, heads, frames, head_dim = shape
    if layout == "contiguous":
        return tuple(
            torch.randn(shape, generator=generator).to(device, dtype) for _ in range(3)
        )
    # Three separate projections' outputs [batch, N, heads·d], viewed per head as diffusers does.
    return tuple(
        torch.randn(batch, frames, heads * head_dim, generator=generator)
        .to(device, dtype)
        .view(batch, -1, heads, head_dim)
        .transpose(1, 2)
        for _ in range(3)
    )


def compare(shape, layout, args, synchronize: Callable[[], None]) -> tuple[Ratio, Ratio]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    query, key, value = make_inputs(shape, layout, device, dtype, generator)
    band = gaussian_band(shape[2], 1.0, device=device, dtype=dtype)
    sdpa = lambda: F.scaled_dot_product_attention(query, key, value)  # noqa: E731
    sdpa()
    synchronize()
    start = time.perf_counter()
    sdpa()
    synchronize()
    # Samples of at least --sample-ms: the smallest shapes' calls take ~1 ms, where CPU time is
    # mostly what happens around a call (see paired_timing.alternate).
    repeat = max(1, math.ceil(args.sample_ms / 1e3 / (time.perf_counter() - start)))
    times = alternate(
        lambda: tar_attention(query, key, value, band), sdpa, pairs=args.pairs, repeat=repeat,
        synchronize=synchronize,
    )
    cpu = paired_ratio(times["first_cpu"], times["second_cpu"])
    wall = paired_ratio(times["first_wall"], times["second_wall"])
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", type=available_device)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--pairs", type=int, default=11, help="timed TAR/SDPA pairs per shape and layout")
    parser.add_argument("--max-logits", type=int, default=1 << 23, help="logit elements per shape (sets batch)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--sample-ms", type=float, default=20.0, help="shortest timed sample (calls repeated)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    allocator = "settled" if settle_allocator() else "default"

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} pairs={args.pairs} "
          f"max_logits={args.max_logits} allocator={allocator}")
    print("TAR/SDPA ratio (median of pairs, 95% CI); target <= 1.5")
    clock = "wall" if device.type == "cuda" else "cpu"  # CPU time means nothing for a GPU kernel
    print(f"{'batch':>6} {'heads':>5} {'N':>4} {'d':>3}  {'layout':<10}  {clock + ' ratio':<34}  wall ratio")
    worst = 0.0
    with torch.inference_mode():
        for shape in grid_shapes(args.max_logits, args.head_dim):
            for layout in args.layouts:
                cpu, wall = compare(shape, layout, args, synchronize)
                judged = wall if device.type == "cuda" else cpu
                worst = max(worst, judged.median)
                flag = "" if judged.median <= 1.5 else "  > 1.5"
                print(f"{shape[0]:>6} {shape[1]:>5} {shape[2]:>4} {shape[3]:>3}  {layout:<10}  "
                      f"{str(judged):<34}  {wall.median:.3f}{flag}")
    print(f"worst {clock} ratio: {worst:.3f} ({'meets' if worst <= 1.5 else 'misses'} the 1.5 target)")


if __name__ == "__main__":
    main()
