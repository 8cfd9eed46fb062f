"""Real clips as generation inputs: ΔA from a clip's frame similarity (paper Fig. 9) and GTN references.

A clip is named by its absolute URL and identified by the SHA-256 of its bytes (of its image files,
in order, for a folder of frames); both are recorded with every video made from it and enter the
video's resume key.
"""

from __future__ import annotations

import hashlib
import json
import os

from prefect import get_run_logger, task
from prefect.futures import wait

from tasks.evaluate import EvaluationSettings, settings_embedder
from tasks.generate import GTNSettings, ReferenceBand
from tasks.jobs import check_tar, entry_frames, failure_reason
from vstar_data.catalog import AUTO_TAR, CatalogEntry
from vstar_model.backbones.presets import get_preset
from vstar_model.sampling import GTN_VARIANTS, VARIANTS
from vstar_data.keys import content_key
from vstar_data.storage import exists, filesystem, join, list_files, read_bytes, sha256, write_bytes_atomic


def absolute_url(url: str) -> str:
    """``url`` with a local path made absolute (URLs with a protocol are kept as they are)."""
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


def clip_sha256(url: str) -> str:
    """SHA-256 of a video file, or of a folder's files (names and contents, in name order)."""
    fs, path = filesystem(url)
    if not fs.isdir(path):
        return sha256(url)
    digest = hashlib.sha256()
    for name in sorted(list_files(url)):
        digest.update(name.encode() + b"\0" + sha256(join(url, name)).encode() + b"\n")
    return digest.hexdigest()


def band_cache_url(output_root: str, clip_hash: str, metric: str, num_frames: int) -> str:
    key = content_key("tar-band", {"clip_sha256": clip_hash, "metric": metric, "num_frames": num_frames})
    return join(output_root, "cache", "bands", f"{key}.json")


def read_band_frames(clip: str, num_frames: int):
    """``num_frames`` frames spread over the clip, or all of a shorter clip's (its matrix is resampled)."""
    from vstar_model.video.reader import read_video_frames

    try:
        return read_video_frames(clip, num_frames)
    except ValueError:
        frames = read_video_frames(clip)
        if len(frames) >= num_frames:
            raise
        return frames


@task(task_run_name="tar-band-{num_frames}f", retries=1, retry_delay_seconds=2)
def clip_band(clip: str, num_frames: int, evaluation: EvaluationSettings, output_root: str) -> ReferenceBand:
    """ΔA ``[num_frames, num_frames]`` from ``clip``'s frame similarity with the run's metric,
    cached under ``cache/bands/`` by the clip's hash, the metric and the frame count."""
    from vstar_model.tar.reference import reference_band

    clip = absolute_url(clip)
    clip_hash = clip_sha256(clip)
    embedder = settings_embedder(evaluation)
    cached = band_cache_url(output_root, clip_hash, embedder.metric, num_frames)
    if exists(cached):
        matrix = json.loads(read_bytes(cached))["matrix"]
    else:
        matrix = reference_band(read_band_frames(clip, num_frames), embedder, num_frames).tolist()
        write_bytes_atomic(cached, json.dumps({"clip": clip, "matrix": matrix}).encode())
    get_run_logger().info("ΔA from %s: %d×%d, %s", clip, num_frames, num_frames, embedder.metric)
    return ReferenceBand(matrix=matrix, clip=clip, metric=embedder.metric, sha256=clip_hash)


@task(task_run_name="hash-clip", retries=1, retry_delay_seconds=2)
def describe_clip(clip: str) -> tuple[str, str]:
    """(absolute URL, SHA-256) of a clip."""
    clip = absolute_url(clip)
    return clip, clip_sha256(clip)


# --- per entry: which clip, and the checks before any work --------------------------------------


def band_source(entry: CatalogEntry, parameters) -> str | None:
    """The clip whose frame similarity is the entry's ΔA, if any (the entry's own, else the run's)."""
    return entry.tar_band_from or parameters.tar_band_from


def gtn_reference(entry: CatalogEntry, parameters) -> str | None:
    """The real clip the entry's gtn variants fit their noise to (the entry's own, else the run's)."""
    return entry.gtn_reference or parameters.gtn.reference


def check_clip_inputs(entries: list[CatalogEntry], parameters) -> None:
    """Refuse, before any work, a ΔA clip without TAR levels or a metric, a gtn variant without a
    reference clip, and clips that do not exist; one line per problem."""
    uses_tar = any(VARIANTS[variant].tar for variant in parameters.variants)
    uses_gtn = any(variant in GTN_VARIANTS for variant in parameters.variants)
    problems, clips = [], set()
    for entry in entries:
        preset = get_preset(entry.model or parameters.model.preset)
        tar = entry.tar or parameters.tar or preset.default_tar
        source = band_source(entry, parameters) if uses_tar else None
        if source is not None:
            clips.add(source)
            if tar == AUTO_TAR:
                problems.append(f"entry {entry.id!r}: tar 'auto' searches the Gaussian band's σ; "
                                f"tar_band_from {source} replaces that band: give one of them")
            elif check_tar(preset, tar) is None:
                example = "blocks, e.g. tar 'b0-9D1s0.5'" if preset.family == "wan" else "levels, e.g. tar '64D1'"
                problems.append(f"entry {entry.id!r}: tar_band_from {source} needs TAR {example}, not {tar!r}")
            if parameters.evaluation.metric == "none":
                problems.append(f"entry {entry.id!r}: tar_band_from needs a similarity metric, not metric 'none'")
        if uses_gtn:
            reference = gtn_reference(entry, parameters)
            if reference is None:
                problems.append(f"entry {entry.id!r}: the gtn variants need a real reference clip "
                                "(--gtn-reference, gtn.reference, or the entry's gtn_reference)")
            else:
                clips.add(reference)
    problems += [f"no such clip: {clip}" for clip in sorted(clips) if not exists(clip)]
    if problems:
        raise ValueError("\n".join(problems))


def collect_bands(entries: list[CatalogEntry], parameters) -> tuple[dict[str, ReferenceBand], dict[str, str]]:
    """(entry id → its ΔA from a real clip, entry id → why it could not be made), one task per clip
    and frame count. Entries without a clip, or in runs without a TAR variant, have neither."""
    if not any(VARIANTS[variant].tar for variant in parameters.variants):
        return {}, {}
    wanted = {
        entry.id: (source, entry_frames(entry, parameters.frames, parameters.model))
        for entry in entries
        if (source := band_source(entry, parameters)) is not None
    }
    futures = {
        request: clip_band.submit(request[0], request[1], parameters.evaluation, parameters.output_root)
        for request in sorted(set(wanted.values()))
    }
    wait(list(futures.values()))
    bands, failures = {}, {}
    for entry_id, request in wanted.items():
        future = futures[request]
        if future.state.is_completed():
            bands[entry_id] = future.result()
        else:
            failures[entry_id] = f"ΔA from {request[0]} failed: {failure_reason(future.state)}"
    return bands, failures


def collect_gtn_references(entries: list[CatalogEntry], parameters) -> dict[str, tuple[GTNSettings, str]]:
    """Entry id → (its GTN settings with the reference as an absolute URL, the clip's SHA-256)."""
    if not any(variant in GTN_VARIANTS for variant in parameters.variants):
        return {}
    wanted = {entry.id: gtn_reference(entry, parameters) for entry in entries}
    described = {clip: describe_clip.submit(clip) for clip in sorted(set(wanted.values()))}
    result = {}
    for entry_id, clip in wanted.items():
        url, digest = described[clip].result()
        result[entry_id] = (parameters.gtn.model_copy(update={"reference": url}), digest)
    return result
