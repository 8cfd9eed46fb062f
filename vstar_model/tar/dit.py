"""Temporal Attention Regularization (paper §3.4) for diffusion transformers (Wan 2.1 in diffusers).

A DiT has no separate temporal attention: ``attn1`` of each ``WanTransformerBlock`` is full
self-attention over all video tokens. TAR there adds ``strength·m_i·ΔA[f(i), f(j)]`` to the logits,
with f the latent frame of a token and ΔA the Gaussian band over latent-frame distance (see
:mod:`vstar_model.tar.full_attention`), or a given ``[F', F']`` matrix over latent frames
(``DiTTARConfig.matrix``, e.g. a real clip's frame similarity: paper Fig. 9,
:func:`vstar_model.tar.reference.reference_band_dit_tar`). UNet levels become transformer blocks.

``apply_dit_tar(transformer, "b0-9D1s0.5")`` swaps the ``attn1`` processors of the chosen blocks for
:class:`DiTTARAttnProcessor` and returns a :class:`DiTTARHandle`, the same shape as
:func:`vstar_model.tar.unet.apply_tar`: the sampling loop calls ``handle.set_step(step, num_steps)``
before each transformer call, TAR runs only in the leading ``active_steps`` of the schedule, in every
batch element (so in both guidance branches). A forward pre-hook on the transformer tells the
processors the token layout (latent frames, tokens per frame) from ``hidden_states`` and
``config.patch_size``, because Wan's blocks call ``attn1`` without keyword arguments.

Presets (σ in latent frames; parts joined by ``_``):

- ``b<first>-<last>D<σ>`` or ``b<block>D<σ>``: blocks first..last (inclusive, 0-based) with σ, e.g.
  ``b0-9D1``, ``b0-9D1_b10-19D4``;
- an optional ``s<strength>`` after σ multiplies m_i in that range, e.g. ``b0-9D1s0.5`` (default 1,
  the authors' value for UNets);
- optional parts ``w<fraction>`` (the step window, a fraction in (0, 1]; default 0.56 as for UNets)
  and ``framemax`` (m_i over the query's own frame: :func:`~vstar_model.tar.full_attention.frame_row_max`,
  cheaper than the exact row max over all keys);
- ``off`` / ``none``: no TAR.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from vstar_model.tar.bands import CachedBand, check_sigma, make_band, validate_band_matrix
from vstar_model.tar.full_attention import flex_tar_attention_3d, frame_row_max, tar_attention_3d
from vstar_model.tar.unet import DEFAULT_ACTIVE_STEPS, TARSchedule

if TYPE_CHECKING:
    from diffusers.models.transformers.transformer_wan import WanAttention

RowMax = Literal["exact", "frame"]
Kernel = Literal["auto", "tiled", "flex"]
ROW_MAX_MODES: tuple[str, ...] = ("exact", "frame")
KERNELS: tuple[str, ...] = ("auto", "tiled", "flex")
PRESETS: tuple[str, ...] = ("b0-9D1", "b0-9D1_b10-19D4", "b0-9D1s0.5")
# See README, "TAR on diffusion transformers": the first blocks, σ = 1 latent frame (4 pixel frames,
# where the UNet default is 1 pixel frame), half strength, since every same-frame key gets the boost.
DEFAULT_PRESET = "b0-9D1s0.5"
_OFF = ("off", "none")
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_BLOCK_PART = re.compile(rf"b(\d+)(?:-(\d+))?[dD]{_NUMBER}(?:s{_NUMBER})?")
_WINDOW_PART = re.compile(rf"w{_NUMBER}")
_FRAME_MAX_PART = "framemax"
_SYNTAX = (
    "b<first>-<last>D<sigma>[s<strength>] parts joined by '_' (e.g. 'b0-9D1', 'b0-9D1_b10-19D4', "
    "'b0-9D1s0.5'), optionally '_w<fraction>' and '_framemax', or 'off'"
)


def _number(text: str) -> str:
    return f"{float(text):g}"


@dataclass(frozen=True)
class BlockRange:
    """TAR on the ``attn1`` of blocks ``first``..``last`` (inclusive) with one σ and strength."""

    first: int
    last: int
    sigma: float
    strength: float = 1.0

    def __post_init__(self) -> None:
        for name in ("first", "last"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DiT TAR block {name} must be an int >= 0, got {value!r}")
        if self.last < self.first:
            raise ValueError(f"DiT TAR block range b{self.first}-{self.last} ends before it starts")
        object.__setattr__(self, "sigma", check_sigma(self.sigma))
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength < math.inf:
            raise ValueError(f"DiT TAR strength must be a finite number > 0, got {strength!r}")
        object.__setattr__(self, "strength", float(strength))

    @property
    def blocks(self) -> range:
        return range(self.first, self.last + 1)

    @property
    def preset(self) -> str:
        blocks = f"b{self.first}" if self.first == self.last else f"b{self.first}-{self.last}"
        strength = "" if self.strength == 1.0 else f"s{self.strength:g}"
        return f"{blocks}D{self.sigma:g}{strength}"


@dataclass(frozen=True)
class DiTTARConfig:
    """Where and how to regularise a DiT's self-attention.

    Attributes:
        ranges: the block ranges, each with its σ and strength; no block in two ranges.
        active_steps: TAR runs in this leading fraction of the denoising steps, in (0, 1], rounded
            half up (0.56 of 50 steps → steps 0–27), as for UNets.
        row_max: ``"exact"`` (m_i over all keys, the paper's definition) or ``"frame"`` (over the
            query's own latent frame; see :func:`~vstar_model.tar.full_attention.frame_row_max`).
        kernel: ``"flex"`` (fused FlexAttention, compiled on first use per shape), ``"tiled"``
            (:func:`~vstar_model.tar.full_attention.tar_attention_3d`) or ``"auto"``: flex on CUDA,
            tiled elsewhere (on CPU the tiled path is faster for the exact max and needs no compile).
        matrix: ΔA ``[F', F']`` over latent frames for every range instead of the Gaussian band
            (the ranges' σ is then unused, their strength is not); videos must then have F' latent
            frames. ``None`` (default): the Gaussian band of each range's σ.
    """

    ranges: tuple[BlockRange, ...]
    active_steps: float = DEFAULT_ACTIVE_STEPS
    row_max: RowMax = "exact"
    kernel: Kernel = "auto"
    matrix: torch.Tensor | None = field(default=None, repr=False)
    _by_block: dict[int, BlockRange] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ranges = tuple(self.ranges) if isinstance(self.ranges, (list, tuple)) else None
        if not ranges or not all(isinstance(part, BlockRange) for part in ranges):
            raise ValueError(f"DiTTARConfig.ranges must be a non-empty sequence of BlockRange, got {self.ranges!r}")
        object.__setattr__(self, "ranges", ranges)
        by_block: dict[int, BlockRange] = {}
        for part in ranges:
            twice = sorted(by_block.keys() & set(part.blocks))
            if twice:
                raise ValueError(f"DiT TAR names block(s) {_span(twice)} twice")
            by_block.update(dict.fromkeys(part.blocks, part))
        object.__setattr__(self, "_by_block", by_block)
        _check_active_steps(self.active_steps)
        if self.row_max not in ROW_MAX_MODES:
            raise ValueError(f"unknown DiT TAR row max {self.row_max!r}; expected one of {', '.join(ROW_MAX_MODES)}")
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown DiT TAR kernel {self.kernel!r}; expected one of {', '.join(KERNELS)}")
        if self.matrix is not None:
            object.__setattr__(self, "matrix", validate_band_matrix(self.matrix))

    @classmethod
    def from_preset(cls, preset: str) -> DiTTARConfig:
        """Parse a preset such as ``"b0-9D1"``, ``"b0-9D1_b10-19D4"``, ``"b0-9D1s0.5_w0.4_framemax"``."""
        if not isinstance(preset, str):
            raise ValueError(f"a DiT TAR preset must be a string such as {DEFAULT_PRESET!r}, got {preset!r}")
        ranges: list[BlockRange] = []
        options: dict[str, object] = {}
        for part in preset.strip().split("_"):
            block = _BLOCK_PART.fullmatch(part)
            window = _WINDOW_PART.fullmatch(part)
            if block is not None:
                first, last, sigma, strength = block.groups()
                ranges.append(
                    BlockRange(
                        int(first),
                        int(last if last is not None else first),
                        float(sigma),
                        1.0 if strength is None else float(strength),
                    )
                )
            elif window is not None and "active_steps" not in options:
                options["active_steps"] = float(window.group(1))
            elif part == _FRAME_MAX_PART and "row_max" not in options:
                options["row_max"] = "frame"
            else:
                raise ValueError(f"unknown DiT TAR preset {preset!r} (at {part!r}); expected {_SYNTAX}")
        if not ranges:
            raise ValueError(f"DiT TAR preset {preset!r} names no blocks; expected {_SYNTAX}")
        try:
            return cls(ranges=tuple(ranges), **options)
        except ValueError as error:
            raise ValueError(f"DiT TAR preset {preset!r}: {error}") from None

    @property
    def preset(self) -> str:
        """The canonical preset string (for records): ranges, then the window and row max if not default
        (a ``matrix`` is not part of it)."""
        parts = [part.preset for part in self.ranges]
        if self.active_steps != DEFAULT_ACTIVE_STEPS:
            parts.append(f"w{self.active_steps:g}")
        if self.row_max == "frame":
            parts.append(_FRAME_MAX_PART)
        return "_".join(parts)

    @property
    def blocks(self) -> dict[int, BlockRange]:
        """Block index → its range, for every regularised block."""
        return dict(self._by_block)

    def num_active_steps(self, num_steps: int) -> int:
        """How many leading steps of a ``num_steps``-step schedule TAR runs in."""
        return math.floor(self.active_steps * num_steps + 0.5)


def _span(blocks: list[int]) -> str:
    return f"{blocks[0]}" if len(blocks) == 1 else f"{blocks[0]}–{blocks[-1]}"


def _check_active_steps(active_steps: object) -> None:
    if not isinstance(active_steps, float) or not 0.0 < active_steps <= 1.0:  # also rejects NaN
        raise ValueError(f"DiT TAR active_steps must be a fraction of the steps in (0, 1], got {active_steps!r}")


def parse_dit_tar(spec: DiTTARConfig | str | None) -> DiTTARConfig | None:
    """A :class:`DiTTARConfig` from a config, a preset string, or ``None``/``"off"``/``"none"`` for no TAR."""
    if spec is None or isinstance(spec, DiTTARConfig):
        return spec
    if isinstance(spec, str):
        if spec.strip().lower() in _OFF:
            return None
        return DiTTARConfig.from_preset(spec)
    raise ValueError(f"cannot read a DiT TAR setting from {spec!r}; give a preset string such as {DEFAULT_PRESET!r}")


class TokenLayout:
    """(latent frames, tokens per frame) of the transformer call in progress, set by a forward pre-hook.

    ``hidden_states`` ``(batch, channels, F, H, W)`` patchified by ``patch_size`` ``(p_t, p_h, p_w)``
    gives ``F // p_t`` latent frames of ``(H // p_h)·(W // p_w)`` tokens, frame-major (diffusers'
    ``flatten(2)`` of the patch embedding).
    """

    def __init__(self, patch_size: tuple[int, int, int]):
        self.patch_size = tuple(patch_size)
        self.num_frames: int | None = None
        self.tokens_per_frame: int | None = None

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        self.num_frames = frames // p_t
        self.tokens_per_frame = (height // p_h) * (width // p_w)

    def frames_for(self, num_tokens: int) -> int:
        """The latent frames of a ``num_tokens``-token sequence; a clear error if it does not match."""
        if self.num_frames is None:
            raise RuntimeError("DiT TAR knows the token layout only inside a call of the whole transformer")
        if num_tokens != self.num_frames * self.tokens_per_frame:
            raise ValueError(
                f"attn1 sees {num_tokens} tokens, but the transformer input has {self.num_frames} latent "
                f"frames × {self.tokens_per_frame} tokens"
            )
        return self.num_frames


class DiTAttentionProbe(Protocol):
    """Called by a :class:`DiTSelfAttnProcessor` before it attends, e.g. to record the frame map.

    Gets the layer's ``query`` and ``key`` ``[batch, heads, L, head_dim]`` (after norms and RoPE),
    its latent ``num_frames``, and what it computes in this call: ``band`` ΔA ``[F, F]``,
    ``strength`` and ``row_max`` (the ``[batch, heads, L]`` approximation in use, ``None`` for the
    exact max) under TAR; ``band=None`` for plain attention. It must not modify them.
    """

    def __call__(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        *,
        num_frames: int,
        band: torch.Tensor | None,
        strength: float,
        row_max: torch.Tensor | None,
    ) -> None: ...


def _apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's 3D RoPE on ``[batch, L, heads, head_dim]``, as in diffusers' ``WanAttnProcessor``."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


@dataclass(frozen=True)
class LayerTAR:
    """What a regularised ``attn1`` applies: its block range (σ, strength), the range's ΔA source,
    the step window shared by the handle's processors, the row max and the kernel."""

    schedule: TARSchedule
    part: BlockRange
    band: CachedBand
    row_max: RowMax = "exact"
    kernel: Kernel = "auto"


class DiTSelfAttnProcessor:
    """diffusers' ``WanAttnProcessor`` for a block's ``attn1``, with TAR and/or a probe.

    Plain (no ``tar``, or outside its step window) it computes what ``WanAttnProcessor`` computes,
    bit for bit: the same projections, norms, RoPE, attention call (``dispatch_attention_fn`` with
    this processor's ``_attention_backend``, which ``set_attention_backend`` sets) and output
    projection. With ``tar`` active only the attention itself changes, to
    :func:`~vstar_model.tar.full_attention.tar_attention_3d` or its fused
    :func:`~vstar_model.tar.full_attention.flex_tar_attention_3d`. A ``probe`` sees the query and key
    of every call and does not change the output.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(
        self, layout: TokenLayout, *, tar: LayerTAR | None = None, probe: DiTAttentionProbe | None = None
    ):
        self.layout = layout
        self.tar = tar
        self.probe = probe

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        if encoder_hidden_states is not None:
            raise ValueError("DiT TAR processors are for self-attention (attn1) only")
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        # [batch, L, heads·head_dim] -> [batch, L, heads, head_dim], diffusers' dispatch layout
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        tar = self.tar if self.tar is not None and self.tar.schedule.active else None
        if tar is not None or self.probe is not None:
            num_frames = self.layout.frames_for(query.shape[1])
            # [batch, L, heads, head_dim] -> [batch, heads, L, head_dim], SDPA's layout
            heads_first = [x.transpose(1, 2) for x in (query, key, value)]
            band = row_max = None
            if tar is not None:
                band = tar.band(num_frames, query.device, torch.float32)
                if tar.row_max == "frame":
                    row_max = frame_row_max(heads_first[0], heads_first[1], num_frames)
            if self.probe is not None:
                strength = 1.0 if tar is None else tar.part.strength
                self.probe(*heads_first[:2], num_frames=num_frames, band=band, strength=strength, row_max=row_max)
        if tar is None:
            hidden_states = dispatch_attention_fn(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                backend=self._attention_backend, parallel_config=self._parallel_config,
            )  # fmt: skip
        else:
            if attention_mask is not None:
                raise ValueError("DiT TAR takes no attention mask (Wan's attn1 has none)")
            fused = tar.kernel == "flex" or (tar.kernel == "auto" and query.device.type == "cuda")
            attend = flex_tar_attention_3d if fused else tar_attention_3d
            hidden_states = attend(
                *heads_first, band, num_frames, strength=tar.part.strength, row_max=row_max
            ).transpose(1, 2)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.type_as(query)
        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        return hidden_states


def dit_self_attention_blocks(transformer: torch.nn.Module) -> dict[str, int]:
    """Processor name → block index of every transformer block's ``attn1`` (Wan's self-attention).

    Names are those of ``transformer.attn_processors``, e.g. ``"blocks.3.attn1.processor"``; an
    empty dict for a model without such blocks (a UNet, say).
    """
    from diffusers.models.transformers.transformer_wan import WanAttention

    blocks = getattr(transformer, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        return {}
    return {
        f"blocks.{index}.attn1.processor": index
        for index, block in enumerate(blocks)
        if isinstance(getattr(block, "attn1", None), WanAttention)
    }


def _attention_module(transformer: torch.nn.Module, processor_name: str) -> WanAttention:
    return transformer.get_submodule(processor_name.removesuffix(".processor"))


class DiTTARHandle:
    """Installed DiT TAR processors; a context manager that puts the previous processors back.

    Attributes:
        config: the installed config, or ``None`` when nothing was installed.
        blocks: processor name → block index of every ``attn1`` that got TAR.
    """

    def __init__(self, transformer: torch.nn.Module, config: DiTTARConfig | None):
        self.config = config
        self.blocks: dict[str, int] = {}
        self._transformer = transformer
        self._previous: dict[str, object] = {}
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._schedule = TARSchedule(config) if config is not None else None
        if config is not None:
            self._install(config)

    def _install(self, config: DiTTARConfig) -> None:
        model = type(self._transformer).__name__
        all_blocks = dit_self_attention_blocks(self._transformer)
        if not all_blocks:
            raise ValueError(f"{model} has no transformer blocks with self-attention (blocks.*.attn1) to regularise")
        missing = sorted(set(config.blocks) - set(all_blocks.values()))
        if missing:
            raise ValueError(
                f"DiT TAR block(s) {_span(missing)} are not in {model}, which has blocks 0–{len(all_blocks) - 1}"
            )
        layout = TokenLayout(self._transformer.config.patch_size)
        if config.matrix is None:
            bands = {part: make_band("gaussian", sigma=part.sigma) for part in config.ranges}
        else:
            bands = dict.fromkeys(config.ranges, make_band("matrix", matrix=config.matrix))
        current = self._transformer.attn_processors
        for name, index in all_blocks.items():
            part = config.blocks.get(index)
            if part is None:
                continue
            previous = current[name]
            if getattr(previous, "_parallel_config", None) is not None:
                raise ValueError("DiT TAR needs every token of a video on one device; turn context parallelism off")
            processor = DiTSelfAttnProcessor(
                layout,
                tar=LayerTAR(self._schedule, part, bands[part], row_max=config.row_max, kernel=config.kernel),
                # A probe already there (an attention capture) keeps seeing this layer, now with TAR.
                probe=previous.probe if isinstance(previous, DiTSelfAttnProcessor) else None,
            )
            processor._attention_backend = getattr(previous, "_attention_backend", None)
            self._previous[name] = previous
            _attention_module(self._transformer, name).set_processor(processor)
            self.blocks[name] = index
        self._hook = self._transformer.register_forward_pre_hook(layout.hook, with_kwargs=True)

    @property
    def active(self) -> bool:
        """Whether the installed processors currently regularise."""
        return self._schedule is not None and self._schedule.active and bool(self.blocks)

    def set_step(self, step: int, num_steps: int) -> None:
        """Declare the denoising step (0-based) that the next transformer calls belong to."""
        if self._schedule is not None:
            self._schedule.set_step(step, num_steps)

    def remove(self) -> None:
        """Put back the processors that were there before; other layers are left as they are now."""
        for name, processor in self._previous.items():
            _attention_module(self._transformer, name).set_processor(processor)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._previous.clear()
        self.blocks.clear()

    def __enter__(self) -> DiTTARHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def apply_dit_tar(transformer: torch.nn.Module, config: DiTTARConfig | str | None) -> DiTTARHandle:
    """Install TAR on the ``attn1`` of the configured blocks of a Wan transformer.

    ``config`` is anything :func:`parse_dit_tar` reads; ``None``/``"off"`` installs nothing and gives
    a handle whose methods do nothing, so callers need no special case. Use as
    ``with apply_dit_tar(transformer, "b0-9D1s0.5") as tar: ... tar.set_step(i, n); transformer(...)``.
    """
    return DiTTARHandle(transformer, parse_dit_tar(config))
