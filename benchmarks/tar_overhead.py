"""TAR inference overhead: median denoising-step time with TAR on / off, measured in one process.

A random-weight UNet3DConditionModel runs one denoising step (one UNet call on a classifier-free-
guidance batch of 2) alternately with vanilla diffusers processors (off) and with TAR installed
and active (on); the order alternates every repetition so that drift on a shared machine hits
both sides alike. Prints the ratio of medians (on / off), the config and the per-side medians.

    .venv/bin/python benchmarks/tar_overhead.py                     # CPU, mid-size model
    .venv/bin/python benchmarks/tar_overhead.py --device cuda --dtype float16 --size modelscope

Sizes:
    mid        block_out_channels (64, 128, 256, 256), 1 layer per block, head dim 64,
               16×16 latent, 64 frames (small enough for a few minutes on 2 CPU cores).
    modelscope ModelScope's UNet: (320, 640, 1280, 1280), 2 layers per block, head dim 64,
               cross-attention dim 1024, 40×64 latent (320×512 video), 64 frames.
Targets (issue 3): ≤ 1.05 for mid on CPU; ≤ 1.03 for modelscope in float16 on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vstar_model  # noqa: F401  (torchvision compat before diffusers)
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--tar", default="64D1", help="TAR preset, e.g. 64D1 or 64D1_32D8")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first")
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: torch's); 1 is steadiest on a shared machine"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet = build_unet(args.size, device, dtype)
    height, width = SIZES[args.size]["latent"]
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(2, 4, args.frames, height, width, generator=generator).to(device, dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator).to(device, dtype)
    timestep = torch.tensor(500, device=device)

    def step(tar_on: bool) -> tuple[float, float]:
        """Wall and process CPU seconds of one UNet call."""
        with apply_tar(unet, args.tar if tar_on else None):
            _synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            unet(latents, timestep, encoder_hidden_states=text)
            _synchronize(device)
            return time.perf_counter() - wall, time.process_time() - cpu

    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for tar_on in (False, True):
                step(tar_on)
        for repeat in range(args.repeats):
            for tar_on in (False, True) if repeat % 2 == 0 else (True, False):
                times[tar_on].append(step(tar_on))

    off, on = (statistics.median(wall for wall, _ in times[tar_on]) for tar_on in (False, True))
    cpu_off, cpu_on = (statistics.median(cpu for _, cpu in times[tar_on]) for tar_on in (False, True))
    print(
        f"size={args.size} device={device} dtype={args.dtype} frames={args.frames} latent={height}x{width} "
        f"cfg_batch=2 tar={args.tar} repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    print(f"median step: off {off * 1e3:.1f} ms, on {on * 1e3:.1f} ms")
    print(f"ratio on/off: {on / off:.3f}")
    # Process CPU time is less sensitive to other jobs on a shared machine (meaningless on a GPU).
    if device.type == "cpu":
        print(f"cpu-time ratio on/off: {cpu_on / cpu_off:.3f}")


if __name__ == "__main__":
    main()
