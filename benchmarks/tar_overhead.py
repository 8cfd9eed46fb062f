"""TAR inference overhead: denoising-step time with TAR on / off, as a paired ratio in one process.

A random-weight UNet3DConditionModel runs one denoising step (one UNet call on a classifier-free-
guidance batch of 2) with diffusers' own processors (off) and with TAR installed and active (on).

How it stays steady enough to judge 5 % on a shared machine (see ``paired_timing``):
    * the thread count is fixed (--threads, default 2, the cores of the reference machine) and
      printed, so runs compare like with like;
    * on and off alternate in ABBA order, one UNet call each, and each adjacent (on, off) pair
      gives a ratio: load from other jobs, which changes over seconds, hits both members of a
      pair alike, where medians of the two sides taken separately would each move on their own;
    * many short repeats (--pairs, one call each) and the median of the pair ratios, so a pair hit
      by a burst does not move it, with the distribution-free 95 % confidence interval of that
      median printed, and the verdict taken from its upper end: "meets" only if the whole
      interval is ≤ the target, "cannot tell" when the interval straddles it (rerun when
      the machine is quieter, or with more pairs);
    * CPU time (process time) and wall time are both printed: CPU time excludes time waiting
      for a core, so it moves less when other jobs compete; on an idle machine both agree.

    .venv/bin/python benchmarks/tar_overhead.py                     # CPU, mid-size model, 2 threads
    .venv/bin/python benchmarks/tar_overhead.py --pairs 30 --threads 1
    .venv/bin/python benchmarks/tar_overhead.py --device cuda --dtype float16 --size modelscope

Sizes:
    mid        block_out_channels (64, 128, 256, 256), 1 layer per block, head dim 64,
               16×16 latent, 64 frames (small enough for a few minutes on 2 CPU cores).
    modelscope ModelScope's UNet: (320, 640, 1280, 1280), 2 layers per block, head dim 64,
               cross-attention dim 1024, 40×64 latent (320×512 video), 64 frames.
Targets (issue 15): ≤ 1.05 for mid on CPU in every run; ≤ 1.03 for modelscope in float16 on a GPU.
"""

from __future__ import annotations

import argparse

import torch

import vstar_model  # noqa: F401  (torchvision compat before diffusers)
from devices import available_device
from paired_timing import alternate, paired_ratio
from vstar_model.tar.unet import apply_tar

SIZES = {
    "mid": dict(
        unet=dict(block_out_channels=(64, 128, 256, 256), layers_per_block=1, cross_attention_dim=256),
        latent=(16, 16),
    ),
    "modelscope": dict(
        unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024),
        latent=(40, 64),
    ),
}


def build_unet(size: str, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet3DConditionModel

    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        sample_size=SIZES[size]["latent"][0],
        in_channels=4,
        out_channels=4,
        attention_head_dim=64,
        norm_num_groups=32,
        **SIZES[size]["unet"],
    )
    return unet.to(device=device, dtype=dtype).eval()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="mid")
    parser.add_argument("--device", default="cpu", type=available_device)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--tar", default="64D1", help="TAR preset, e.g. 64D1 or 64D1_32D8")
    parser.add_argument("--pairs", type=int, default=15, help="timed (on, off) pairs, one UNet call each")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side first")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (intra-op), fixed for the run")
    parser.add_argument("--target", type=float, default=1.05)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet = build_unet(args.size, device, dtype)
    height, width = SIZES[args.size]["latent"]
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(2, 4, args.frames, height, width, generator=generator).to(device, dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator).to(device, dtype)
    timestep = torch.tensor(500, device=device)

    def step(tar) -> None:
        with apply_tar(unet, tar):  # installing the processors is not timed: paired_timing times calls
            unet(latents, timestep, encoder_hidden_states=text)

    handle = apply_tar(unet, args.tar)  # to print what TAR regularises
    layers = len(handle.levels)
    handle.remove()
    with torch.inference_mode():
        times = alternate(
            lambda: step(args.tar), lambda: step(None), pairs=args.pairs, warmup=args.warmup,
            synchronize=lambda: _synchronize(device),
        )
    print(
        f"size={args.size} device={device} dtype={args.dtype} frames={args.frames} latent={height}x{width} "
        f"cfg_batch=2 tar={args.tar} ({layers} layers) pairs={args.pairs} threads={torch.get_num_threads()}"
    )
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    print(f"median step: off {median(times['second_wall']) * 1e3:.1f} ms, on {median(times['first_wall']) * 1e3:.1f} ms")
    ratios = {"wall": paired_ratio(times["first_wall"], times["second_wall"])}
    if device.type == "cpu":  # CPU time means nothing for GPU kernels
        ratios["cpu-time"] = paired_ratio(times["first_cpu"], times["second_cpu"])
    for clock, ratio in ratios.items():
        if ratio.high <= args.target:
            verdict = f"meets ≤ {args.target}"
        elif ratio.low > args.target:
            verdict = f"misses ≤ {args.target}"
        else:
            verdict = f"cannot tell against {args.target} (interval straddles it)"
        print(f"{clock} ratio on/off: {ratio}: {verdict}")


if __name__ == "__main__":
    main()
