"""Generation time and peak memory for 16/32/64 frames in one pass.

Each configuration runs in its own subprocess so that its peak memory (CPU: max RSS; GPU:
torch.cuda.max_memory_allocated) is its own. Prints seconds per denoising step, frames/s and peak
memory per (model size, frames). Random weights: speed and memory do not depend on them.

    python benchmarks/generate.py                       # tiny and mid-size on CPU
    python benchmarks/generate.py --sizes modelscope --device cuda --dtype float16 \
        --height 320 --width 512 --frames 64            # ModelScope scale on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devices import available_device  # noqa: E402

UNET_SIZES = {
    "tiny": dict(block_out_channels=(8, 16, 16, 16), attention_head_dim=4, layers_per_block=1, norm_num_groups=4),
    "mid": dict(block_out_channels=(64, 128, 256, 256), attention_head_dim=8, layers_per_block=1, norm_num_groups=32),
    # ModelScope T2V 1.7B's UNet (cross_attention_dim 1024, as its OpenCLIP-H text encoder).
    "modelscope": dict(block_out_channels=(320, 640, 1280, 1280), attention_head_dim=64, layers_per_block=2,
                       norm_num_groups=32),
}


def _model(size: str, device: str, dtype: str):
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import vstar_model  # noqa: F401
    from vstar_model.backbones.loading import VideoModel, load_backbone
    from vstar_model.backbones.presets import PRESETS
    from vstar_model.backbones.tiny import save_tiny_text_to_video

    tiny = load_backbone("tiny", path=save_tiny_text_to_video(Path(tempfile.mkdtemp()) / "tiny"), device=device,
                         dtype=dtype)
    if size == "tiny":
        return tiny
    torch_dtype = getattr(torch, dtype)
    cross = 1024 if size == "modelscope" else 32
    torch.manual_seed(0)
    unet = UNet3DConditionModel(cross_attention_dim=cross, **UNET_SIZES[size])
    text_encoder, vae = tiny.text_encoder, tiny.vae
    if size == "modelscope":
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                                    num_hidden_layers=23, num_attention_heads=16))
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            latent_channels=4)
        tiny.tokenizer.model_max_length = 77
    for module in (unet, text_encoder, vae):
        module.to(device=device, dtype=torch_dtype).eval().requires_grad_(False)
    return VideoModel(preset=PRESETS["tiny"], tokenizer=tiny.tokenizer, text_encoder=text_encoder, unet=unet,
                      vae=vae, scheduler=tiny.scheduler, device=torch.device(device), dtype=torch_dtype,
                      location=f"random:{size}")


def run_one(args) -> dict:
    import torch

    from vstar_model.sampling.unet import SamplingConfig, generate_video

    model = _model(args.size, args.device, args.dtype)
    config = SamplingConfig(num_frames=args.frames, height=args.height, width=args.width,
                            num_inference_steps=args.steps, decode_chunk_size=8)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    video = generate_video(model, ["a snowy field", "a green meadow"], config, seed=0, tar=args.tar)
    total = time.perf_counter() - start
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
        where = "GPU"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
        where = "RSS"
    return {
        "size": args.size, "frames": args.frames, "steps": args.steps, "tar": args.tar,
        "s_per_step": video.timings["denoise_seconds"] / args.steps, "total_s": total,
        "frames_per_s": args.frames / total, f"peak_{where}_GiB": round(peak, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=sorted(UNET_SIZES))
    parser.add_argument("--frames", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", type=available_device)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tar", default="64D1")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.frames = args.frames[0]
        print(json.dumps(run_one(args)))
        return
    print(f"device={args.device} dtype={args.dtype} {args.height}x{args.width} steps={args.steps} tar={args.tar}")
    shared = ["--height", str(args.height), "--width", str(args.width), "--steps", str(args.steps),
              "--device", args.device, "--dtype", args.dtype, "--tar", args.tar]
    raise SystemExit(1 if run_each(__file__, args.sizes, args.frames, shared) else 0)


def run_each(script: str, sizes: list[str], frames: list[int], shared: list[str]) -> int:
    """``script --one`` for every (size, frames) in its own process (its own peak memory); prints its row.
    Returns how many failed."""
    failed = 0
    for size in sizes:
        for count in frames:
            cmd = [sys.executable, script, "--one", "--size", size, "--frames", str(count), *shared]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"{size} {count} frames failed:\n{out.stderr[-2000:]}")
                failed += 1
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return failed


if __name__ == "__main__":
    main()
