"""Explicit Parquet schemas of a run's tables, and validated atomic reads and writes.

Every file carries ``vstar.run_id``, ``vstar.table`` and ``vstar.schema_version`` in its
schema metadata. The types are plain Arrow types (strings, ints, floats, bools, list<string>,
timestamp[us, UTC]) that pyarrow.dataset, pandas, DuckDB and Hugging Face datasets all read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from numbers import Integral, Real
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vstar_data.storage import DEFAULT_RETRY, Retry, read_bytes, write_bytes_atomic

# 2: samples.vsp is true only for videos conditioned on two or more synopsis states (1: VSP asked for);
# the run index counts synopsis fallbacks and failures, and its status may be "degraded".
SCHEMA_VERSION = "2"
RUN_ID_KEY = b"vstar.run_id"
TABLE_KEY = b"vstar.table"
SCHEMA_VERSION_KEY = b"vstar.schema_version"

TIMESTAMP = pa.timestamp("us", tz="UTC")
STATES = pa.list_(pa.string())


def _schema(table: str, *fields: pa.Field) -> pa.Schema:
    return pa.schema(fields, metadata={TABLE_KEY: table, SCHEMA_VERSION_KEY: SCHEMA_VERSION})


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _optional(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


SYNOPSES_SCHEMA = _schema(
    "synopses",
    _required("run_id", pa.string()),
    _required("catalog_id", pa.string()),
    _required("prompt", pa.string()),
    _required("states", STATES),
    _required("source", pa.string()),  # "catalog" | "llm" | "fallback" | "none"
    _optional("llm_model", pa.string()),
    _optional("template_version", pa.string()),
    _optional("synopsis_key", pa.string()),
    _optional("error", pa.string()),
    _optional("latency_seconds", pa.float64()),
)

SAMPLES_SCHEMA = _schema(
    "samples",
    _required("run_id", pa.string()),
    _required("sample_key", pa.string()),
    _required("catalog_id", pa.string()),
    _required("prompt", pa.string()),
    _required("states", STATES),
    _required("synopsis_source", pa.string()),  # "catalog" | "llm" | "fallback" | "none"
    _optional("negative_prompt", pa.string()),
    _required("seed", pa.int64()),
    _required("num_frames", pa.int32()),
    _required("fps", pa.int32()),
    _required("height", pa.int32()),
    _required("width", pa.int32()),
    _required("num_inference_steps", pa.int32()),
    _required("guidance_scale", pa.float64()),
    _required("model_preset", pa.string()),
    _optional("model_family", pa.string()),  # "unet3d" | "videocrafter" | "animatediff" | "wan"
    _optional("model_revision", pa.string()),
    _optional("tar", pa.string()),  # TAR spec string; null when TAR is off
    _optional("tar_layers", pa.list_(pa.string())),  # where TAR acts: UNet levels ("64") or DiT block ranges ("b0-9")
    _optional("tar_sigmas", pa.list_(pa.float64())),  # σ of each of tar_layers; null with a band from tar_band_clip
    _required("vsp", pa.bool_()),  # conditioned on >= 2 synopsis states (not a fallback, not one state)
    _optional("riflex", pa.bool_()),  # RIFLEx's lowered temporal RoPE frequency (DiTs)
    _optional("flow_shift", pa.float64()),  # flow-matching schedule shift (Wan); null for DDIM UNets
    _optional("variant", pa.string()),  # ablation variant: baseline | tar | vsp | vstar | riflex | gtn | …
    _optional("video_uri", pa.string()),
    _optional("strip_uri", pa.string()),
    _optional("video_sha256", pa.string()),
    _optional("strip_sha256", pa.string()),
    _required("status", pa.string()),  # "ok" | "failed"
    _optional("error", pa.string()),
    _optional("generate_seconds", pa.float64()),
    _optional("encode_seconds", pa.float64()),
    _required("created_at", TIMESTAMP),
    _optional("device", pa.string()),
    # ΔA from a real clip (paper Fig. 9): the clip (absolute URL), the metric of its matrix, its hash.
    _optional("tar_band_clip", pa.string()),
    _optional("tar_band_metric", pa.string()),
    _optional("tar_band_sha256", pa.string()),
    # Optimised initial noise (Appendix B, gtn variants): the reference clip and the fit.
    _optional("gtn_reference", pa.string()),
    _optional("gtn_reference_sha256", pa.string()),
    _optional("gtn_loss_initial", pa.float64()),
    _optional("gtn_loss_final", pa.float64()),
    _optional("gtn_beta", pa.float64()),
    _optional("gtn_gamma", pa.float64()),
)

METRICS_SCHEMA = _schema(
    "metrics",
    _required("run_id", pa.string()),
    # Per-video rows name their video; rows comparing a whole variant with a reference leave
    # sample_key, catalog_id and seed null and set variant and reference.
    _optional("sample_key", pa.string()),
    _optional("catalog_id", pa.string()),
    _optional("seed", pa.int64()),
    _required("metric", pa.string()),  # e.g. "dreamsim_ensemble"
    _required("k", pa.int32()),  # frame interval; -1 for whole-video rows
    _required("name", pa.string()),  # "mean", "q05", ..., "coherence", "wasserstein", "overall_score"
    _required("value", pa.float64()),
    _optional("variant", pa.string()),
    _optional("reference", pa.string()),
)

# One row per scored video: the mean of its unit frame embeddings, renormalised (the similarity
# metric's embedding space), so a curated dataset finds near-duplicates without decoding again.
EMBEDDINGS_SCHEMA = _schema(
    "embeddings",
    _required("run_id", pa.string()),
    _required("sample_key", pa.string()),
    _required("metric", pa.string()),
    _required("embedding", pa.list_(pa.float32())),
)

# Temporal attention analysis: one row per attention layer map (paper §3.3).
ATTENTION_SCHEMA = _schema(
    "attention",
    _required("run_id", pa.string()),
    _required("source", pa.string()),  # "real" | "generated"
    _required("condition", pa.string()),  # generated: "off", a TAR preset, "identity@64"…; real: "real"
    _optional("clip", pa.string()),  # real clip URL
    _required("model_preset", pa.string()),
    _required("num_frames", pa.int32()),
    _optional("step", pa.int32()),  # denoising step; null for real clips (one denoiser call)
    _required("timestep", pa.int32()),
    _required("layer", pa.string()),
    _optional("level", pa.int32()),  # UNet: the layer's level (64, 32, 16, 8); null for DiT rows
    _optional("block", pa.int32()),  # DiT (Wan): the transformer block of the attn1; null for UNet rows
    _required("band_width", pa.int32()),
    _required("band_mass", pa.float64()),
    _required("band_score", pa.float64()),
    _optional("gaussian_sigma", pa.float64()),
    _optional("gaussian_correlation", pa.float64()),
)

# The automatic TAR σ search (tar: auto): one row per trial video, the chosen one marked.
TUNING_SCHEMA = _schema(
    "tuning",
    _required("run_id", pa.string()),
    _required("catalog_id", pa.string()),
    _required("trial", pa.int32()),  # 0-based, in the order tried
    _required("levels", pa.string()),  # e.g. "64" or "64_32"
    _required("sigma", pa.float64()),
    _required("tar", pa.string()),  # the preset tried, e.g. "64D1.4"
    _required("score", pa.float64()),  # mean per-k Wasserstein to the reference; lower is closer
    _required("metric", pa.string()),
    _required("reference", pa.string()),
    _required("seed", pa.int64()),
    _required("num_frames", pa.int32()),
    _required("height", pa.int32()),
    _required("width", pa.int32()),
    _required("num_inference_steps", pa.int32()),
    _required("sample_key", pa.string()),  # the trial video in cache/samples/
    _required("chosen", pa.bool_()),  # the preset the entry's videos were generated with
    _required("stopped", pa.string()),  # why its level set's search ended: budget | converged | repeated
)

# A reference distribution: the interval similarities of real clips, resampled to num_frames.
REFERENCE_SCHEMA = _schema(
    "reference",
    _required("reference_id", pa.string()),
    _required("clip", pa.string()),
    _required("metric", pa.string()),
    _required("num_frames", pa.int32()),
    _required("k", pa.int32()),
    _required("value", pa.float64()),
)

# A curated dataset's index (datasets/<name>/<version>/index.parquet): one row per clip, its
# video referenced (relative to the index when inside the output root, see vstar_data.uris).
METRIC_VALUE = pa.struct([pa.field("name", pa.string(), nullable=False), pa.field("value", pa.float64())])
DATASET_SCHEMA = _schema(
    "dataset",
    _required("clip_id", pa.string()),  # <run_id>_<sample_key>: unique, no dots (a WebDataset key)
    _required("video_uri", pa.string()),
    _required("video_sha256", pa.string()),
    _required("prompt", pa.string()),
    _required("states", STATES),
    _required("keyframe_indices", pa.list_(pa.int32())),  # frame where each state is a keyframe
    _required("frame_captions", STATES),  # the state each frame shows, one per frame
    _required("num_frames", pa.int32()),
    _required("fps", pa.int32()),
    _required("height", pa.int32()),
    _required("width", pa.int32()),
    # Metrics: the usual ones as columns, every per-video and per-variant value in `metrics`
    # under the names filters use (coherence, mean@3, wasserstein@2, overall_score…).
    _optional("similarity_metric", pa.string()),
    _optional("coherence", pa.float64()),
    _optional("dynamics_slope", pa.float64()),
    _optional("temporal_flicker", pa.float64()),
    _optional("motion_magnitude", pa.float64()),
    _optional("overall_score", pa.float64()),
    _optional("reference", pa.string()),
    _required("metrics", pa.list_(METRIC_VALUE)),
    # Provenance.
    _required("run_id", pa.string()),
    _required("sample_key", pa.string()),
    _required("catalog_id", pa.string()),
    _required("seed", pa.int64()),
    _optional("variant", pa.string()),
    _required("model_preset", pa.string()),
    _optional("model_revision", pa.string()),
    _optional("tar", pa.string()),
    _required("vsp", pa.bool_()),
    _required("synopsis_source", pa.string()),
    _optional("llm_model", pa.string()),
    _optional("template_version", pa.string()),
    _optional("negative_prompt", pa.string()),
    _required("num_inference_steps", pa.int32()),
    _required("guidance_scale", pa.float64()),
    _required("created_at", TIMESTAMP),
)

RUNS_SCHEMA = _schema(
    "runs",
    _required("run_id", pa.string()),
    _required("created_at", TIMESTAMP),
    _optional("finished_at", TIMESTAMP),
    # "ok"; "degraded": every video made, but some synopses fell back to the plain prompt (VSP off);
    # "partial": some videos or catalog entries failed
    _required("status", pa.string()),
    _required("catalog", pa.string()),
    _required("num_samples", pa.int64()),
    _required("num_failed", pa.int64()),  # videos that failed
    _optional("num_synopses_fallback", pa.int64()),  # entries generated from their plain prompt (null before v2)
    _optional("num_synopses_failed", pa.int64()),  # entries left out, on_failure="fail" (null before v2)
    _required("parameters_json", pa.string()),
    _optional("manifest_uri", pa.string()),
)


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from row dicts, checking every row.

    A row may leave out nullable fields (they become null). Values are checked in Python
    first because Arrow converts silently where it should not (1.5 into an int column,
    ``"abc"`` into a list column, naive datetimes as UTC).

    Raises:
        ValueError: naming the row (0-based) and field of an unknown field, a missing or
            null required field, or a value of the wrong type or range.
    """
    names = set(schema.names)
    for index, row in enumerate(rows):
        unknown = sorted(set(row) - names)
        if unknown:
            raise ValueError(f"row {index}: unknown field(s) {unknown}; schema has {schema.names}")
        for field in schema:
            value = row.get(field.name)
            if value is None:
                if not field.nullable:
                    raise ValueError(f"row {index}: field {field.name!r} is required, got null")
            elif not _matches(value, field.type):
                raise ValueError(
                    f"row {index}: field {field.name!r} expects {field.type}, "
                    f"got {type(value).__name__} {value!r}"
                )
    columns = [pa.array([row.get(f.name) for row in rows], type=f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _matches(value: Any, type_: pa.DataType) -> bool:
    """Whether ``value`` is a Python value of the kind Arrow ``type_`` stores."""
    if pa.types.is_string(type_):
        return isinstance(value, str)
    if pa.types.is_boolean(type_):
        return _is_bool(value)
    if pa.types.is_integer(type_):
        bits = type_.bit_width
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1))
        if pa.types.is_unsigned_integer(type_):
            low, high = 0, 2**bits
        return isinstance(value, Integral) and not _is_bool(value) and low <= int(value) < high
    if pa.types.is_floating(type_):
        return isinstance(value, Real) and not _is_bool(value)
    if pa.types.is_timestamp(type_):
        return isinstance(value, datetime) and value.tzinfo is not None
    if pa.types.is_list(type_):
        return isinstance(value, (list, tuple)) and all(
            _matches(item, type_.value_type) for item in value
        )
    raise TypeError(f"no value check for Arrow type {type_}")


def _is_bool(value: Any) -> bool:
    # numpy.bool_ is neither a bool nor an Integral; numpy integers and floats are
    # Integral / Real and pass as numbers.
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def write_table(
    url: str,
    rows: Sequence[Mapping[str, Any]],
    schema: pa.Schema,
    *,
    run_id: str,
    retry: Retry = DEFAULT_RETRY,
) -> pa.Table:
    """Validate ``rows`` against ``schema`` and write them as one Parquet file at ``url``,
    atomically, with ``run_id`` in the schema metadata. Returns the table written."""
    table = rows_to_table(rows, schema)
    metadata = {**(schema.metadata or {}), RUN_ID_KEY: run_id.encode("utf-8")}
    table = table.replace_schema_metadata(metadata)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_bytes_atomic(url, buffer.getvalue().to_pybytes(), retry=retry)
    return table


def read_table(url: str, *, retry: Retry = DEFAULT_RETRY) -> pa.Table:
    """Read the Parquet file at ``url`` (metadata included)."""
    return read_parquet_bytes(read_bytes(url, retry=retry))


def read_parquet_bytes(data: bytes) -> pa.Table:
    """The table in the Parquet file ``data``, read from Arrow's own copy of the bytes.

    Not from the Python bytes (``pa.BufferReader(data)``) nor a Python file object: the reader
    can drop its last reference to its source on one of Arrow's threads, and releasing a Python
    object there takes the GIL; while the interpreter is finalising that kills the thread
    mid-destructor and aborts the process ("terminate called without an active exception",
    exit code 134, after a command printed its output: 1 in 60 `vstar runs list` calls beside
    three CPU hogs, caught in gdb). Arrow-owned memory is freed without the GIL.
    """
    copy = pa.BufferOutputStream()
    copy.write(data)
    return pq.read_table(copy.getvalue())


def table_run_id(table: pa.Table) -> str | None:
    """The ``vstar.run_id`` stored in ``table``'s schema metadata, if any."""
    value = (table.schema.metadata or {}).get(RUN_ID_KEY)
    return value.decode("utf-8") if value is not None else None
