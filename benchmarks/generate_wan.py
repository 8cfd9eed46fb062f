"""Wan 2.1 generation: seconds per denoising step and peak memory per clip length, one pass per clip.

Each (size, frames) runs in its own subprocess so that its peak memory is its own (CPU: max RSS;
GPU: torch.cuda.max_memory_allocated, weights included). Random weights: speed and memory do not
depend on them. A step is two transformer calls (conditional and unconditional); s/step is the
median over the steps after the first (warm-up), timed with the device synchronised.

    python benchmarks/generate_wan.py                           # CPU: mid-size Wan, 33/81/161/241 frames
    python benchmarks/generate_wan.py --device cuda             # GPU: the 1.3B configuration, bf16,
                                                                #   480×832, 81 and 161 frames

Sizes: ``mid`` — 4 blocks of width 256, a small VAE (base width 8), the tiny text encoder (CPU); ``1.3b`` —
Wan 2.1 T2V 1.3B's transformer (30 blocks, width 1536, 12 heads), Wan's VAE and the UMT5-XXL
encoder (d_model 4096, 24 layers), built on the device from their configs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devices import available_device  # noqa: E402
from generate import run_each  # noqa: E402  (the runner of benchmarks/generate.py)

TRANSFORMERS = {
    "mid": dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=768, num_layers=4, text_dim=32, in_channels=4,
                out_channels=4, freq_dim=64),
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
    "1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096,
                 in_channels=16, out_channels=16, freq_dim=256),
}
# google/umt5-xxl, Wan's text encoder
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128)


def _model(size: str, device: str, dtype: str):
    import torch

    import vstar_model  # noqa: F401  (its torchvision compat before diffusers)
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from vstar_model.backbones.loading import load_backbone
    from vstar_model.backbones.presets import PRESETS
    from vstar_model.backbones.tiny_wan import SCHEDULER_CONFIG, save_tiny_wan
    from vstar_model.backbones.wan import WanVideoModel

    tiny = load_backbone("tiny-wan", path=save_tiny_wan(Path(tempfile.mkdtemp()) / "tiny-wan"), device=device,
                         dtype=dtype)
    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: the 1.3B weights would take minutes on a CPU
        transformer = WanTransformer3DModel(patch_size=(1, 2, 2), cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                            eps=1e-6, **TRANSFORMERS[size])
        if size == "1.3b":
            from transformers import UMT5Config, UMT5EncoderModel

            text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
            vae = AutoencoderKLWan()  # Wan 2.1's VAE (diffusers' defaults are its config)
            tiny.tokenizer.model_max_length = 512  # Wan's text length
        else:
            text_encoder = tiny.text_encoder
            vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                   latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    text_encoder.to(dtype=torch_dtype).eval().requires_grad_(False)
    # As from_pretrained(torch_dtype=...) loads it: RoPE tables, norms, time embedder stay float32.
    keep = transformer._keep_in_fp32_modules
    for name, tensor in [*transformer.named_parameters(), *transformer.named_buffers()]:
        if tensor.is_floating_point() and not any(part in name.split(".") for part in keep):
            tensor.data = tensor.data.to(torch_dtype)
    transformer.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)  # float32, as load_wan keeps it
    return WanVideoModel(preset=PRESETS["wan2.1-1.3b" if size == "1.3b" else "tiny-wan"], tokenizer=tiny.tokenizer,
                         text_encoder=text_encoder, transformer=transformer, vae=vae,
                         scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG), device=torch.device(device),
                         dtype=torch_dtype, location=f"random:{size}")


def run_one(args) -> dict:
    import torch

    from vstar_model.sampling.dit import FlowMatchingConfig, generate_video

    cuda = args.device.startswith("cuda")
    model = _model(args.size, args.device, args.dtype)
    config = FlowMatchingConfig(num_frames=args.frames, height=args.height, width=args.width,
                                num_inference_steps=args.steps, riflex=args.riflex)
    stamps = [time.perf_counter()]

    def step_done(done: int, total: int) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    finite = True
    try:
        video = generate_video(model, ["a snowy field", "a green meadow"], config, seed=0, tar=args.tar,
                               progress=step_done)
        decode = video.timings["decode_seconds"]
    except FloatingPointError:  # random bf16 weights may overflow; the timings still hold
        finite, decode = False, None
    total = time.perf_counter() - start
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "size": args.size, "frames": args.frames, "latent_frames": model.preset.latent_frames(args.frames),
        "tokens": model.preset.latent_frames(args.frames) * (args.height // 16) * (args.width // 16),
        "s_per_step": statistics.median(steps[1:] or steps), "first_step_s": steps[0], "decode_s": decode,
        "total_s": total, f"peak_{'GPU' if cuda else 'RSS'}_GiB": round(peak, 2), "finite": finite,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", type=available_device)
    parser.add_argument("--sizes", nargs="+", choices=sorted(TRANSFORMERS), help="default: mid on CPU, 1.3b on GPU")
    parser.add_argument("--frames", nargs="+", type=int, help="default: 33 81 161 241 on CPU, 81 161 on GPU")
    parser.add_argument("--height", type=int, help="default: 128 on CPU, 480 on GPU")
    parser.add_argument("--width", type=int, help="default: 128 on CPU, 832 on GPU")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", help="default: float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--tar", default="off", help="a DiT TAR preset (benchmarks/tar_dit.py compares TAR on/off)")
    parser.add_argument("--riflex", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    args.sizes = args.sizes or (["1.3b"] if gpu else ["mid"])
    args.frames = args.frames or ([81, 161] if gpu else [33, 81, 161, 241])
    args.height, args.width = args.height or (480 if gpu else 128), args.width or (832 if gpu else 128)
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    if args.one:
        args.frames = args.frames[0]
        print(json.dumps(run_one(args)))
        return
    print(f"device={args.device} dtype={args.dtype} {args.height}x{args.width} steps={args.steps} tar={args.tar} "
          f"riflex={args.riflex}")
    shared = ["--height", str(args.height), "--width", str(args.width), "--steps", str(args.steps), "--device",
              args.device, "--dtype", args.dtype, "--tar", args.tar] + (["--riflex"] if args.riflex else [])
    raise SystemExit(1 if run_each(__file__, args.sizes, args.frames, shared) else 0)

if __name__ == "__main__":
    main()
