"""Run ids and the layout of an output root.

::

    <output_root>/
      runs/<run_id>/synopses.parquet, samples.parquet, metrics.parquet, embeddings.parquet,
                    videos/<entry_id>__s<seed>[__<variant>].mp4 (+ .png frame strips), plots/,
                    manifest.json                      (written last)
      runs/_index/<run_id>.parquet                     (one row per run: the run index)
      datasets/<name>/<version>/index.parquet, README.md, card/, manifest.json   (vstar curate)
      cache/synopses/<key>.json                        (reused by later runs)
      cache/samples/<key>.json, <key>.mp4, <key>.png
      cache/metrics/<sample key>__<metric>.json
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from vstar_data.storage import join

RUN_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
# Catalog ids are checked against the same rule (vstar_data.catalog) so names built from
# them stay inside their directory.
DEFAULT_VARIANT = "vstar"
ENTRY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: ``YYYYmmddTHHMMSSZ-<6 random hex>`` in UTC."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"new_run_id needs a timezone-aware time, got naive {now!r}")
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it has the ``YYYYmmddTHHMMSSZ-xxxxxx`` form, else raise ValueError."""
    if not RUN_ID_PATTERN.match(run_id):
        raise ValueError(f"run id {run_id!r} is not of the form YYYYmmddTHHMMSSZ-xxxxxx")
    return run_id


def check_entry_id(entry_id: str) -> str:
    """Return ``entry_id`` if it is safe as a file name, else raise ValueError."""
    if not ENTRY_ID_PATTERN.match(entry_id) or ".." in entry_id:
        raise ValueError(
            f"id {entry_id!r} must match {ENTRY_ID_PATTERN.pattern} and not contain '..'"
        )
    return entry_id


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


@dataclass(frozen=True)
class RunPaths:
    """URLs of one run's files under ``<output_root>/runs/<run_id>/``."""

    output_root: str
    run_id: str

    def __post_init__(self) -> None:
        check_run_id(self.run_id)

    @property
    def run_dir(self) -> str:
        return join(self.output_root, "runs", self.run_id)

    @property
    def synopses(self) -> str:
        return join(self.run_dir, "synopses.parquet")

    @property
    def samples(self) -> str:
        return join(self.run_dir, "samples.parquet")

    @property
    def metrics(self) -> str:
        return join(self.run_dir, "metrics.parquet")

    @property
    def tuning(self) -> str:
        """The trials of the automatic TAR σ search (``tar: auto``)."""
        return join(self.run_dir, "tuning.parquet")

    @property
    def embeddings(self) -> str:
        return join(self.run_dir, "embeddings.parquet")

    @property
    def videos_dir(self) -> str:
        return join(self.run_dir, "videos")

    @property
    def plots_dir(self) -> str:
        return join(self.run_dir, "plots")

    @property
    def manifest(self) -> str:
        return join(self.run_dir, "manifest.json")

    @property
    def index_entry(self) -> str:
        """This run's row of the run index."""
        return join(run_index_dir(self.output_root), f"{self.run_id}.parquet")

    def video(self, entry_id: str, seed: int, variant: str = DEFAULT_VARIANT) -> str:
        return join(self.videos_dir, _video_name(entry_id, seed, variant) + ".mp4")

    def strip(self, entry_id: str, seed: int, variant: str = DEFAULT_VARIANT) -> str:
        """The PNG strip of frames sampled from the video of ``entry_id`` and ``seed``."""
        return join(self.videos_dir, _video_name(entry_id, seed, variant) + ".png")


def _video_name(entry_id: str, seed: int, variant: str) -> str:
    """``<id>__s<seed>``, plus ``__<variant>`` for ablation variants other than the full method."""
    name = f"{check_entry_id(entry_id)}__s{_check_seed(seed)}"
    if variant == DEFAULT_VARIANT:
        return name
    if not re.fullmatch(r"[a-z0-9_+]{1,32}", variant):
        raise ValueError(f"variant must be 1-32 of [a-z0-9_+], got {variant!r}")
    return f"{name}__{variant.replace('+', '_')}"  # S3 may read '+' in a key as a space


@dataclass(frozen=True)
class DatasetPaths:
    """URLs of one curated dataset version under ``<output_root>/datasets/<name>/<version>/``."""

    output_root: str
    name: str
    version: str

    def __post_init__(self) -> None:
        check_entry_id(self.name)
        check_run_id(self.version)

    @property
    def directory(self) -> str:
        return join(self.output_root, "datasets", self.name, self.version)

    @property
    def index(self) -> str:
        return join(self.directory, "index.parquet")

    @property
    def card(self) -> str:
        return join(self.directory, "README.md")

    def card_file(self, name: str) -> str:
        """An image of the dataset card (histograms, example frame strips)."""
        return join(self.directory, "card", name)


def run_index_dir(output_root: str) -> str:
    """Directory holding one small Parquet file per run; read it as one dataset."""
    return join(output_root, "runs", "_index")


@dataclass(frozen=True)
class CachePaths:
    """URLs of finished results under ``<output_root>/cache/``, named by content keys
    (:mod:`vstar_data.keys`), so any later run with the same inputs reuses them.

    Write the payload (video, strip) first and the JSON record last: a record that exists
    means its result is complete.
    """

    output_root: str

    def synopsis(self, key: str) -> str:
        return join(self.output_root, "cache", "synopses", f"{_check_key(key)}.json")

    def sample_record(self, key: str) -> str:
        return join(self.output_root, "cache", "samples", f"{_check_key(key)}.json")

    def video(self, key: str) -> str:
        return join(self.output_root, "cache", "samples", f"{_check_key(key)}.mp4")

    def strip(self, key: str) -> str:
        return join(self.output_root, "cache", "samples", f"{_check_key(key)}.png")

    def metrics(self, sample_key: str, metric: str) -> str:
        """Scores of one video under one metric (rows without run id, plus the N×N matrix)."""
        if not re.fullmatch(r"[a-z0-9_]{1,64}", metric):
            raise ValueError(f"metric name must be 1-64 of [a-z0-9_], got {metric!r}")
        return join(self.output_root, "cache", "metrics", f"{_check_key(sample_key)}__{metric}.json")


def _check_key(key: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{8,64}", key):
        raise ValueError(f"cache key must be 8-64 lowercase hex digits, got {key!r}")
    return key
