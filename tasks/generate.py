"""Generate one video per (catalog entry, seed), reusing finished videos from earlier runs."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone

from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict

from tasks.models import cached_backbone
from tasks.progress import report
from tasks.retries import retry_unless
from vstar_data.keys import sample_key
from vstar_data.runs import CachePaths, RunPaths
from vstar_data.storage import StorageError, exists, read_bytes, write_bytes_atomic
from vstar_model.backbones.loading import pick_device, resolve_location
from vstar_model.backbones.presets import Family, get_preset
from vstar_model.sampling import generate_video
from vstar_model.video.writer import encode_mp4, frame_strip


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
    variant: str = "vstar"  # name only: vsp, tar and riflex say what it means
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
        """Content key: same inputs, same weights location, same device → same video."""
        location = resolve_location(get_preset(self.model), self.model_path)
        inputs = self.model_dump(exclude={"entry_id", "synopsis_source", "model_path", "device", "dtype", "variant"})
        # Left out where unused, so UNet jobs keep the keys (and cached videos) they had before Wan.
        for name in ("flow_shift", "riflex"):
            if not inputs[name]:
                del inputs[name]
        return sample_key(**inputs, model_location=str(location), device=pick_device(self.device).type,
                          dtype=self.dtype or "default")


def tar_layers_and_sigmas(family: Family, tar: str) -> tuple[list[str], list[float]]:
    """Where TAR acts and with which σ, for the record: UNet levels ("64", "32") or DiT block
    ranges ("b0-9"), each with its σ; empty when TAR is off."""
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
        "video_uri": run.video(job.entry_id, job.seed, job.variant) if ok else None,
        "strip_uri": run.strip(job.entry_id, job.seed, job.variant) if ok else None,
        "video_sha256": record.get("video_sha256"),
        "status": "ok" if ok else "failed",
        "error": None if ok else error[:2000],
        "generate_seconds": record.get("generate_seconds"),
        "encode_seconds": record.get("encode_seconds"),
        "created_at": datetime.fromisoformat(record["created_at"]) if ok else datetime.now(timezone.utc),
        "device": record.get("device"),
    }


def produce_sample(
    job: SampleJob, run: RunPaths, progress=None, gpu_slot: Callable[[], AbstractContextManager] = nullcontext
) -> tuple[dict, bool]:
    """Generate (or reuse) the video of ``job`` and place it in the run directory.

    ``gpu_slot`` is entered around model loading and generation only: reusing a finished video
    needs no GPU. Returns the samples row and whether a finished video was reused.
    """

    cache = CachePaths(run.output_root)
    key = job.key()
    if exists(cache.sample_record(key)):
        record = json.loads(read_bytes(cache.sample_record(key)))
        video, strip = read_bytes(cache.video(key)), read_bytes(cache.strip(key))
        reused = True
    else:
        with gpu_slot():
            model = cached_backbone(job.model, path=job.model_path, device=job.device, dtype=job.dtype)
            generated = generate_video(model, job.states, job.sampling(), seed=job.seed, tar=job.tar, progress=progress)
        start = time.perf_counter()
        video = encode_mp4(generated.frames, fps=job.fps)
        strip = frame_strip(generated.frames)
        encode_seconds = time.perf_counter() - start
        record = {
            "video_sha256": hashlib.sha256(video).hexdigest(),
            "generate_seconds": sum(generated.timings.values()),
            "encode_seconds": encode_seconds,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "device": str(model.device),
            "model_revision": model.revision,
            "timings": generated.timings,
        }
        # Payload first, record last: a record that exists means its video is complete.
        write_bytes_atomic(cache.video(key), video)
        write_bytes_atomic(cache.strip(key), strip)
        write_bytes_atomic(cache.sample_record(key), json.dumps(record).encode())
        reused = False
    write_bytes_atomic(run.video(job.entry_id, job.seed, job.variant), video)
    write_bytes_atomic(run.strip(job.entry_id, job.seed, job.variant), strip)
    return sample_row(job, run, key, record), reused


@task(
    task_run_name="generate-{job.entry_id}-s{job.seed}-{job.variant}",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless(FloatingPointError, StorageError),
)
def generate_sample(job: SampleJob, run: RunPaths, concurrency_limit: str | None = None) -> dict:
    """Thin Prefect task: hold a GPU slot, generate or reuse, log progress."""
    from prefect.concurrency.sync import concurrency

    logger = get_run_logger()

    label = f"{job.entry_id} s{job.seed}" + ("" if job.variant == "vstar" else f" {job.variant}")

    def progress(done: int, total: int) -> None:
        report(label, done, total)
        if done == total or done % max(1, total // 4) == 0:
            logger.info("%s seed %d: step %d/%d", job.entry_id, job.seed, done, total)

    def gpu_slot():
        if not concurrency_limit:
            return nullcontext()
        # A short lease: if this process dies mid-video its GPU slot frees within a minute.
        return concurrency(concurrency_limit, occupy=1, strict=True, lease_duration=60)

    row, reused = produce_sample(job, run, progress, gpu_slot)
    if reused:
        report(label, 1, 1)
    logger.info("%s seed %d: %s", job.entry_id, job.seed, "reused from cache" if reused else "generated")
    return row
