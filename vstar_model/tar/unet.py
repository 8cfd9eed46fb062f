"""Temporal Attention Regularization (paper §3.4) for diffusers video UNets.

``apply_tar(unet, "64D1")`` swaps the processors of the temporal self-attention layers (both
``attn1`` and ``attn2`` of every temporal transformer inside the down, mid and up blocks) at the
chosen levels for :class:`TARAttnProcessor` and returns a :class:`TARHandle`. As in the authors'
code, the UNet's initial temporal transformer (diffusers' ``transformer_in``, LVDM's
``init_attn``) is left alone: of VideoCrafter2's 34 temporal attention layers, 32 are regularised.
``TARConfig(include_stem=True)`` (preset suffix ``+stem``, e.g. ``"64D1+stem"``) regularises it
too, at level 64. The sampling loop calls
``handle.set_step(step, num_steps)`` before each UNet call; TAR is applied only in the first
``active_steps`` steps, in every batch element (so in both classifier-free-guidance branches).
It derives from :class:`TemporalAttnProcessor` (``AttnProcessor2_0`` for temporal layers), which
can carry a probe that sees each layer's query and key: how
:func:`vstar_model.analysis.temporal_attention.capture_attention` records attention maps.

A *level* is the spatial size of a block's feature map relative to the full latent, named as the
authors do for 320×512 videos (40×64 latent): 64 is full resolution, then 32, 16 and 8. We derive
it from where the layer sits in the UNet, so it holds at any resolution, batch size and CFG
batching (the authors infer it from the token count, which only works at batch 1 and 320×512).

Supported UNets: ``UNet3DConditionModel`` (ModelScope, Zeroscope, VideoCrafter2 conversions;
temporal layers ``transformer_in`` and ``*.temp_attentions.*``) and AnimateDiff's
``UNetMotionModel`` (``*.motion_modules.*``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from vstar_model.tar.attention import REPLACE_MODES, ReplaceMode, replaced_attention, tar_attention
from vstar_model.tar.bands import BAND_MODES, BandMode, CachedBand, check_sigma, make_band, validate_band_matrix

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

LEVELS: tuple[int, ...] = (64, 32, 16, 8)
PRESETS: tuple[str, ...] = ("64D1", "64D4", "64D1_32D8")
DEFAULT_PRESET = "64D1"
DEFAULT_ACTIVE_STEPS = 0.56  # steps 0–13 of 25, as in the authors' runs
_OFF = ("off", "none")
_PRESET_PART = re.compile(r"(\d+)[dD](\d+(?:\.\d*)?|\.\d+)")
STEM_SUFFIX = "+stem"

# Processor names of temporal self-attention layers, e.g.
# "down_blocks.1.temp_attentions.0.transformer_blocks.0.attn2.processor" (UNet3DConditionModel),
# "up_blocks.3.motion_modules.1.transformer_blocks.0.attn1.processor" (UNetMotionModel).
_TEMPORAL_NAME = re.compile(
    r"^(?:(?P<stem>transformer_in)"
    r"|(?:down_blocks\.(?P<down>\d+)|up_blocks\.(?P<up>\d+)|(?P<mid>mid_block))"
    r"\.(?:temp_attentions|motion_modules)\.\d+)"
    r"\..*\.processor$"
)


def _check_level(level: object) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise ValueError(f"unknown TAR level {level!r}; valid levels are {', '.join(map(str, LEVELS))}")
    return level


@dataclass(frozen=True, eq=False)
class TARConfig:
    """Where and how to regularise temporal attention.

    Attributes:
        sigmas: level → σ of the Gaussian band, e.g. ``{64: 1.0, 32: 8.0}``; a level absent is not
            touched. The keys choose the levels for every mode; σ is read only in ``"gaussian"``
            mode.
        mode: the ΔA added to the logits: ``"gaussian"`` (the paper's TAR), ``"identity"``,
            ``"ones"`` (no effect; a control) or ``"matrix"`` (``matrix``, e.g. a DreamSim
            frame-similarity matrix of a real video, paper Fig. 9).
        replace: instead of regularising, replace the attention map itself by the identity or by
            J_N/N at the chosen levels (paper Fig. 5); ``mode`` is then unused.
        matrix: the ``[N, N]`` ΔA of ``"matrix"`` mode; videos must then have N frames.
        active_steps: TAR runs in the leading denoising steps: an int is a step count, a float in
            (0, 1] a fraction of the steps, rounded half up (0.56 of 25 steps → steps 0–13).
        include_stem: also regularise the initial temporal transformer (``transformer_in``, level
            64), which the authors leave alone; off by default.
    """

    sigmas: Mapping[int, float]
    mode: BandMode = "gaussian"
    replace: ReplaceMode | None = None
    matrix: torch.Tensor | None = field(default=None, repr=False)
    active_steps: int | float = DEFAULT_ACTIVE_STEPS
    include_stem: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.sigmas, Mapping) or not self.sigmas:
            raise ValueError(
                f"TARConfig.sigmas must be a non-empty mapping level → sigma, got {self.sigmas!r} "
                "(use None for no TAR)"
            )
        sigmas = {_check_level(level): check_sigma(sigma) for level, sigma in self.sigmas.items()}
        object.__setattr__(self, "sigmas", sigmas)
        if self.mode not in BAND_MODES:
            raise ValueError(f"unknown TAR mode {self.mode!r}; expected one of {', '.join(BAND_MODES)}")
        if self.replace is not None and self.replace not in REPLACE_MODES:
            expected = ", ".join(REPLACE_MODES)
            raise ValueError(f"unknown TAR replace mode {self.replace!r}; expected None or one of {expected}")
        if (self.mode == "matrix") != (self.matrix is not None):
            raise ValueError(
                f"TAR mode {self.mode!r} {'needs' if self.mode == 'matrix' else 'takes no'} matrix"
            )
        if self.matrix is not None:
            object.__setattr__(self, "matrix", validate_band_matrix(self.matrix))
        _check_active_steps(self.active_steps)
        if not isinstance(self.include_stem, bool):
            raise ValueError(f"TAR include_stem must be True or False, got {self.include_stem!r}")

    @classmethod
    def from_preset(cls, preset: str, *, active_steps: int | float | None = None) -> TARConfig:
        """Parse ``"<level>D<sigma>"`` parts joined by ``_``: ``"64D1"``, ``"64D4"``, ``"64D1_32D8"``,
        optionally ending in ``+stem`` (``"64D1+stem"``: ``include_stem=True``); ``active_steps``
        defaults to :data:`DEFAULT_ACTIVE_STEPS`."""
        if not isinstance(preset, str):
            raise ValueError(f"a TAR preset must be a string such as {PRESETS[0]!r}, got {preset!r}")
        body = preset.strip()
        include_stem = body.lower().endswith(STEM_SUFFIX)
        if include_stem:
            body = body[: -len(STEM_SUFFIX)]
        sigmas: dict[int, float] = {}
        for part in body.split("_"):
            match = _PRESET_PART.fullmatch(part)
            if match is None:
                raise ValueError(
                    f"unknown TAR preset {preset!r}; expected <level>D<sigma> parts joined by '_', "
                    f"e.g. {', '.join(map(repr, PRESETS))}, optionally ending in {STEM_SUFFIX!r}, or 'off'"
                )
            level = int(match.group(1))
            if level in sigmas:
                raise ValueError(f"TAR preset {preset!r} names level {level} twice")
            sigmas[level] = float(match.group(2))
        active_steps = DEFAULT_ACTIVE_STEPS if active_steps is None else active_steps
        return cls(sigmas=sigmas, active_steps=active_steps, include_stem=include_stem)

    @property
    def levels(self) -> frozenset[int]:
        return frozenset(self.sigmas)

    def settings(self) -> dict:
        """Every setting as plain JSON values, e.g. for content keys: equal settings give equal
        dicts whatever string they were parsed from (``"64D1"``, ``"64d1.0"``); a matrix as rows."""
        return {
            "sigmas": {str(level): sigma for level, sigma in sorted(self.sigmas.items())},
            "mode": self.mode,
            "replace": self.replace,
            "matrix": None if self.matrix is None else self.matrix.tolist(),
            "active_steps": self.active_steps,
            "include_stem": self.include_stem,
        }

    def num_active_steps(self, num_steps: int) -> int:
        """How many leading steps of a ``num_steps``-step schedule TAR runs in."""
        if isinstance(self.active_steps, int):
            return min(self.active_steps, num_steps)
        return math.floor(self.active_steps * num_steps + 0.5)

    def band_for(self, level: int) -> CachedBand:
        """The cached ΔA source used at ``level`` (one per level, shared by its processors)."""
        sigma = self.sigmas[level]
        return make_band(self.mode, sigma=sigma, matrix=self.matrix)


def _check_active_steps(active_steps: object) -> None:
    if isinstance(active_steps, bool) or not isinstance(active_steps, (int, float)):
        raise ValueError(f"TAR active_steps must be an int or a float fraction, got {active_steps!r}")
    if isinstance(active_steps, int):
        if active_steps < 1:
            raise ValueError(f"TAR active_steps as a step count must be >= 1, got {active_steps!r}")
    elif not 0.0 < active_steps <= 1.0:  # also rejects NaN
        raise ValueError(f"TAR active_steps as a fraction must be in (0, 1], got {active_steps!r}")


def parse_tar(spec: TARConfig | str | Mapping[int, float] | None) -> TARConfig | None:
    """A :class:`TARConfig` from a config, a preset string, a mapping level → σ, or ``None`` for
    no TAR (also ``"off"`` and ``"none"``).
    """
    if spec is None or isinstance(spec, TARConfig):
        return spec
    if isinstance(spec, str):
        if spec.strip().lower() in _OFF:
            return None
        return TARConfig.from_preset(spec)
    if isinstance(spec, Mapping):
        return TARConfig(sigmas=spec)
    raise ValueError(f"cannot read a TAR setting from {spec!r}; give a preset string, a mapping or None")


def temporal_attention_levels(unet: torch.nn.Module, *, include_stem: bool = True) -> dict[str, int]:
    """Processor name → level for every temporal self-attention layer of ``unet``.

    Names are those of ``unet.attn_processors``. ``include_stem=False`` leaves out the initial
    temporal transformer (``transformer_in``), as TAR does by default. The depth of a block is its number of 2×
    downsamplings from the full latent: ``transformer_in`` and ``down_blocks.i`` have depth i,
    ``mid_block`` the depth of the last down block, ``up_blocks.j`` mirrors ``down_blocks``.
    Level = 64 >> depth.
    """
    num_down = len(unet.down_blocks)
    num_up = len(unet.up_blocks)
    levels: dict[str, int] = {}
    for name in unet.attn_processors:
        match = _TEMPORAL_NAME.match(name)
        if match is None:
            continue
        if match["stem"] is not None:
            if not include_stem:
                continue
            depth = 0
        elif match["down"] is not None:
            depth = int(match["down"])
        elif match["up"] is not None:
            depth = num_up - 1 - int(match["up"])
        else:
            depth = num_down - 1
        levels[name] = 64 >> depth
    return levels


class TARSchedule:
    """The step window, shared by a :class:`TARHandle` and its processors.

    Processors read only ``active``. Before the first :meth:`set_step` it is ``True`` (step 0 is
    always inside the window).
    """

    def __init__(self, config: TARConfig):
        self.config = config
        self.active = True

    def set_step(self, step: int, num_steps: int) -> None:
        if num_steps < 1 or not 0 <= step < num_steps:
            raise ValueError(f"TAR step {step!r} is outside a schedule of {num_steps!r} steps")
        self.active = step < self.config.num_active_steps(num_steps)


class AttentionProbe(Protocol):
    """Called by a :class:`TemporalAttnProcessor` before it attends, e.g. to record the map.

    Gets the layer's ``query`` and ``key`` ``[batch·h·w, heads, N, head_dim]``, its SDPA-style
    ``attn_mask`` (or ``None``) and what the layer computes in this call: ``band`` ΔA ``[N, N]``
    under TAR, ``replace`` in replace mode, both ``None`` for plain attention. It must not modify
    them (see :func:`vstar_model.analysis.temporal_attention.capture_attention`).
    """

    def __call__(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None,
        band: torch.Tensor | None,
        replace: ReplaceMode | None,
    ) -> None: ...


class TemporalAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` for a temporal self-attention layer, with an optional probe.

    This computes exactly what ``AttnProcessor2_0`` computes (same norms, projections, residual,
    rescaling and dtype); :class:`TARAttnProcessor` changes only the attention itself. A ``probe``
    sees the query and key of every call and does not change the output.
    """

    def __init__(self, *, probe: AttentionProbe | None = None):
        self.probe = probe

    def regularisation(self, query: torch.Tensor) -> tuple[torch.Tensor | None, ReplaceMode | None]:
        """(ΔA, replace mode) in force for this call; ``(None, None)`` is plain attention."""
        return None, None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        # [batch·h·w, frames, heads·head_dim] -> [batch·h·w, heads, frames, head_dim]
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        band, replace = self.regularisation(query)
        if self.probe is not None:
            self.probe(query, key, attn_mask=attention_mask, band=band, replace=replace)
        if replace is not None:
            hidden_states = replaced_attention(value, replace)
        elif band is not None:
            hidden_states = tar_attention(query, key, value, band, attn_mask=attention_mask)
        else:
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class TARAttnProcessor(TemporalAttnProcessor):
    """A :class:`TemporalAttnProcessor` with TAR while ``schedule.active``.

    While active, the attention itself is :func:`~vstar_model.tar.attention.tar_attention` with this
    level's ΔA, or, in replace mode, :func:`~vstar_model.tar.attention.replaced_attention`; otherwise
    it is exactly ``AttnProcessor2_0``.
    """

    def __init__(
        self,
        schedule: TARSchedule,
        *,
        band: CachedBand | None = None,
        replace: ReplaceMode | None = None,
        probe: AttentionProbe | None = None,
    ):
        if (band is None) == (replace is None):
            raise ValueError("TARAttnProcessor needs exactly one of band and replace")
        super().__init__(probe=probe)
        self.schedule = schedule
        self.band = band
        self.replace = replace

    def regularisation(self, query: torch.Tensor) -> tuple[torch.Tensor | None, ReplaceMode | None]:
        if not self.schedule.active:
            return None, None
        if self.replace is not None:
            return None, self.replace
        return self.band(query.shape[-2], query.device, query.dtype), None


class TARHandle:
    """Installed TAR processors; a context manager that puts the previous processors back.

    Attributes:
        config: the installed config, or ``None`` when nothing was installed.
        levels: processor name → level of every layer that got a TAR processor.
    """

    def __init__(self, unet: torch.nn.Module, config: TARConfig | None):
        self.config = config
        self.levels: dict[str, int] = {}
        self._unet = unet
        self._previous: dict[str, object] = {}
        self._schedule = TARSchedule(config) if config is not None else None
        if config is not None:
            self._install(config)

    def _install(self, config: TARConfig) -> None:
        all_levels = temporal_attention_levels(self._unet, include_stem=config.include_stem)
        if not all_levels:
            raise ValueError(f"{type(self._unet).__name__} has no temporal attention layers to regularise")
        missing = sorted(config.levels - set(all_levels.values()), reverse=True)
        if missing:
            raise ValueError(
                f"TAR level(s) {missing} have no temporal attention layers in {type(self._unet).__name__} "
                f"(levels present: {sorted(set(all_levels.values()), reverse=True)})"
            )
        bands = {level: config.band_for(level) for level in config.levels} if config.replace is None else {}
        current = self._unet.attn_processors
        for name, level in all_levels.items():
            if level not in config.levels:
                continue
            # A probe already there (an attention capture) keeps seeing this layer, now with TAR.
            probe = current[name].probe if isinstance(current[name], TemporalAttnProcessor) else None
            processor = TARAttnProcessor(
                self._schedule, band=bands.get(level), replace=config.replace, probe=probe
            )
            self._previous[name] = current[name]
            self._attention_module(name).set_processor(processor)
            self.levels[name] = level

    def _attention_module(self, processor_name: str) -> Attention:
        return self._unet.get_submodule(processor_name.removesuffix(".processor"))

    @property
    def active(self) -> bool:
        """Whether the installed processors currently regularise."""
        return self._schedule is not None and self._schedule.active and bool(self.levels)

    def set_step(self, step: int, num_steps: int) -> None:
        """Declare the denoising step (0-based) that the next UNet calls belong to."""
        if self._schedule is not None:
            self._schedule.set_step(step, num_steps)

    def remove(self) -> None:
        """Put back the processors that were there before; other layers are left as they are now."""
        for name, processor in self._previous.items():
            self._attention_module(name).set_processor(processor)
        self._previous.clear()
        self.levels.clear()

    def __enter__(self) -> TARHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def apply_tar(unet: torch.nn.Module, config: TARConfig | str | Mapping[int, float] | None) -> TARHandle:
    """Install TAR on ``unet``'s temporal self-attention layers at the configured levels.

    ``config`` is anything :func:`parse_tar` reads; ``None``/``"off"`` installs nothing and gives a
    handle whose methods do nothing, so callers need no special case. Use as
    ``with apply_tar(unet, "64D1") as tar: ... tar.set_step(i, num_steps); unet(...)``.
    """
    return TARHandle(unet, parse_tar(config))
