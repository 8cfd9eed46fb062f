"""Expand a catalog and its synopses into one generation job per (entry, seed)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from prefect.futures import wait
from pydantic import BaseModel, ConfigDict

from tasks.generate import SampleJob, sample_row
from vstar_data.catalog import CatalogEntry
from vstar_data.runs import RunPaths
from vstar_model.backbones.presets import BackbonePreset, get_preset
from vstar_model.sampling import VARIANTS


class ModelSettings(BaseModel):
    """The backbone and its sampling settings; unset values take the preset's defaults."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "tiny"
    path: str | None = None
    device: str | None = None
    dtype: str | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    eta: float = 1.0
    fps: int | None = None
    negative_prompt: str | None = None  # None: the preset's (Wan's own negative prompt, "" for UNets)
    flow_shift: float | None = None  # flow-matching backbones (Wan); None: the preset's

    def negative_prompt_for(self, preset: BackbonePreset) -> str:
        return preset.negative_prompt if self.negative_prompt is None else self.negative_prompt


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
            if any(VARIANTS[name].tar for name in variants):
                check_tar(preset, entry.tar or tar or preset.default_tar)
            if riflex and preset.riflex_index is None:
                raise ValueError(f"variant(s) {', '.join(riflex)} use RIFLEx, which model {preset.name!r} "
                                 "has no rotary embedding for")
        except ValueError as problem:
            problems.append(f"entry {entry.id!r}: {problem}")
    if problems:
        raise ValueError("\n".join(problems))


def check_tar(preset: BackbonePreset, tar: str) -> None:
    """Raise ValueError unless ``tar`` is a TAR preset for ``preset``'s kind of backbone."""
    if preset.family == "wan":
        from vstar_model.tar.dit import parse_dit_tar

        parse_dit_tar(tar)
    else:
        from vstar_model.tar.unet import parse_tar

        parse_tar(tar)


def entry_frames(entry: CatalogEntry, frames: int | None, model: ModelSettings) -> int:
    return entry.frames or frames or get_preset(entry.model or model.preset).num_frames


def plan_jobs(entries: list[CatalogEntry], synopses: list[dict], parameters) -> list[SampleJob]:
    """One job per catalog entry, seed and ablation variant, skipping entries whose synopsis failed.

    Variants share seeds (paper Fig. 11); without VSP a video is conditioned on the plain prompt,
    without TAR the backbone's own temporal attention runs.
    """
    jobs = []
    states_of = {row["catalog_id"]: row for row in synopses}
    for entry in entries:
        synopsis = states_of[entry.id]
        if synopsis["source"] == "failed":
            continue
        model = parameters.model
        preset = get_preset(entry.model or model.preset)
        seeds = entry.resolve_seeds(default_num_samples=parameters.samples_per_prompt, base_seed=parameters.seed)
        for seed, variant in itertools.product(seeds, parameters.variants):
            use_vsp, use_tar, use_riflex = VARIANTS[variant]
            jobs.append(
                SampleJob(
                    entry_id=entry.id,
                    prompt=entry.prompt,
                    states=synopsis["states"] if use_vsp else [entry.prompt],
                    synopsis_source=synopsis["source"],
                    seed=seed,
                    model=preset.name,
                    model_path=model.path,
                    device=model.device,
                    dtype=model.dtype,
                    num_frames=entry_frames(entry, parameters.frames, model),
                    height=model.height or preset.height,
                    width=model.width or preset.width,
                    num_inference_steps=model.steps or preset.num_inference_steps,
                    guidance_scale=model.guidance_scale or preset.guidance_scale,
                    eta=model.eta,
                    negative_prompt=entry.negative_prompt or model.negative_prompt_for(preset),
                    fps=model.fps or preset.fps,
                    tar=(entry.tar or parameters.tar or preset.default_tar) if use_tar else "off",
                    vsp=use_vsp,
                    variant=variant,
                    flow_shift=(model.flow_shift or preset.flow_shift) if preset.family == "wan" else None,
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
