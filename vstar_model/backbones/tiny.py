"""Tiny randomly initialised text-to-video models saved in diffusers' on-disk layout.

They exist so the real ``from_pretrained`` loading code runs offline: in the tests, in the demo
and on machines with no hub access. Same seed, same weights. Architecturally they are faithful
miniatures: four UNet resolution levels (so TAR levels 64/32/16/8 all exist), an 8× VAE, a CLIP
text encoder and a byte-level CLIP tokenizer built without downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vstar_model import _compat  # noqa: F401

TINY_CROSS_ATTENTION_DIM = 32
_SCHEDULER_CONFIG = dict(  # ModelScope / VideoCrafter2 training schedule
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def _byte_vocab() -> dict[str, int]:
    """GPT-2 style byte→unicode table: every byte is one token (with and without ``</w>``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def save_tiny_tokenizer(directory: Path) -> None:
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps(_byte_vocab()))
    merges_file.write_text("#version: 0.2\n")
    CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77).save_pretrained(directory)


def _text_encoder(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(_byte_vocab()),
        hidden_size=TINY_CROSS_ATTENTION_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=len(_byte_vocab()) - 2,
        eos_token_id=len(_byte_vocab()) - 1,
        pad_token_id=len(_byte_vocab()) - 1,
    )
    return CLIPTextModel(config).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    ).eval()


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**_SCHEDULER_CONFIG)


def write_model_index(directory: Path, pipeline: str, components: dict[str, tuple[str, str]]):
    import diffusers

    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__}
    index.update({name: list(lib_cls) for name, lib_cls in components.items()})
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))


def _tiny_unet3d_config(block_out_channels: tuple[int, ...]) -> dict:
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=4,
    )


def build_tiny_unet3d(seed: int = 0, block_out_channels: tuple[int, ...] = (8, 16, 16, 16)):
    """A UNet3DConditionModel with ModelScope's block layout at toy width."""
    from diffusers import UNet3DConditionModel

    torch.manual_seed(seed)
    return UNet3DConditionModel(**_tiny_unet3d_config(block_out_channels)).eval()


def build_tiny_videocrafter_unet(seed: int = 0, block_out_channels: tuple[int, ...] = (8, 16, 16, 16)):
    """The same miniature with VideoCrafter2's fps embedding (the conversion's class and config key)."""
    from vstar_model.backbones.videocrafter import UNet3DVideoCrafterConditionModel

    torch.manual_seed(seed)
    return UNet3DVideoCrafterConditionModel(**_tiny_unet3d_config(block_out_channels), fps_cond=True).eval()


def save_tiny_text_to_video(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny ModelScope-layout model and save it under ``directory``.

    Layout (as ``ali-vilab/text-to-video-ms-1.7b`` on the hub): ``model_index.json``, ``unet/``,
    ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``. Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_tiny_unet3d(seed).save_pretrained(directory / "unet")
    _vae(seed + 1).save_pretrained(directory / "vae")
    _text_encoder(seed + 2).save_pretrained(directory / "text_encoder")
    save_tiny_tokenizer(directory / "tokenizer")
    _scheduler().save_pretrained(directory / "scheduler")
    write_model_index(
        directory,
        "TextToVideoSDPipeline",
        {
            "unet": ("diffusers", "UNet3DConditionModel"),
            "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "tokenizer": ("transformers", "CLIPTokenizer"),
            "scheduler": ("diffusers", "DDIMScheduler"),
        },
    )
    return directory


def save_tiny_videocrafter(directory: str | Path, seed: int = 0) -> Path:
    """The tiny model with a VideoCrafter2-class UNet: a local folder for the ``videocrafter2`` preset.

    ``directory`` is laid out like :func:`save_tiny_text_to_video`'s (Zeroscope's components), with
    ``unet/`` holding a ``UNet3DVideoCrafterConditionModel``. Returns the directory.
    """
    directory = save_tiny_text_to_video(directory, seed)
    build_tiny_videocrafter_unet(seed).save_pretrained(directory / "unet")
    return directory


def save_tiny_animatediff(directory: str | Path, seed: int = 0) -> Path:
    """Build a tiny SD-1.5-layout base model plus a motion adapter and save both.

    ``directory/base`` holds the image model (``unet/`` is a UNet2DConditionModel) and
    ``directory/motion_adapter`` the MotionAdapter, as they are published separately on the hub.
    """
    from diffusers import MotionAdapter, UNet2DConditionModel

    directory = Path(directory)
    base = directory / "base"
    channels = (8, 16, 16, 16)
    torch.manual_seed(seed)
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=4,
    ).save_pretrained(base / "unet")
    _vae(seed + 1).save_pretrained(base / "vae")
    _text_encoder(seed + 2).save_pretrained(base / "text_encoder")
    save_tiny_tokenizer(base / "tokenizer")
    _scheduler().save_pretrained(base / "scheduler")
    write_model_index(
        base,
        "StableDiffusionPipeline",
        {
            "unet": ("diffusers", "UNet2DConditionModel"),
            "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "tokenizer": ("transformers", "CLIPTokenizer"),
            "scheduler": ("diffusers", "DDIMScheduler"),
        },
    )
    torch.manual_seed(seed + 3)
    MotionAdapter(
        block_out_channels=channels,
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=4,
        motion_max_seq_length=32,
    ).save_pretrained(directory / "motion_adapter")
    return directory
