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
from vstar_model.backbones.presets import get_preset
from vstar_model.sampling.unet import SAMPLER_REVISION, SamplingConfig, generate_video
from vstar_model.tar.unet import parse_tar
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
    variant: str = "vstar"  # name only: vsp and tar above say what it means

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            num_frames=self.num_frames,
            height=self.height,
            width=self.width,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            eta=self.eta,
            negative_prompt=self.negative_prompt,
        )

    def key(self) -> str:
        """Content key of every input that determines the video: same key, same video.

        The TAR setting enters as its parsed settings (levels, σ, step window, layers), so a
        change of a default changes the key; the weights as their resolved location (a hub
        snapshot's folder names its commit) plus the preset's revision and fps conditioning.
        """
        preset = get_preset(self.model)
        location = resolve_location(preset, self.model_path)
        tar = parse_tar(self.tar)
        inputs = self.model_dump(
            exclude={"entry_id", "synopsis_source", "model_path", "device", "dtype", "variant", "tar"}
        )
        return sample_key(
            **inputs,
            tar=None if tar is None else tar.settings(),
            model_location=str(location),
            model_revision=preset.revision,
            fps_condition=preset.fps_condition,
            device=pick_device(self.device).type,
            dtype=self.dtype or "default",
            sampler_revision=SAMPLER_REVISION,
        )


def sample_row(job: SampleJob, run: RunPaths, key: str, record: dict | None, error: str | None = None) -> dict:
    """The samples.parquet row of ``job``: from its generation record, or failed with ``error``."""
    record = record or {}
    ok = error is None
    return {
        "run_id": run.run_id,
        "sample_key": key,
        "catalog_id": job.entry_id,
        "prompt": job.prompt,
        "states": job.states,
        "synopsis_source": job.synopsis_source,
        "seed": job.seed,
        "num_frames": job.num_frames,
        "fps": job.fps,
        "height": job.height,
        "width": job.width,
        "num_inference_steps": job.num_inference_steps,
        "guidance_scale": job.guidance_scale,
        "model_preset": job.model,
        "model_revision": record.get("model_revision"),
        "tar": job.tar,
        "vsp": job.vsp,
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
