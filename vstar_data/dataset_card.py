"""The dataset card of a curated dataset: README.md with counts, the selection steps, metric
histograms and example frame strips (PNG files beside it), and provenance."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from vstar_data.schemas import DATASET_SCHEMA

HISTOGRAM_METRICS = ("coherence", "dynamics_slope", "temporal_flicker", "motion_magnitude")


def metric_histograms_png(index: pa.Table) -> bytes | None:
    """One histogram per headline metric that has values; None when none has."""
    from matplotlib.figure import Figure

    present = [(name, values[~np.isnan(values)]) for name in HISTOGRAM_METRICS
               for values in [index[name].to_numpy(zero_copy_only=False).astype(np.float64)]]
    present = [(name, values) for name, values in present if len(values)]
    if not present:
        return None
    figure = Figure(figsize=(3.2 * len(present), 2.6), layout="constrained")
    for axis, (name, values) in zip(figure.subplots(1, len(present), squeeze=False)[0], present):
        axis.hist(values, bins=min(20, max(5, len(values))), color="#4c72b0")
        axis.set_title(name)
        axis.set_ylabel("clips")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _counts(values: Sequence, empty: str = "—") -> str:
    counted = Counter("none" if value is None else str(value) for value in values)
    return ", ".join(f"`{value}` × {count}" for value, count in sorted(counted.items())) or empty


def _model(row: dict) -> str:
    return row["model_preset"] + (f" @ {row['model_revision']}" if row["model_revision"] else "")


def card_markdown(
    name: str,
    version: str,
    index: pa.Table,
    steps: Sequence[tuple[str, int]],
    runs: Sequence[str],
    histogram: str | None,
    examples: Sequence[tuple[str, str]],
) -> str:
    """README.md of a dataset version. ``steps`` are (selection step, clips left); ``histogram`` and
    ``examples`` ((clip id, image path)) are paths relative to the card."""
    rows = index.to_pylist()
    frames = sum(row["num_frames"] for row in rows)
    lines = [
        f"# vstar dataset `{name}`, version `{version}`",
        "",
        f"{len(rows)} clips, {frames} frames in all, from {len(runs)} runs; {len({r['prompt'] for r in rows})} prompts.",
        "Every clip comes with its synopsis: the visual states it moves through, the frame where each is a",
        "keyframe (`keyframe_indices`) and the state each frame shows (`frame_captions`).",
        "",
        "## Selection",
        "",
        "| step | clips left |",
        "|---|---|",
        *[f"| {description} | {remaining} |" for description, remaining in steps],
        "",
        "## Metrics",
        "",
        f"Similarity metric: {_counts([r['similarity_metric'] for r in rows])}. `temporal_flicker` is VBench's",
        "formula (1 = no pixel changes), `motion_magnitude` the mean Farnebäck optical flow in pixels per",
        "frame at 256 px; both need no weights.",
        "",
    ]
    if histogram:
        lines += [f"![metric histograms]({histogram})", ""]
    if examples:
        lines += ["## Examples", ""]
        for clip_id, path in examples:
            row = next(r for r in rows if r["clip_id"] == clip_id)
            lines += [f"**{row['prompt']}** ({' → '.join(row['states'])}), seed {row['seed']}", "",
                      f"![{clip_id}]({path})", ""]
    lines += [
        "## Provenance",
        "",
        f"- runs: {', '.join(f'`{run}`' for run in runs)}",
        f"- models: {_counts([_model(r) for r in rows])}",
        f"- TAR: {_counts([r['tar'] for r in rows])}",
        f"- VSP: {_counts([r['vsp'] for r in rows])}; variants: {_counts([r['variant'] for r in rows])}",
        f"- synopses: {_counts([r['synopsis_source'] for r in rows])}; template versions: "
        f"{_counts([r['template_version'] for r in rows])}",
        "",
        "## Files",
        "",
        "`index.parquet` (one row per clip; columns: " + ", ".join(f"`{n}`" for n in DATASET_SCHEMA.names) + ").",
        "Video URIs inside the output root are relative to `index.parquet`'s folder; resolve them with",
        "`vstar_data.uris.resolve_uri(index_url, video_uri)`. `manifest.json` (written last) lists every file",
        "of this folder with its sha256; `video_sha256` in the index checks each video.",
        "",
    ]
    return "\n".join(lines)
