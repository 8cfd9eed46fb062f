"""Expand a catalog and its synopses into one generation job per (entry, seed)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from prefect.futures import wait
from pydantic import BaseModel, ConfigDict, Field

from tasks.generate import GTNSettings, ReferenceBand, SampleJob, sample_row
from vstar_data.catalog import AUTO_TAR, CatalogEntry
from vstar_data.runs import RunPaths
from vstar_model.backbones.presets import BackbonePreset, get_preset
from vstar_model.sampling import GTN_VARIANTS, VARIANTS


class ModelSettings(BaseModel):
    """The backbone and its sampling settings; unset (None) values take the preset's defaults.

    Unset and zero differ: ``guidance_scale=0`` is the unconditional prediction, not the preset's
    scale. Values that cannot mean anything (0 steps, a 0-pixel frame) are refused here.
    """

    model_config = ConfigDict(extra="forbid")

    preset: str = "tiny"
    path: str | None = None
    device: str | None = None
    dtype: str | None = None
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0, allow_inf_nan=False)
    eta: float = Field(1.0, ge=0, le=1)
    fps: int | None = Field(None, ge=1)
    negative_prompt: str | None = None  # None: the preset's (Wan's own negative prompt, "" for UNets)
    flow_shift: float | None = Field(None, gt=0, allow_inf_nan=False)  # flow-matching backbones (Wan); None: the preset's

    def negative_prompt_for(self, preset: BackbonePreset) -> str:
        return _unless_unset(self.negative_prompt, preset.negative_prompt)

    def for_preset(self, preset: BackbonePreset) -> dict[str, Any]:
        """Height, width, steps, guidance scale and fps: these settings where set, else the preset's."""
        return {
            "height": _unless_unset(self.height, preset.height),
            "width": _unless_unset(self.width, preset.width),
            "num_inference_steps": _unless_unset(self.steps, preset.num_inference_steps),
            "guidance_scale": _unless_unset(self.guidance_scale, preset.guidance_scale),
            "fps": _unless_unset(self.fps, preset.fps),
        }


def _unless_unset(value: Any, default: Any) -> Any:
    """``value``, or ``default`` when it is unset (None). Not ``value or default``, which would
    replace a deliberate 0 or ""."""
    return default if value is None else value


def check_backbones(entries: list[CatalogEntry], model: ModelSettings) -> None:
    """Find every backbone the run will use before any work: missing weights stop the run with
    :class:`~vstar_model.backbones.loading.BackboneNotFound` (preset, places tried, how to download)."""
    from vstar_model.backbones.loading import resolve_location

    for preset in sorted({entry.model or model.preset for entry in entries}):
        resolve_location(get_preset(preset), model.path)


def check_entries(entries: list[CatalogEntry], *, frames: int | None, tar: str | None, variants: list[str],
                  model: ModelSettings) -> None:
    """Refuse, before any work, what an entry's backbone cannot do: a frame count its VAE cannot
    make (Wan: 4k+1), a TAR preset of the other kind (UNet levels vs DiT blocks), RIFLEx on a UNet.

    Raises:
        ValueError: listing every problem, one line per entry.
    """
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    problems = []
    riflex = [name for name in variants if VARIANTS[name].riflex]
    for entry in entries:
        preset = get_preset(entry.model or model.preset)
        try:
            preset.check_frames(entry_frames(entry, frames, model))
            entry_tar = _unless_unset(entry.tar, _unless_unset(tar, preset.default_tar))
            if any(VARIANTS[name].tar for name in variants) and entry_tar != AUTO_TAR:
                check_tar(preset, entry_tar)
            if preset.family == "wan":
                unet_only = [what for what, used in (
                    ("tar 'auto'", entry_tar == AUTO_TAR),
                    (f"variant(s) {', '.join(sorted(GTN_VARIANTS & set(variants)))}", bool(GTN_VARIANTS & set(variants))),
                ) if used]
                if unet_only:
                    raise ValueError(f"{' and '.join(unet_only)} work on UNet backbones only so far, not on "
                                     f"{preset.name!r} (a diffusion transformer)")
            if riflex and preset.riflex_index is None:
                raise ValueError(f"variant(s) {', '.join(riflex)} use RIFLEx, which model {preset.name!r} "
                                 "has no rotary embedding for")
        except ValueError as problem:
            problems.append(f"entry {entry.id!r}: {problem}")
    if problems:
        raise ValueError("\n".join(problems))


def check_tar(preset: BackbonePreset, tar: str):
    """``tar`` parsed for ``preset``'s kind of backbone (UNet levels or DiT blocks; ``None`` for off).

    Raises:
        ValueError: when ``tar`` is no TAR preset for that kind of backbone.
    """
    if preset.family == "wan":
        from vstar_model.tar.dit import parse_dit_tar

        return parse_dit_tar(tar)
    from vstar_model.tar.unet import parse_tar

    return parse_tar(tar)


def entry_frames(entry: CatalogEntry, frames: int | None, model: ModelSettings) -> int:
    if entry.frames is not None:
        return entry.frames
    return _unless_unset(frames, get_preset(entry.model or model.preset).num_frames)


def plan_jobs(
    entries: list[CatalogEntry],
    synopses: list[dict],
    parameters,
    bands: dict[str, ReferenceBand] | None = None,
    gtn: dict[str, tuple[GTNSettings, str]] | None = None,
) -> list[SampleJob]:
    """One job per catalog entry, seed and ablation variant, skipping entries whose synopsis failed.

    Variants share seeds (paper Fig. 11); without VSP a video is conditioned on the plain prompt,
    without TAR the backbone's own temporal attention runs. A job's ``vsp`` says whether its frames
    really move through two or more states, whatever the variant asked for. ``bands`` (entry id → ΔA
    from a real clip) replace the Gaussian band of the entry's TAR videos; ``gtn`` (entry id →
    settings with the reference clip, its SHA-256) go to its gtn variants.
    """
    bands, gtn = bands or {}, gtn or {}
    jobs = []
    states_of = {row["catalog_id"]: row for row in synopses}
    for entry in entries:
        synopsis = states_of[entry.id]
        if synopsis["source"] == "failed":
            continue
        model = parameters.model
        preset = get_preset(entry.model or model.preset)  # a preset name is never empty
        seeds = entry.resolve_seeds(default_num_samples=parameters.samples_per_prompt, base_seed=parameters.seed)
        for seed, variant in itertools.product(seeds, parameters.variants):
            use_vsp, use_tar, use_riflex = VARIANTS[variant]
            states = synopsis["states"] if use_vsp else [entry.prompt]
            jobs.append(
                SampleJob(
                    entry_id=entry.id,
                    prompt=entry.prompt,
                    states=states,
                    synopsis_source=synopsis["source"],
                    seed=seed,
                    model=preset.name,
                    model_path=model.path,
                    device=model.device,
                    dtype=model.dtype,
                    num_frames=entry_frames(entry, parameters.frames, model),
                    **model.for_preset(preset),
                    eta=model.eta,
                    negative_prompt=_unless_unset(entry.negative_prompt, model.negative_prompt_for(preset)),
                    tar=_unless_unset(entry.tar, _unless_unset(parameters.tar, preset.default_tar)) if use_tar else "off",
                    # One state (a fallback, or a one-state synopsis) conditions every frame alike: no VSP.
                    vsp=use_vsp and len(states) >= 2,
                    variant=variant,
                    tar_band=bands.get(entry.id) if use_tar else None,
                    gtn=gtn[entry.id][0] if variant in GTN_VARIANTS else None,
                    gtn_reference_sha256=gtn[entry.id][1] if variant in GTN_VARIANTS else None,
                    flow_shift=_unless_unset(model.flow_shift, preset.flow_shift) if preset.family == "wan" else None,
                    riflex=use_riflex,
                )
            )
    return jobs


def submit_in_window(task, items: list, window: int, *args) -> list:
    """``task.submit(item, *args)`` for every item with at most ``window`` runs in flight.

    Runs queued behind Prefect's global concurrency limit poll the server for a slot (its
    Retry-After grows with the queue, up to 30 s), so a GPU would sit idle between videos; runs
    submitted as earlier ones finish take a free slot at once. Futures come back in ``items``' order.
    """
    from prefect.futures import as_completed

    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    futures, in_flight = [], set()
    for item in items:
        if len(in_flight) >= window:
            in_flight.discard(next(as_completed(list(in_flight))))
        future = task.submit(item, *args)
        futures.append(future)
        in_flight.add(future)
    return futures


def results_or_failures(futures: list, items: list, failed: Callable[[Any, Any], dict]) -> list[dict]:
    """Each future's result, or ``failed(item, state)`` for a future whose task failed for good."""
    wait(futures)
    return [f.result() if f.state.is_completed() else failed(item, f.state) for item, f in zip(items, futures)]


def failure_reason(state) -> str:
    """A one-line reason from a failed Prefect state."""
    try:
        state.result()
    except Exception as error:  # the state re-raises what the task raised
        return f"{type(error).__name__}: {error}"
    return state.message or state.name


def sample_failure_row(job: SampleJob, state, *, run: RunPaths) -> dict:
    return sample_row(job, run, job.key(), None, error=failure_reason(state))


def set_aside_unresolved(jobs: list[SampleJob], reasons: dict[str, str], run: RunPaths) -> tuple[list, list[dict]]:
    """(jobs to generate, failed samples rows): the TAR videos of an entry whose TAR could not be
    settled (a ΔA clip or a σ search that failed, ``reasons``: entry id → why) are recorded as
    failed instead of being made with a TAR they were not asked for."""
    kept, failed = [], []
    for job in jobs:
        if job.entry_id in reasons and job.tar != "off":
            failed.append(sample_row(job, run, job.key(), None, error=reasons[job.entry_id]))
        else:
            kept.append(job)
    return kept, failed
