"""Finished runs written by hand, with chosen metrics and embeddings, in the real layout: what
curation is checked against (tests) and measured on (benchmarks/curate.py)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from vstar_data.manifest import append_run_index, build_manifest, write_manifest
from vstar_data.runs import RunPaths
from vstar_data.schemas import (
    EMBEDDINGS_SCHEMA, METRICS_SCHEMA, RUN_ID_KEY, SAMPLES_SCHEMA, SYNOPSES_SCHEMA, write_table,
)
from vstar_data.storage import write_bytes_atomic
from vstar_data.uris import relative_uri

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass
class Clip:
    """One video of a synthetic run: its samples fields, whole-video metrics and embedding."""

    catalog_id: str
    seed: int = 0
    prompt: str | None = None
    states: list[str] = field(default_factory=lambda: ["a state"])
    num_frames: int = 9
    variant: str = "vstar"
    model_preset: str = "tiny"
    tar: str | None = "64D1"
    status: str = "ok"
    metrics: dict[str, float] = field(default_factory=dict)  # name (k = -1) or name@k -> value
    embedding: list[float] | None = None
    video: bytes | None = None  # None: small placeholder bytes (no decoding needed)


def _write_unchecked(url: str, rows: list[dict], schema: pa.Schema, run_id: str) -> None:
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(
        {**schema.metadata, RUN_ID_KEY: run_id.encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes_atomic(url, buffer.getvalue())


def write_run(root: str, run_id: str, clips: list[Clip], *, created_at: datetime = START,
              variant_metrics: dict[str, dict[str, float]] | None = None, metric: str = "pixel_cosine",
              reference: str | None = None, write_videos: bool = True) -> RunPaths:
    """A finished run (tables, videos, manifest, run index entry) holding ``clips``;
    ``variant_metrics`` gives per-variant rows (``overall_score``, ``wasserstein@k``)."""
    run = RunPaths(root, run_id)
    samples, metrics, embeddings, synopses = [], [], [], {}
    for i, clip in enumerate(clips):
        key = hashlib.sha256(f"{run_id}/{i}".encode()).hexdigest()[:16]
        prompt = clip.prompt or f"prompt of {clip.catalog_id}"
        synopses[clip.catalog_id] = {"run_id": run_id, "catalog_id": clip.catalog_id, "prompt": prompt, "states": clip.states,
                                     "source": "catalog"}
        ok = clip.status == "ok"
        video = clip.video if clip.video is not None else f"video {run_id} {i}".encode()
        video_url = run.video(clip.catalog_id, clip.seed, clip.variant)
        if ok and write_videos:
            write_bytes_atomic(video_url, video)
        samples.append({
            "run_id": run_id, "sample_key": key, "catalog_id": clip.catalog_id, "prompt": prompt,
            "states": clip.states, "synopsis_source": "catalog", "seed": clip.seed, "num_frames": clip.num_frames,
            "fps": 8, "height": 64, "width": 64, "num_inference_steps": 4, "guidance_scale": 9.0,
            "model_preset": clip.model_preset, "tar": clip.tar, "vsp": True, "variant": clip.variant,
            "video_uri": relative_uri(video_url, run.samples) if ok else None,
            "video_sha256": hashlib.sha256(video).hexdigest() if ok else None, "status": clip.status,
            "error": None if ok else "RuntimeError: failed", "created_at": created_at + timedelta(seconds=i),
        })
        base = {"run_id": run_id, "sample_key": key, "catalog_id": clip.catalog_id, "seed": clip.seed}
        for label, value in clip.metrics.items():
            name, _, k = label.partition("@")
            measured_by = {"temporal_flicker": "temporal_flicker", "motion_magnitude": "farneback_flow"}.get(name, metric)
            metrics.append({**base, "metric": measured_by, "k": int(k) if k else -1, "name": name, "value": value})
        if clip.embedding is not None:
            embeddings.append({"run_id": run_id, "sample_key": key, "metric": metric, "embedding": clip.embedding})
    for variant, values in (variant_metrics or {}).items():
        for label, value in values.items():
            name, _, k = label.partition("@")
            metrics.append({"run_id": run_id, "metric": metric, "k": int(k) if k else -1, "name": name,
                            "value": value, "variant": variant, "reference": reference})
    write_table(run.synopses, list(synopses.values()), SYNOPSES_SCHEMA, run_id=run_id)
    write_table(run.samples, samples, SAMPLES_SCHEMA, run_id=run_id)
    _write_unchecked(run.metrics, metrics, METRICS_SCHEMA, run_id)  # ~110 rows a clip: too many to check in Python
    _write_unchecked(run.embeddings, embeddings, EMBEDDINGS_SCHEMA, run_id)
    manifest = build_manifest(run.run_dir, run_id, parameters={}, row_counts={"samples": len(samples)},
                              created_at=created_at)
    url = write_manifest(run.run_dir, manifest)
    append_run_index(root, {
        "run_id": run_id, "created_at": created_at, "finished_at": created_at + timedelta(minutes=1),
        "status": "ok", "catalog": "/catalogs/synthetic.yaml", "num_samples": len(samples), "num_failed": 0,
        "parameters_json": "{}", "manifest_uri": relative_uri(url, run.index_entry),
    })
    return run
