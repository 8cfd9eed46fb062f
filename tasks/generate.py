"""Generate one video per (catalog entry, seed), reusing finished videos from earlier runs."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone

from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field

from tasks.models import cached_backbone
from tasks.progress import report
from tasks.retries import retry_unless
from vstar_data.catalog import AUTO_TAR
from vstar_data.keys import sample_key
from vstar_data.runs import CachePaths, RunPaths
from vstar_data.storage import StorageError, copy_file, exists, read_bytes, write_bytes_atomic
from vstar_data.uris import relative_uri
from vstar_model.backbones.loading import pick_device, resolve_location
from vstar_model.backbones.presets import Family, get_preset
from vstar_model.sampling import SAMPLER_REVISION, GeneratedVideo, generate_video
from vstar_model.sampling.gtn import GTNConfig
from vstar_model.video.writer import encode_mp4, frame_strip


class ReferenceBand(BaseModel):
    """ΔA from a real clip (paper Fig. 9): its frame-similarity matrix at the video's frame count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    matrix: list[list[float]]
    clip: str  # absolute URL
    metric: str  # the similarity that made the matrix
    sha256: str  # of the clip


class GTNSettings(BaseModel):
    """Optimised initial noise (paper Appendix B) of the ``gtn`` and ``gtn+vstar`` variants.

    Defaults are :class:`~vstar_model.sampling.gtn.GTNConfig`'s.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    reference: str | None = Field(None, description="real clip whose temporal attention the noise is fitted to")
    timestep: int = Field(GTNConfig.timestep, ge=0, description="t of A_t: maps compared at the step nearest it")
    kl_weight: float = Field(GTNConfig.kl_weight, ge=0, description="λ on KL(N(μ, Σ) ‖ N(0, I))")
    steps: int = Field(GTNConfig.steps, ge=0, description="gradient steps")
    learning_rate: float = Field(GTNConfig.learning_rate, gt=0)

    def config(self) -> GTNConfig:
        return GTNConfig(timestep=self.timestep, kl_weight=self.kl_weight, steps=self.steps,
                         learning_rate=self.learning_rate)


class SampleJob(BaseModel):
    """Everything that determines one generated video."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry_id: str
    prompt: str
    states: list[str]
    synopsis_source: str  # catalog | llm | fallback | none
    seed: int
    model: str
    model_path: str | None = None
    device: str | None = None
    dtype: str | None = None
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    eta: float = 1.0
    negative_prompt: str = ""
    fps: int
    tar: str = "off"
    vsp: bool = True
    variant: str = "vstar"  # name only: vsp, tar, riflex and gtn say what it means
    tar_band: ReferenceBand | None = None  # ΔA from a real clip at tar's levels instead of the Gaussian band
    gtn: GTNSettings | None = None  # initial noise fitted to gtn.reference (an absolute URL) first
    gtn_reference_sha256: str | None = None
    flow_shift: float | None = None  # flow-matching backbones (Wan) only
    riflex: bool = False  # diffusion transformers only

    @property
    def family(self) -> Family:
        return get_preset(self.model).family

    def sampling(self):
        """The sampling config of this job's backbone family (:mod:`vstar_model.sampling`)."""
        common = dict(num_frames=self.num_frames, height=self.height, width=self.width,
                      num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                      negative_prompt=self.negative_prompt)
        if self.family == "wan":
            from vstar_model.sampling.dit import FlowMatchingConfig

            return FlowMatchingConfig(**common, flow_shift=self.flow_shift, riflex=self.riflex)
        from vstar_model.sampling.unet import SamplingConfig

        return SamplingConfig(**common, eta=self.eta)

    def key(self) -> str:
        """Content key of every input that determines the video: same key, same video.

        The TAR setting enters as its parsed settings (levels or blocks, σ, step window, layers), so
        a change of a default changes the key; the weights as their resolved location (a hub
        snapshot's folder names its commit) plus the preset's revision and fps conditioning.
        """
        preset = get_preset(self.model)
        location = resolve_location(preset, self.model_path)
        inputs = self.model_dump(
            exclude={"entry_id", "synopsis_source", "model_path", "device", "dtype", "variant", "tar"},
            exclude_none=True,  # unset optional inputs are left out: older videos keep their keys
        )
        if not inputs["riflex"]:  # left out where unused, so UNet videos keep the keys they had before Wan
            del inputs["riflex"]
        return sample_key(
            **inputs,
            tar=tar_settings(preset.family, self.tar),
            model_location=str(location),
            model_revision=preset.revision,
            fps_condition=preset.fps_condition,
            device=pick_device(self.device).type,
            dtype=self.dtype or "default",
            sampler_revision=SAMPLER_REVISION,
        )


def tar_settings(family: Family, tar: str) -> dict | None:
    """TAR as parsed settings for content keys (equal settings, equal dicts, whatever the spelling);
    ``auto`` stands for itself (the key of a job whose σ search failed)."""
    if tar == AUTO_TAR:
        return {"auto": True}
    if family == "wan":
        from vstar_model.tar.dit import parse_dit_tar

        config = parse_dit_tar(tar)
        return None if config is None else {"dit_preset": config.preset, "kernel": config.kernel}
    from vstar_model.tar.unet import parse_tar

    config = parse_tar(tar)
    return None if config is None else config.settings()


def tar_layers_and_sigmas(family: Family, tar: str) -> tuple[list[str], list[float]]:
    """Where TAR acts and with which σ, for the record: UNet levels ("64", "32") or DiT block
    ranges ("b0-9"), each with its σ; empty when TAR is off or its σ search never settled."""
    if tar == AUTO_TAR:
        return [], []
    if family == "wan":
        from vstar_model.tar.dit import parse_dit_tar

        config = parse_dit_tar(tar)
        ranges = [] if config is None else config.ranges
        return [f"b{r.first}-{r.last}" for r in ranges], [r.sigma for r in ranges]
    from vstar_model.tar.unet import parse_tar

    config = parse_tar(tar)
    sigmas = {} if config is None else config.sigmas
    return [str(level) for level in sigmas], [float(sigma) for sigma in sigmas.values()]


def sample_row(job: SampleJob, run: RunPaths, key: str, record: dict | None, error: str | None = None) -> dict:
    """The samples.parquet row of ``job``: from its generation record, or failed with ``error``."""
    record = record or {}
    ok = error is None
    family = job.family
    tar_layers, tar_sigmas = tar_layers_and_sigmas(family, job.tar)
    if job.tar_band is not None:
        tar_sigmas = None  # no σ: ΔA is the clip's band (tar_band_clip) at tar_layers
    return {
        "run_id": run.run_id,
        "sample_key": key,
        "catalog_id": job.entry_id,
        "prompt": job.prompt,
        "states": job.states,
        "synopsis_source": job.synopsis_source,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "num_frames": job.num_frames,
        "fps": job.fps,
        "height": job.height,
        "width": job.width,
        "num_inference_steps": job.num_inference_steps,
        "guidance_scale": job.guidance_scale,
        "model_preset": job.model,
        "model_family": family,
        "model_revision": record.get("model_revision"),
        "tar": job.tar,
        "tar_layers": tar_layers,
        "tar_sigmas": tar_sigmas,
        "vsp": job.vsp,
        "riflex": job.riflex,
        "flow_shift": job.flow_shift,
        "variant": job.variant,
        # Relative to samples.parquet's directory, so the run resolves wherever it is read (vstar_data.uris).
        "video_uri": relative_uri(run.video(job.entry_id, job.seed, job.variant), run.samples) if ok else None,
        "strip_uri": relative_uri(run.strip(job.entry_id, job.seed, job.variant), run.samples) if ok else None,
        "video_sha256": record.get("video_sha256"),
        "strip_sha256": record.get("strip_sha256"),  # None for cache records older than this column
        "status": "ok" if ok else "failed",
        "error": None if ok else error[:2000],
        "generate_seconds": record.get("generate_seconds"),
        "encode_seconds": record.get("encode_seconds"),
        "created_at": datetime.fromisoformat(record["created_at"]) if ok else datetime.now(timezone.utc),
        "device": record.get("device"),
        "tar_band_clip": job.tar_band.clip if job.tar_band else None,
        "tar_band_metric": job.tar_band.metric if job.tar_band else None,
        "tar_band_sha256": job.tar_band.sha256 if job.tar_band else None,
        "gtn_reference": job.gtn.reference if job.gtn else None,
        "gtn_reference_sha256": job.gtn_reference_sha256,
        **{name: record.get(name) for name in GTN_RECORD_FIELDS},
    }


GTN_RECORD_FIELDS = ("gtn_loss_initial", "gtn_loss_final", "gtn_beta", "gtn_gamma")


def generate_job_video(model, job: SampleJob, progress=None) -> tuple[GeneratedVideo, dict]:
    """The video of ``job`` and what its record adds: TAR with the job's ΔA from a real clip when
    it has one, and for the GTN variants the initial noise fitted to the reference clip first.

    ``progress`` sees one bar: the GTN gradient steps, then the denoising steps.
    """
    import torch

    tar = job.tar
    if job.tar_band is not None:
        band = torch.tensor(job.tar_band.matrix)  # over the video's frames
        if job.family == "wan":  # a DiT attends over latent frames: the band is resampled to their count
            from vstar_model.tar.reference import reference_band_dit_tar

            tar = reference_band_dit_tar(job.tar, band, get_preset(job.model).latent_frames(job.num_frames))
        else:
            from vstar_model.tar.reference import reference_band_tar

            tar = reference_band_tar(job.tar, band)
    fitting = job.gtn.steps if job.gtn else 0
    total = fitting + job.num_inference_steps

    def report(offset: int):
        return None if progress is None else lambda done, _: progress(offset + done, total)

    initial_noise, record, fit_seconds = None, {}, 0.0
    if job.gtn is not None:
        from vstar_model.analysis.temporal_attention import resize_frames
        from vstar_model.sampling.gtn import optimise_initial_noise
        from vstar_model.video.reader import read_video_frames

        frames = resize_frames(read_video_frames(job.gtn.reference, job.num_frames), job.height, job.width)
        fit = optimise_initial_noise(model, job.states, job.sampling(), frames, seed=job.seed, gtn=job.gtn.config(),
                                     progress=report(0))
        initial_noise, fit_seconds = fit.initial_noise, fit.seconds
        record = {"gtn_loss_initial": fit.history[0]["loss"], "gtn_loss_final": fit.history[fit.best]["loss"],
                  "gtn_beta": float(fit.noise.beta), "gtn_gamma": float(fit.noise.gamma)}
    generated = generate_video(model, job.states, job.sampling(), seed=job.seed, tar=tar, initial_noise=initial_noise,
                               progress=report(fitting))
    if job.gtn is not None:
        generated.timings["gtn_seconds"] = fit_seconds
    return generated, record


def cached_sample(
    job: SampleJob, output_root: str, progress=None, gpu_slot: Callable[[], AbstractContextManager] = nullcontext
) -> tuple[str, dict, bool]:
    """Make sure the video of ``job`` is in the cache under ``output_root``: (key, record, reused).

    ``gpu_slot`` is entered around model loading and generation only: reusing a finished video
    needs no GPU.
    """
    cache = CachePaths(output_root)
    key = job.key()
    if exists(cache.sample_record(key)):
        return key, json.loads(read_bytes(cache.sample_record(key))), True
    with gpu_slot():
        model = cached_backbone(job.model, path=job.model_path, device=job.device, dtype=job.dtype)
        generated, extra = generate_job_video(model, job, progress)
    start = time.perf_counter()
    video = encode_mp4(generated.frames, fps=job.fps)
    strip = frame_strip(generated.frames)
    encode_seconds = time.perf_counter() - start
    record = {
        "video_sha256": hashlib.sha256(video).hexdigest(),
        "strip_sha256": hashlib.sha256(strip).hexdigest(),
        "generate_seconds": sum(generated.timings.values()),
        "encode_seconds": encode_seconds,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "device": str(model.device),
        "model_revision": model.revision,
        "timings": generated.timings,
        **extra,
    }
    # Payload first, record last: a record that exists means its video is complete.
    write_bytes_atomic(cache.video(key), video)
    write_bytes_atomic(cache.strip(key), strip)
    write_bytes_atomic(cache.sample_record(key), json.dumps(record).encode())
    return key, record, False


def produce_sample(
    job: SampleJob, run: RunPaths, progress=None, gpu_slot: Callable[[], AbstractContextManager] = nullcontext
) -> tuple[dict, bool]:
    """Generate (or reuse) the video of ``job`` and place it in the run directory.

    Returns the samples row and whether a finished video was reused.
    """
    key, record, reused = cached_sample(job, run.output_root, progress, gpu_slot)
    cache = CachePaths(run.output_root)
    # Copied from the cache where the video lives: server-side on a bucket, a hard link on a disk,
    # so a resumed run moves no video bytes through this process.
    copy_file(cache.video(key), run.video(job.entry_id, job.seed, job.variant))
    copy_file(cache.strip(key), run.strip(job.entry_id, job.seed, job.variant))
    return sample_row(job, run, key, record), reused


def gpu_slot_for(concurrency_limit: str | None) -> Callable[[], AbstractContextManager]:
    """A context holding one slot of Prefect's global concurrency limit ``concurrency_limit`` (if any)."""
    from prefect.concurrency.sync import concurrency

    def gpu_slot():
        if not concurrency_limit:
            return nullcontext()
        # A short lease: if this process dies mid-video its GPU slot frees within a minute.
        return concurrency(concurrency_limit, occupy=1, strict=True, lease_duration=60)

    return gpu_slot


# One retry: a CUDA crash, or running out of memory while other videos held the GPU, may pass;
# NaN latents (same seed, same NaN) and faults storage already gave up on cannot.
@task(
    task_run_name="generate-{job.entry_id}-s{job.seed}-{job.variant}",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless(FloatingPointError, StorageError),
)
def generate_sample(job: SampleJob, run: RunPaths, concurrency_limit: str | None = None) -> dict:
    """Thin Prefect task: hold a GPU slot, generate or reuse, log progress."""
    logger = get_run_logger()

    label = f"{job.entry_id} s{job.seed}" + ("" if job.variant == "vstar" else f" {job.variant}")

    def progress(done: int, total: int) -> None:
        report(label, done, total)
        if done == total or done % max(1, total // 4) == 0:
            logger.info("%s seed %d: step %d/%d", job.entry_id, job.seed, done, total)

    row, reused = produce_sample(job, run, progress, gpu_slot_for(concurrency_limit))
    if reused:
        report(label, 1, 1)
    logger.info("%s seed %d: %s", job.entry_id, job.seed, "reused from cache" if reused else "generated")
    return row
