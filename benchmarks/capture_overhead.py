"""Attention-capture overhead: median UNet-call time with capture off, idle and recording, in one process.

A random-weight UNet3DConditionModel runs one denoising step (one UNet call on a classifier-free-
guidance batch of 2) in three ways, in rotating order so that drift on a shared machine hits all
alike:
    off        no capture (what generate_video does unless asked): nothing is installed
    idle       inside capture_attention(steps=[]): probes installed on every temporal layer, no
               step recorded (the cost of the calls that a step filter skips)
    recording  inside capture_attention(): every temporal layer's map recorded (mean over
               positions and heads)
Prints the ratios idle/off and recording/off.

    .venv/bin/python benchmarks/capture_overhead.py
    .venv/bin/python benchmarks/capture_overhead.py --device cuda --dtype float16 --frames 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vstar_model  # noqa: F401  (torchvision compat before diffusers)
from devices import available_device
from tar_overhead import _synchronize, build_unet  # the same "mid" UNet as the TAR benchmark
from vstar_model.analysis.temporal_attention import capture_attention

MODES = ("off", "idle", "recording")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", type=available_device)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=6, help="timed calls per mode")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet = build_unet("mid", device, dtype)
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(2, 4, args.frames, 16, 16, generator=generator).to(device, dtype)
    text = torch.randn(2, 77, 256, generator=generator).to(device, dtype)
    timestep = torch.tensor(500, device=device)

    def call(mode: str) -> float:
        def timed() -> float:
            _synchronize(device)
            start = time.perf_counter()
            unet(latents, timestep, encoder_hidden_states=text)
            _synchronize(device)
            return time.perf_counter() - start

        if mode == "off":
            return timed()
        with capture_attention(unet, steps=[] if mode == "idle" else None):
            return timed()

    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    with torch.inference_mode():
        for mode in MODES:  # warm-up
            call(mode)
        for repeat in range(args.repeats):
            order = MODES[repeat % 3 :] + MODES[: repeat % 3]
            for mode in order:
                times[mode].append(call(mode))

    medians = {mode: statistics.median(values) for mode, values in times.items()}
    print(
        f"device={device} dtype={args.dtype} frames={args.frames} latent=16x16 cfg_batch=2 "
        f"repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    print("median call: " + ", ".join(f"{mode} {medians[mode] * 1e3:.1f} ms" for mode in MODES))
    print(f"ratio idle/off: {medians['idle'] / medians['off']:.3f}")
    print(f"ratio recording/off: {medians['recording'] / medians['off']:.3f}")


if __name__ == "__main__":
    main()
