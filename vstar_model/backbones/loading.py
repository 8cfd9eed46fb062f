"""Loading a backbone preset from a local directory or the Hugging Face hub cache.

Loading goes through each component's own ``from_pretrained`` (the same code path for the tiny
built-in model and for real checkpoints); when weights cannot be found the error names the preset, every location
tried, and the command that pre-downloads them.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vstar_model import _compat  # noqa: F401
from vstar_model.backbones.presets import BackbonePreset, Family, get_preset

if TYPE_CHECKING:
    from vstar_model.backbones.wan import WanVideoModel


class BackboneNotFound(FileNotFoundError):
    """Weights for a preset are neither in the given directory nor in the hub cache."""


@dataclass(frozen=True)
class WeightLocations:
    """Where a backbone's weights are: ``base`` in diffusers' pipeline layout (tokenizer/,
    text_encoder/, vae/, scheduler/), the denoiser's folder (``unet/``, Wan's ``transformer/``, or
    VideoCrafter2's UNet repository), and AnimateDiff's motion adapter."""

    base: Path
    unet: Path
    motion_adapter: Path | None = None

    def __str__(self) -> str:
        inside = (self.base / "unet", self.base / "transformer")
        extra = [str(p) for p in (self.unet, self.motion_adapter) if p is not None and p not in inside]
        return " + ".join([str(self.base), *extra])


@dataclass(kw_only=True)
class LoadedBackbone:
    """What every loaded text-to-video backbone holds besides its denoiser."""

    preset: BackbonePreset
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    location: str
    revision: str | None = None
    # One generation at a time per loaded model: the scheduler state, TAR processors and per-frame
    # hooks live on shared modules, and Prefect may run tasks of one process in threads.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def family(self) -> Family:
        return self.preset.family


@dataclass(kw_only=True)
class VideoModel(LoadedBackbone):
    """A video UNet backbone, ready for :mod:`vstar_model.sampling.unet`."""

    unet: torch.nn.Module

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def unet_kwargs(self) -> dict:
        """Extra UNet arguments of this backbone on every call (VideoCrafter2's fps)."""
        return {"fps": self.preset.fps_condition} if self.preset.fps_condition else {}

    def signal_scale(self) -> torch.Tensor | None:
        """(T,) VideoCrafter2's s_t on the CPU for a rescaled schedule, else None."""
        if not self.preset.rescaled_schedule:
            return None
        from vstar_model.backbones.videocrafter import signal_scale

        return signal_scale(self.scheduler.config.num_train_timesteps)


def cache_root() -> Path:
    """Where vstar keeps generated artefacts such as the tiny model (``VSTAR_CACHE_DIR``)."""
    return Path(os.environ.get("VSTAR_CACHE_DIR") or Path.home() / ".cache" / "vstar")


def builtin_model_path(source: str = "builtin:tiny", seed: int = 0) -> Path:
    """A built-in tiny model (``builtin:tiny``, ``builtin:tiny-wan``), built and saved in diffusers'
    layout on first use."""
    from vstar_model.backbones.tiny import save_tiny_text_to_video
    from vstar_model.backbones.tiny_wan import save_tiny_wan

    # The folder name carries a version: change it when a model's architecture changes.
    builders = {"builtin:tiny": ("tiny", save_tiny_text_to_video), "builtin:tiny-wan": ("tiny-wan-v1", save_tiny_wan)}
    if source not in builders:
        raise ValueError(f"unknown built-in model {source!r}; known: {', '.join(builders)}")
    name, save = builders[source]
    path = cache_root() / "models" / f"{name}-seed{seed}"
    if not (path / "model_index.json").exists():
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        save(tmp, seed=seed)
        try:
            tmp.rename(path)  # atomic: concurrent first uses never see a half-written model
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def files_to_download(repo_files: list[str], folders: tuple[str, ...] = ("",)) -> list[str]:
    """The files of a hub repository that loading needs: configs and tokenizer files, and the
    weights in ``folders`` ("" is the root), per folder as ``.safetensors`` where it has them, else
    ``.bin`` (older uploads such as Zeroscope's have only those), never half-precision variants
    next to full ones. Other weights (a safety checker, single-file checkpoints) are left out."""
    weights = (".safetensors", ".bin")
    chosen = [f for f in repo_files if f.endswith((".json", ".txt", ".model")) or f.startswith("tokenizer/")]
    by_folder: dict[str, list[str]] = {}
    for name in repo_files:
        if name.endswith(weights) and posixpath.dirname(name) in folders:
            by_folder.setdefault(posixpath.dirname(name), []).append(name)
    for names in by_folder.values():
        full = [n for n in names if ".fp16." not in n] or names
        chosen += [n for n in full if n.endswith(".safetensors")] or [n for n in full if n.endswith(".bin")]
    return sorted(set(chosen))


def _resolve_hub(repo: str, revision: str | None, preset: BackbonePreset, tried: list[str],
                 folders: tuple[str, ...] = ("",)) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        tried.append(f"hub cache ({os.environ.get('HF_HOME') or '~/.cache/huggingface'}) for {repo}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise _not_found(preset, tried)
    try:
        files = files_to_download(HfApi().list_repo_files(repo, revision=revision), folders)
        return Path(snapshot_download(repo, revision=revision, allow_patterns=files))
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        tried.append(f"download of {repo} from the hub ({type(exc).__name__}: {str(exc)[:200]})")
        raise _not_found(preset, tried) from None


def _not_found(preset: BackbonePreset, tried: list[str]) -> BackboneNotFound:
    repos = [preset.source] + [repo for repo in (preset.unet_source, preset.motion_adapter) if repo]
    howto = "; ".join(f"huggingface-cli download {r}" for r in repos)
    return BackboneNotFound(
        f"weights for model preset {preset.name!r} not found. Tried: {'; '.join(tried)}. "
        f"Pre-download on a machine with network access ({howto}) and copy the hub cache here "
        f"(HF_HOME), or pass the local directory: --model-path on the command line, the parameter "
        f"model.path of a deployment (--param 'model={{\"path\": \"/models/...\"}}')."
    )


def resolve_location(preset: BackbonePreset, path: str | Path | None = None) -> WeightLocations:
    """Find a preset's weights: in ``path`` (a diffusers pipeline folder, optionally with
    ``motion_adapter/``; AnimateDiff's may instead be ``base/`` + ``motion_adapter/``), else in the hub cache."""
    tried: list[str] = []
    denoiser = "transformer" if preset.family == "wan" else "unet"
    if path is not None:
        path = Path(path)
        if any((path / name).exists() for name in ("model_index.json", "unet", "transformer", "base")):
            base = path / "base" if (path / "base").is_dir() else path
            adapter = path / "motion_adapter" if (path / "motion_adapter").is_dir() else None
            if preset.family == "animatediff" and adapter is None and preset.motion_adapter:
                adapter = _resolve_hub(preset.motion_adapter, None, preset, tried)
            return WeightLocations(base, base / denoiser, adapter)
        tried.append(f"local directory {path} (no model_index.json or {denoiser}/)")
        raise _not_found(preset, tried)
    if preset.source.startswith("builtin:"):
        base = builtin_model_path(preset.source)
        return WeightLocations(base, base / denoiser)
    components = tuple(c for c in preset.components if not (c == "unet" and preset.unet_source))
    base = _resolve_hub(preset.source, preset.revision, preset, tried, folders=components)
    unet = _resolve_hub(preset.unet_source, None, preset, tried) if preset.unet_source else base / denoiser
    adapter = _resolve_hub(preset.motion_adapter, None, preset, tried) if preset.motion_adapter else None
    return WeightLocations(base, unet, adapter)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_backbone(
    preset: str | BackbonePreset,
    *,
    path: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> VideoModel | WanVideoModel:
    """Load a backbone's components with their own ``from_pretrained`` (Wan's in
    :func:`vstar_model.backbones.wan.load_wan`).

    ``dtype`` defaults to the preset's on GPU and float32 on CPU (half precision is slow or
    unsupported for many CPU kernels).
    """
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    preset = get_preset(preset) if isinstance(preset, str) else preset
    torch_device = pick_device(device)
    dtype_name = dtype or (preset.dtype if torch_device.type != "cpu" else "float32")
    try:
        torch_dtype = getattr(torch, dtype_name)
        assert isinstance(torch_dtype, torch.dtype)
    except (AttributeError, AssertionError):
        raise ValueError(f"unknown dtype {dtype_name!r}; use float32, float16 or bfloat16") from None

    locations = resolve_location(preset, path)
    if preset.family == "wan":
        from vstar_model.backbones.wan import load_wan

        return load_wan(preset, locations, torch_device, torch_dtype)
    base = locations.base
    try:
        tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", torch_dtype=torch_dtype)
        vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch_dtype)
        scheduler = DDIMScheduler.from_pretrained(base / "scheduler")
        if preset.family == "animatediff":
            from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

            if locations.motion_adapter is None:
                raise _not_found(preset, [f"motion adapter for {base}"])
            unet2d = UNet2DConditionModel.from_pretrained(locations.unet, torch_dtype=torch_dtype)
            adapter = MotionAdapter.from_pretrained(locations.motion_adapter, torch_dtype=torch_dtype)
            unet = UNetMotionModel.from_unet2d(unet2d, adapter).to(torch_dtype)
        else:
            from diffusers import UNet3DConditionModel

            from vstar_model.backbones.videocrafter import UNet3DVideoCrafterConditionModel

            unet_class = UNet3DVideoCrafterConditionModel if preset.family == "videocrafter" else UNet3DConditionModel
            unet = unet_class.from_pretrained(locations.unet, torch_dtype=torch_dtype)
    except (OSError, EnvironmentError) as exc:
        raise BackboneNotFound(
            f"model preset {preset.name!r}: incomplete weights in {locations}: {exc}"
        ) from None
    for module in (text_encoder, vae, unet):
        module.to(torch_device).eval().requires_grad_(False)
    return VideoModel(
        preset=preset,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        device=torch_device,
        dtype=torch_dtype,
        location=str(locations),
        revision="+".join(filter(None, [snapshot_revision(base), snapshot_revision(locations.unet)])) or preset.revision,
    )


def snapshot_revision(base: Path) -> str | None:
    """The hub commit of a snapshot directory (``.../snapshots/<sha>``), if it is one."""
    return base.name if base.parent.name == "snapshots" else None

