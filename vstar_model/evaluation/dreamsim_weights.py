"""Where DreamSim's weights live, whether they are all there, and random stand-ins for offline runs.

``dreamsim.dreamsim(...)`` downloads a checkpoint zip from GitHub whenever a file it expects is
missing, and the DINO-based types also fetch code and weights through ``torch.hub``. On a machine
without network that is a slow, confusing failure deep inside the package, so the files are checked
here first and a missing one raises :class:`DreamSimWeightsMissing`, which says what to copy where.

The file lists mirror dreamsim 0.2.1 (``model.download_weights`` and
``feature_extraction.extractor.ViTExtractor.create_model``); dreamsim points ``torch.hub`` at the
same cache directory, so the hub files are checked relative to it as well.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CACHE_DIR_ENV = "VSTAR_DREAMSIM_CACHE"
RANDOM_WEIGHTS_MARKER = "VSTAR_RANDOM_WEIGHTS"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT reads either

# dreamsim_type -> (checkpoint files in the cache dir, LoRA adapter folder).
_CHECKPOINTS: dict[str, tuple[tuple[str, ...], str]] = {
    "ensemble": (
        ("dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar"),
        "ensemble_lora",
    ),
    "dino_vitb16": (("dino_vitb16_pretrain.pth",), "dino_vitb16_single_lora"),
    "dinov2_vitb14": (("dinov2_vitb14_pretrain.pth",), "dinov2_vitb14_single_lora"),
    "open_clip_vitb32": (("open_clip_vitb32_pretrain.pth.tar",), "open_clip_vitb32_single_lora"),
    "clip_vitb32": (("clip_vitb32_pretrain.pth.tar",), "clip_vitb32_single_lora"),
    "synclr_vitb16": (("synclr_vit_b_16.pth",), "synclr_vitb16_single_lora"),
}
# torch.hub repository snapshot and backbone weights the DINO-based types load besides.
_TORCH_HUB_FILES: dict[str, tuple[str, ...]] = {
    "ensemble": ("facebookresearch_dino_main/hubconf.py", "checkpoints/dino_vitbase16_pretrain.pth"),
    "dino_vitb16": ("facebookresearch_dino_main/hubconf.py", "checkpoints/dino_vitbase16_pretrain.pth"),
    "dinov2_vitb14": ("facebookresearch_dinov2_main/hubconf.py", "checkpoints/dinov2_vitb14_pretrain.pth"),
}
DREAMSIM_TYPES = tuple(_CHECKPOINTS)
# Types whose backbone is a plain checkpoint file: no torch.hub, so random stand-ins can be built.
_RANDOM_BUILDABLE = ("open_clip_vitb32", "clip_vitb32")


class DreamSimWeightsMissing(FileNotFoundError):
    """DreamSim's cache lacks files and this machine cannot (or must not) download them."""


def default_cache_dir() -> Path:
    """``$VSTAR_DREAMSIM_CACHE`` if set, else ``~/.cache/vstar/dreamsim``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "vstar" / "dreamsim"


def _check_type(dreamsim_type: str) -> None:
    if dreamsim_type not in _CHECKPOINTS:
        raise ValueError(f"unknown dreamsim_type {dreamsim_type!r}; expected one of {', '.join(DREAMSIM_TYPES)}")


def adapter_dir_name(dreamsim_type: str) -> str:
    _check_type(dreamsim_type)
    return _CHECKPOINTS[dreamsim_type][1]


def missing_files(cache_dir: str | os.PathLike, dreamsim_type: str) -> list[str]:
    """Paths, relative to ``cache_dir``, that ``dreamsim(dreamsim_type=..., cache_dir=...)`` needs and
    cannot find (it would try to download them)."""
    _check_type(dreamsim_type)
    cache_dir = Path(cache_dir)
    checkpoints, adapter = _CHECKPOINTS[dreamsim_type]
    missing = [name for name in checkpoints if not (cache_dir / name).exists()]
    if not (cache_dir / adapter / "adapter_config.json").is_file():
        missing.append(f"{adapter}/adapter_config.json")
    if not any((cache_dir / adapter / name).is_file() for name in ADAPTER_WEIGHT_FILES):
        missing.append(f"{adapter}/{' or '.join(ADAPTER_WEIGHT_FILES)}")
    missing += [name for name in _TORCH_HUB_FILES.get(dreamsim_type, ()) if not (cache_dir / name).exists()]
    return missing


def check_dreamsim_cache(cache_dir: str | os.PathLike, dreamsim_type: str) -> None:
    """Raise :class:`DreamSimWeightsMissing` unless every file DreamSim needs is in ``cache_dir``."""
    missing = missing_files(cache_dir, dreamsim_type)
    if not missing:
        return
    cache_dir = Path(cache_dir).expanduser().resolve()
    lines = [
        f"DreamSim ({dreamsim_type}) weights are missing from {cache_dir}:",
        *(f"  - {name}" for name in missing),
        "DreamSim would download them (from GitHub releases"
        + (" and through torch.hub" if dreamsim_type in _TORCH_HUB_FILES else "")
        + "), which this machine cannot do. On a machine with network run",
        f'  python -c "from dreamsim import dreamsim; dreamsim(pretrained=True, device=\'cpu\', '
        f"dreamsim_type='{dreamsim_type}', cache_dir='dreamsim-cache')\"",
        f"then copy the whole 'dreamsim-cache' folder to {cache_dir} "
        f"(or point ${CACHE_DIR_ENV} / cache_dir at the copy).",
    ]
    if dreamsim_type == "dinov2_vitb14":
        lines.append("dinov2 also asks GitHub for its default branch on every load; offline it falls back to the cache.")
    raise DreamSimWeightsMissing("\n".join(lines))


def uses_random_weights(cache_dir: str | os.PathLike) -> bool:
    """True when ``cache_dir`` was filled by :func:`save_random_dreamsim_cache`."""
    return (Path(cache_dir) / RANDOM_WEIGHTS_MARKER).exists()


def save_random_dreamsim_cache(
    cache_dir: str | os.PathLike, dreamsim_type: str = "open_clip_vitb32", seed: int = 0
) -> Path:
    """Fill ``cache_dir`` with randomly initialised DreamSim files in the package's own layout.

    The real ``dreamsim(...)`` loading path then runs offline: a ViT-B/32 backbone checkpoint (as
    dreamsim's ``load_*_as_dino`` expects it, with its ``proj`` matrix) and a PEFT LoRA adapter with
    random non-zero weights. A ``VSTAR_RANDOM_WEIGHTS`` marker file makes every embedder built on this
    cache say so in its metric name. Only the two CLIP ViT-B/32 types are supported: the others load
    their backbones through ``torch.hub``. Same seed, same weights. Returns ``cache_dir``.
    """
    _check_type(dreamsim_type)
    if dreamsim_type not in _RANDOM_BUILDABLE:
        raise ValueError(
            f"random DreamSim caches exist only for {', '.join(_RANDOM_BUILDABLE)} (no torch.hub), "
            f"not {dreamsim_type!r}"
        )
    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction.vision_transformer import vit_base
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's generator alone
        torch.manual_seed(seed)
        backbone = vit_base(patch_size=32)
        # dreamsim's loaders replace pos_drop with the CLIP pre-LayerNorm before loading the state dict.
        backbone.pos_drop = torch.nn.LayerNorm(backbone.embed_dim)
        state_dict = backbone.state_dict()
        state_dict["proj"] = torch.randn(backbone.embed_dim, 512) / backbone.embed_dim**0.5
        torch.save({"state_dict": state_dict}, cache_dir / _CHECKPOINTS[dreamsim_type][0][0])

        model = PerceptualModel(**dreamsim_args["model_config"][dreamsim_type], load_dir=str(cache_dir), device="cpu")
        # The LoRA configuration DreamSim was trained with (r=16, alpha=0.5 on the attention qkv).
        lora = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=0.5, lora_dropout=0.3, bias="none", target_modules=["qkv"])
        )
        with torch.no_grad():
            for name, parameter in lora.named_parameters():
                if "lora_B" in name:  # PEFT initialises B to zero, which would make the adapter a no-op
                    parameter.normal_(std=0.02)
        lora.save_pretrained(cache_dir / adapter_dir_name(dreamsim_type))
    (cache_dir / RANDOM_WEIGHTS_MARKER).write_text(f"random DreamSim {dreamsim_type} weights, seed {seed}\n")
    return cache_dir
