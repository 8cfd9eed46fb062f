"""TAR on a diffusion transformer (Wan 2.1): step time on / off, exact and approximate, peak memory.

A random-weight ``WanTransformer3DModel`` built from a config (no VAE or text encoder: the
denoising step is the transformer call) runs one call on a classifier-free-guidance batch of 2,
alternately with diffusers' processors (off) and with each TAR variant installed and active; the
order rotates every repetition so that drift on a shared machine hits every side alike. Everything
is measured in one process and printed as ratios to off:

- step time per variant (median wall time; on CPU also process CPU time, steadier under load);
- peak memory of a step (CPU: the process's peak RSS, reset before each step through
  /proc/self/clear_refs; CUDA: torch.cuda.max_memory_allocated, reset before each step);
- the cost of the row-max pass alone at one TAR layer (exact ``QKᵀ`` max, own-frame max) and of
  the fused kernel, relative to that layer's plain attention (SDPA);
- agreement of the own-frame-max approximation with exact TAR: the share of queries whose
  own-frame max is the exact max, and the distance of its output from exact TAR's relative to
  TAR's own effect, ‖y_frame − y_exact‖ / ‖y_exact − y_off‖ (0: identical; 1: as far as no TAR);
- what the strength does (the analysis of vstar_model.analysis.dit): the band score of the first
  TAR block's frame-to-frame map without TAR and with strength 0.25, 0.5, 1 and 2 (σ of the preset).

Variants: ``exact/tiled`` (tar_attention_3d: logits a tile of queries at a time, the max in the
same pass), ``exact/flex`` (exact row max, then fused FlexAttention), ``frame/flex`` (own-frame
max, then FlexAttention), ``frame/tiled``. FlexAttention compiles on the first call per shape
(untimed warm-up).

    .venv/bin/python benchmarks/tar_dit.py                  # CPU, mid-size Wan, 33 frames
    .venv/bin/python benchmarks/tar_dit.py --size tiny      # the unit tests' tiny Wan: agreement
    .venv/bin/python benchmarks/tar_dit.py --device cuda    # Wan 2.1 1.3B, bf16, 480×832, 81 and 161 frames

Sizes:
    tiny  2 heads × 12, 3 blocks, latent 8×12 (24 tokens per frame), TAR b0-2D1.
    mid   8 heads × 64 (dim 512), ffn 1536, 4 blocks, latent 32×32 (256 tokens per frame),
          33 frames → 9 latent frames (L = 2304), TAR b0-3D1s0.5.
    1.3b  Wan 2.1 T2V 1.3B: 12 heads × 128 (dim 1536), ffn 8960, 30 blocks, text 512 × 4096,
          480×832 → latent 60×104 (1560 tokens per frame); 81 / 161 frames → 21 / 41 latent
          frames (L = 32760 / 63960); TAR b0-9D1s0.5 (the DiT default).
Targets (issue 12): on a GPU at 1.3B, bf16: exact ≤ 1.15, approximate ≤ 1.05 s/step on/off.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vstar_model  # noqa: E402,F401  (torchvision compat before diffusers)
from devices import available_device  # noqa: E402
from vstar_model.tar.dit import DEFAULT_PRESET, DiTTARConfig, apply_dit_tar, parse_dit_tar  # noqa: E402
from vstar_model.tar.full_attention import (  # noqa: E402
    attention_row_max,
    flex_tar_attention_3d,
    frame_row_max,
    tar_attention_3d,
)
from vstar_model.analysis.dit import frame_attention_map  # noqa: E402
from vstar_model.analysis.temporal_attention import band_score  # noqa: E402
from vstar_model.tar.bands import gaussian_band  # noqa: E402

WAN = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", eps=1e-6)  # fmt: skip
SIZES = {
    "tiny": dict(
        model=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                   out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3, rope_max_seq_len=64),
        latent=(8, 12), frames=[17], text=(7, 16), tar="b0-2D1",
    ),
    "mid": dict(
        model=dict(WAN, num_attention_heads=8, attention_head_dim=64, text_dim=512, ffn_dim=1536, num_layers=4),
        latent=(32, 32), frames=[33], text=(64, 512), tar="b0-3D1s0.5",
    ),
    "1.3b": dict(
        model=dict(WAN, num_attention_heads=12, attention_head_dim=128, text_dim=4096, ffn_dim=8960, num_layers=30),
        latent=(60, 104), frames=[81, 161], text=(512, 4096), tar=DEFAULT_PRESET,
    ),
}  # fmt: skip
DEFAULT_VARIANTS = {"cpu": ["exact/tiled", "exact/flex", "frame/flex"], "cuda": ["exact/flex", "frame/flex"]}


def latent_frames(frames: int) -> int:
    """Wan's VAE: N pixel frames ↔ 1 + (N − 1)/4 latent frames."""
    if (frames - 1) % 4:
        raise SystemExit(f"--frames {frames}: Wan needs N ≡ 1 (mod 4) pixel frames, e.g. 33, 81, 161")
    return 1 + (frames - 1) // 4


def build_transformer(size: str, device: torch.device, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: 1.3B random weights in seconds on a GPU
        model = WanTransformer3DModel(**SIZES[size]["model"])
    # As from_pretrained(torch_dtype=...) loads it: RoPE tables, norms, time embedder stay float32.
    keep = model._keep_in_fp32_modules
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not any(part in name.split(".") for part in keep):
            tensor.data = tensor.data.to(dtype)
    return model.eval().requires_grad_(False)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as clear:  # Linux: VmHWM := current RSS
            clear.write("5")


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1)) * 1024


def _config(preset: str, variant: str) -> DiTTARConfig:
    row_max, kernel = variant.split("/")
    config = parse_dit_tar(preset)
    return DiTTARConfig(ranges=config.ranges, active_steps=1.0, row_max=row_max, kernel=kernel)


def _timed(device: torch.device, fn) -> tuple[float, float, object]:
    _synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    _synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _layer_inputs(transformer, tar: DiTTARConfig, call):
    """Query and key [batch, heads, L, head_dim] and latent frames of the first TAR block's attn1."""
    seen = {}
    with apply_dit_tar(transformer, tar) as handle:
        first = min(handle.blocks, key=handle.blocks.get)
        processor = transformer.attn_processors[first]
        processor.probe = lambda q, k, *, num_frames, **_: seen.update(query=q, key=k, num_frames=num_frames)
        call()
    return seen["query"], seen["key"], seen["num_frames"]


def layer_costs(device, query, key, value, num_frames, strength, repeats) -> dict[str, float]:
    """Median seconds of each attention path at one layer, and of the row-max passes alone."""
    band = gaussian_band(num_frames, 1.0, device=device, dtype=torch.float32)
    frame_max = frame_row_max(query, key, num_frames)
    paths = {
        "plain attention (SDPA)": lambda: torch.nn.functional.scaled_dot_product_attention(query, key, value),
        "exact row max pass": lambda: attention_row_max(query, key),
        "own-frame row max pass": lambda: frame_row_max(query, key, num_frames),
        "fused kernel, max given": lambda: flex_tar_attention_3d(query, key, value, band, num_frames,
                                                                 strength=strength, row_max=frame_max),
        "tiled exact TAR": lambda: tar_attention_3d(query, key, value, band, num_frames, strength=strength),
    }  # fmt: skip
    if device.type == "cuda":
        del paths["tiled exact TAR"]  # L×L in tiles at 480×832: slow by design, not a GPU path
    times: dict[str, list[float]] = {name: [] for name in paths}
    for name, path in paths.items():
        path()  # warm-up (compiles the fused kernel)
    for _ in range(repeats):
        for name, path in paths.items():
            times[name].append(_timed(device, path)[0])
    return {name: statistics.median(values) for name, values in times.items()}


def agreement(query, key, num_frames) -> tuple[float, float]:
    """Share of queries whose own-frame max equals the exact max; mean (exact − frame)/|exact|."""
    exact, frame = attention_row_max(query, key), frame_row_max(query, key, num_frames)
    same = torch.isclose(frame, exact, rtol=1e-3, atol=1e-3).float().mean()
    gap = ((exact - frame) / exact.abs().clamp_min(1e-6)).mean()
    return float(same), float(gap)


def strength_band_scores(query, key, num_frames, sigma) -> dict[str, float]:
    """Band score of one layer's frame-to-frame map, plain and under TAR at several strengths."""
    band = gaussian_band(num_frames, sigma, device=query.device, dtype=torch.float32)
    query, key = query[:1], key[:1]  # one video
    scores = {"off": float(band_score(frame_attention_map(query, key, num_frames)))}
    for strength in (0.25, 0.5, 1.0, 2.0):
        attention = frame_attention_map(query, key, num_frames, band=band, strength=strength)
        scores[f"s{strength:g}"] = float(band_score(attention))
    return scores


def run(args, frames: int) -> None:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    spec = SIZES[args.size]
    preset = args.tar or spec["tar"]
    variants = args.variants or DEFAULT_VARIANTS["cuda" if device.type == "cuda" else "cpu"]
    transformer = build_transformer(args.size, device, dtype)
    height, width = spec["latent"]
    generator = torch.Generator("cpu").manual_seed(0)
    channels = transformer.config.in_channels
    latents = torch.randn(2, channels, latent_frames(frames), height, width, generator=generator).to(device, dtype)
    text = torch.randn(2, *spec["text"], generator=generator).to(device, dtype)
    timestep = torch.tensor([500.0, 500.0], device=device)

    def call():
        return transformer(latents, timestep, encoder_hidden_states=text, return_dict=False)[0]

    def step(variant: str) -> tuple[float, float, int, torch.Tensor]:
        with apply_dit_tar(transformer, None if variant == "off" else _config(preset, variant)):
            _reset_peak(device)
            wall, cpu, output = _timed(device, call)
            return wall, cpu, _peak_bytes(device), output

    sides = ["off", *variants]
    times: dict[str, list[tuple[float, float, int]]] = {side: [] for side in sides}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for side in sides:  # warm-up: compiles FlexAttention for this shape
            outputs[side] = step(side)[3].float()
        for repeat in range(args.repeats):
            shift = repeat % len(sides)
            for side in sides[shift:] + sides[:shift]:
                times[side].append(step(side)[:3])
        tar = _config(preset, variants[0])
        query, key, num_frames = _layer_inputs(transformer, tar, call)
        value = torch.randn_like(query)  # its values do not change the cost
        costs = layer_costs(device, query, key, value, num_frames, tar.ranges[0].strength, args.repeats)
        same, gap = agreement(query, key, num_frames)
        sigma = tar.ranges[0].sigma
        scores = strength_band_scores(query, key, num_frames, sigma)

    tar_blocks = len(parse_dit_tar(preset).blocks)
    print(
        f"\nsize={args.size} device={device} dtype={args.dtype} frames={frames} (latent {latent_frames(frames)}×"
        f"{height}×{width}, L={query.shape[-2]}) cfg_batch=2 blocks={transformer.config.num_layers} "
        f"tar={preset} ({tar_blocks} blocks) repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    off_wall = statistics.median(t[0] for t in times["off"])
    off_cpu = statistics.median(t[1] for t in times["off"])
    off_peak = max(t[2] for t in times["off"])
    memory = "peak RSS" if device.type == "cpu" else "peak allocated"
    print(f"  off: {off_wall * 1e3:.0f} ms/step, {memory} {off_peak / 2**30:.2f} GiB")
    for variant in variants:
        wall = statistics.median(t[0] for t in times[variant])
        cpu = statistics.median(t[1] for t in times[variant])
        peak = max(t[2] for t in times[variant])
        cpu_ratio = f", cpu-time ratio {cpu / off_cpu:.3f}" if device.type == "cpu" else ""
        print(
            f"  {variant:12s} step ratio on/off {wall / off_wall:.3f}{cpu_ratio}, "
            f"{memory} {peak / 2**30:.2f} GiB ({peak / off_peak:.2f}× off)"
        )
    plain = costs.pop("plain attention (SDPA)")
    layer = f"{query.shape[0]}×{query.shape[1]} heads×{query.shape[-2]} tokens"
    print(f"  one TAR layer ({layer}): SDPA {plain * 1e3:.1f} ms")
    for name, seconds in costs.items():
        print(f"    {name}: {seconds / plain:.2f}× SDPA")
    if "exact/tiled" in outputs or "exact/flex" in outputs:
        exact = outputs.get("exact/flex", outputs.get("exact/tiled"))
        effect = float((exact - outputs["off"]).norm())
        for variant in variants:
            if variant.startswith("frame"):
                distance = float((outputs[variant] - exact).norm()) / max(effect, 1e-30)
                print(f"  {variant} vs exact TAR: ‖Δ‖/‖TAR effect‖ = {distance:.3f}")
    print(f"  own-frame max = exact max for {same:.1%} of queries (first TAR block); mean gap {gap:.3%} of |max|")
    print(f"  band score of the first TAR block's frame map (σ={sigma:g}): "
          + ", ".join(f"{name} {score:.2f}" for name, score in scores.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", type=available_device)
    parser.add_argument("--size", choices=sorted(SIZES), help="default: mid on CPU, 1.3b on CUDA")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--frames", type=int, action="append", help="pixel frames (N ≡ 1 mod 4); repeatable")
    parser.add_argument("--tar", help="DiT TAR preset (default: the size's)")
    parser.add_argument("--variants", nargs="+", choices=("exact/tiled", "exact/flex", "frame/flex", "frame/tiled"))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per side")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    args.size = args.size or ("1.3b" if cuda else "mid")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for frames in args.frames or SIZES[args.size]["frames"]:
        run(args, frames)
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
