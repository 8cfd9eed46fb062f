"""A tiny randomly initialised Wan 2.1 saved in diffusers' on-disk layout (preset ``tiny-wan``).

Like :mod:`vstar_model.backbones.tiny` for the UNets: it exists so the real loading and sampling
code runs offline, in the tests and on machines without hub access. Same seed, same weights. A
faithful miniature of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``: a ``WanTransformer3DModel`` with two
blocks (so block presets of TAR mean something) and 3D RoPE, the causal ``AutoencoderKLWan`` with
Wan's 4× temporal and 8× spatial compression, a ``UMT5EncoderModel`` and a T5 (Unigram) tokenizer
built from a small character vocabulary without downloads, and Wan's UniPC flow-matching schedule.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vstar_model import _compat  # noqa: F401
from vstar_model.backbones.tiny import write_model_index

TINY_WAN_TEXT_DIM = 32
TINY_WAN_TEXT_LENGTH = 32  # tokens per text (Wan: 512)
TINY_WAN_LATENT_CHANNELS = 4  # Wan: 16
# Wan 2.1's scheduler config (UniPC in flow-prediction mode, flow shift 3.0 for 480P).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    flow_shift=3.0,
    solver_order=2,
    solver_type="bh2",
    predict_x0=True,
    lower_order_final=True,
    final_sigmas_type="zero",
    timestep_spacing="linspace",
    steps_offset=0,
)
_SPECIAL = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5 / UMT5


def _vocab() -> list[tuple[str, float]]:
    """Unigram pieces: T5's special tokens, the word boundary ▁, printable ASCII with and without ▁."""
    chars = [chr(c) for c in range(33, 127)]
    return [(tok, 0.0) for tok in _SPECIAL] + [("▁", -2.0)] + [(c, -3.0) for c in chars] + [("▁" + c, -3.5) for c in chars]


def save_tiny_wan_tokenizer(directory: Path) -> None:
    """A ``T5Tokenizer`` (tokenizers' Unigram) that ``AutoTokenizer.from_pretrained`` reads back."""
    from transformers import T5Tokenizer

    T5Tokenizer(vocab=_vocab(), extra_ids=0, model_max_length=TINY_WAN_TEXT_LENGTH).save_pretrained(directory)


def build_tiny_wan_transformer(seed: int = 0, *, num_layers: int = 2, heads: int = 2, head_dim: int = 32):
    """A ``WanTransformer3DModel`` with Wan's patch size (1, 2, 2) at toy width.

    A head dim of 32 splits the 3D RoPE into 12 temporal and 10 + 10 spatial channels (Wan 1.3B:
    44 + 42 + 42 of 128), enough temporal frequencies for RIFLEx to pick one.
    """
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=TINY_WAN_LATENT_CHANNELS,
        out_channels=TINY_WAN_LATENT_CHANNELS,
        text_dim=TINY_WAN_TEXT_DIM,
        freq_dim=32,
        ffn_dim=2 * heads * head_dim,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    ).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=4,
        z_dim=TINY_WAN_LATENT_CHANNELS,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],  # diffusers' spelling; 4× in time, 8× in space
        latents_mean=[0.0] * TINY_WAN_LATENT_CHANNELS,
        latents_std=[1.0] * TINY_WAN_LATENT_CHANNELS,
    ).eval()


def _text_encoder(seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=len(_vocab()),
        d_model=TINY_WAN_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def save_tiny_wan(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny Wan and save it under ``directory`` in the hub repository's layout:
    ``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``.
    Returns the directory."""
    from diffusers import UniPCMultistepScheduler

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_tiny_wan_transformer(seed).save_pretrained(directory / "transformer")
    _vae(seed + 1).save_pretrained(directory / "vae")
    _text_encoder(seed + 2).save_pretrained(directory / "text_encoder")
    save_tiny_wan_tokenizer(directory / "tokenizer")
    UniPCMultistepScheduler(**SCHEDULER_CONFIG).save_pretrained(directory / "scheduler")
    write_model_index(
        directory,
        "WanPipeline",
        {
            "transformer": ("diffusers", "WanTransformer3DModel"),
            "vae": ("diffusers", "AutoencoderKLWan"),
            "text_encoder": ("transformers", "UMT5EncoderModel"),
            "tokenizer": ("transformers", "T5Tokenizer"),
            "scheduler": ("diffusers", "UniPCMultistepScheduler"),
        },
    )
    return directory

