"""Write a run's tables, plots, manifest and index entry, and attach Prefect artifacts."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.retries import retry_unless
from vstar_data.manifest import append_run_index, build_manifest, run_status, write_manifest
from vstar_data.runs import DEFAULT_VARIANT, RunPaths
from vstar_data.schemas import EMBEDDINGS_SCHEMA, METRICS_SCHEMA, SAMPLES_SCHEMA, SYNOPSES_SCHEMA, write_table
from vstar_data.keys import content_key
from vstar_data.storage import (
    StorageError,
    copy_file,
    exists,
    join,
    read_bytes,
    remove_stale_temp_files,
    write_bytes_atomic,
)
from vstar_data.uris import relative_uri, resolve_uri

PLOT_NAMES = ("similarity_matrices.png", "similarity_mean.png", "interval_similarity.png")
STRIPS_EMBEDDED = 16  # frame strips shown inline in a run's summary artifact; the rest are listed
_TABLES = {"synopses": SYNOPSES_SCHEMA, "samples": SAMPLES_SCHEMA, "metrics": METRICS_SCHEMA,
           "embeddings": EMBEDDINGS_SCHEMA}


@task(task_run_name="write-{name}", retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_unless(StorageError))
def write_rows(url: str, name: str, rows: list[dict], run_id: str) -> str:
    """``rows`` as the ``name`` table (synopses, samples, metrics, embeddings) of run ``run_id`` at ``url``."""
    write_table(url, [{**row, "run_id": run_id} for row in rows], _TABLES[name], run_id=run_id)
    return url


def render_plots(scored: list[tuple[dict, list]], metric: str | None, reference: str | None = None) -> dict[str, bytes]:
    """PNG bytes by file name: similarity heatmaps per video and averaged per variant (one colour
    scale each) and the interval distributions of each variant and length (paper Fig. 8 and S.1)."""
    import torch

    from vstar_model.evaluation.similarity import interval_similarities
    from vstar_model.evaluation.plots import interval_distribution_png, similarity_heatmaps_png

    arrays, groups, stacks = {}, {}, {}
    for sample, matrix in scored:
        variant = sample.get("variant") or "vstar"
        label = f"{sample['catalog_id']} s{sample['seed']}" + ("" if variant == "vstar" else f" {variant}")
        arrays[label] = np.asarray(matrix)
        name = f"{variant}, {arrays[label].shape[0]} frames"
        stacks.setdefault(name, []).append(arrays[label])
        group = groups.setdefault(name, {})
        for k, values in interval_similarities(torch.from_numpy(arrays[label])).items():
            group.setdefault(k, []).extend(values.tolist())
    methods = {name: {k: np.asarray(v) for k, v in ks.items()} for name, ks in groups.items()}
    means = {f"mean: {name}": np.mean(stack, axis=0) for name, stack in stacks.items()}
    if reference:
        from tasks.reference import load_reference

        _, real = load_reference(reference)
        methods = {"real (reference)": {k: v.numpy() for k, v in real.items()}, **methods}
    return {
        "similarity_matrices.png": similarity_heatmaps_png(arrays, title=f"inter-frame similarity ({metric})"),
        # Averaged per variant and length on one colour scale: the methods side by side (Fig. 8).
        "similarity_mean.png": similarity_heatmaps_png(means, title=f"mean inter-frame similarity ({metric})"),
        "interval_similarity.png": interval_distribution_png(methods, title=f"similarity vs interval k ({metric})"),
    }


@task(task_run_name="write-plots", retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_unless(StorageError))
def write_plots(
    output_root: str, plots_dir: str, scored: list[tuple[dict, list]], metric: str | None,
    reference: str | None = None,
) -> list[str]:
    """Plots of scored videos into ``plots_dir``; the same scores give the same plots, so they are
    cached under ``output_root`` like videos."""
    if not scored:
        return []
    key = content_key("plots", {
        "metric": metric,
        "reference": reference,
        "videos": [[s["catalog_id"], s["seed"], s.get("variant"), matrix] for s, matrix in scored],
    })
    cached = {name: join(output_root, "cache", "plots", f"{key}__{name}") for name in PLOT_NAMES}
    if not all(exists(url) for url in cached.values()):
        for name, data in render_plots(scored, metric, reference).items():
            write_bytes_atomic(cached[name], data)
    written = []
    for name, url in cached.items():  # copied by the storage itself, as videos are
        written.append(join(plots_dir, name))
        copy_file(url, written[-1])
    return written


def recorded_hashes(run: RunPaths, samples: list[dict]) -> dict[str, str]:
    """SHA-256 of the videos and strips copied into ``run`` from the cache, by path in the run
    directory, as their cache records give them."""
    hashes = {}
    for sample in samples:
        if sample["status"] != "ok":
            continue
        placed = ((run.video, sample.get("video_sha256")), (run.strip, sample.get("strip_sha256")))
        for url_of, digest in placed:
            if digest:
                url = url_of(sample["catalog_id"], sample["seed"], sample.get("variant") or DEFAULT_VARIANT)
                hashes[url.removeprefix(run.run_dir + "/")] = digest
    return hashes


GENERATION_FIELDS = ("variant", "model_preset", "model_family", "tar", "tar_layers", "tar_sigmas", "vsp", "riflex",
                     "flow_shift")


def generation_settings(samples: list[dict]) -> list[dict]:
    """Each distinct way the run's videos were made (backbone, its family, TAR preset with its
    layers and σ, VSP, RIFLEx), in first-seen order: the manifest's ``generation``."""
    settings: list[dict] = []
    for row in samples:
        setting = {name: row.get(name) for name in GENERATION_FIELDS}
        if setting not in settings:
            settings.append(setting)
    return settings


@task(task_run_name="write-manifest", retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_unless(StorageError))
def finish_run(run: RunPaths, parameters: dict, created_at: datetime, catalog: str,
               synopses: list[dict], samples: list[dict], metrics: list[dict]) -> str:
    """Manifest last (it lists every file written before it), then the run's index entry.

    The manifest counts rows and failures: ``synopses_fallback`` (plain prompt instead of an LLM
    synopsis), ``synopses_failed`` (entries left out) and ``samples_failed``; the index entry's
    status says which (:func:`~vstar_data.manifest.run_status`).
    """
    row_counts = {"synopses": len(synopses), "samples": len(samples), "metrics": len(metrics)}
    failures = {
        "synopses_fallback": sum(row["source"] == "fallback" for row in synopses),
        "synopses_failed": sum(row["source"] == "failed" for row in synopses),
        "samples_failed": sum(sample["status"] != "ok" for sample in samples),
    }
    finished = datetime.now(timezone.utc)
    manifest = build_manifest(run.run_dir, run.run_id, parameters=parameters, row_counts=row_counts,
                              created_at=created_at, finished_at=finished,
                              recorded_sha256=recorded_hashes(run, samples))
    url = write_manifest(run.run_dir, {**manifest, "failures": dict(failures), "generation": generation_settings(samples)})
    append_run_index(run.output_root, {
        "run_id": run.run_id,
        "created_at": created_at,
        "finished_at": finished,
        "status": run_status(failures),
        "catalog": catalog,
        "num_samples": row_counts["samples"],
        "num_failed": failures["samples_failed"],
        "num_synopses_fallback": failures["synopses_fallback"],
        "num_synopses_failed": failures["synopses_failed"],
        "parameters_json": json.dumps(parameters, sort_keys=True),
        "manifest_uri": relative_uri(url, run.index_entry),
    })
    logger = get_run_logger()
    logger.info("run %s finished: %d videos; failures %s", run.run_id, len(samples), failures)
    if removed := remove_stale_temp_files(join(run.output_root, "cache")):
        logger.info("removed %d temporary files that killed writes had left in the cache", removed)
    return url


@task(task_run_name="write-directory-manifest", retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_unless(StorageError))
def write_directory_manifest(directory: str, version_id: str, parameters: dict, row_counts: dict,
                             created_at: datetime) -> str:
    """The manifest of a versioned directory other than a run (a reference, an analysis), written last."""
    manifest = build_manifest(directory, version_id, parameters=parameters, row_counts=row_counts,
                              created_at=created_at, finished_at=datetime.now(timezone.utc))
    return write_manifest(directory, manifest)


def embedded_plots(plots: list[str]) -> list[str]:
    """Markdown lines showing PNGs inline, so the Prefect UI shows them wherever they are stored."""
    lines = []
    for url in plots:
        encoded = base64.b64encode(read_bytes(url)).decode()
        lines += ["", f"![{url.rsplit('/', 1)[-1]}](data:image/png;base64,{encoded})"]
    return lines


@task(task_run_name="publish-plots")
def publish_plots(title: str, directory: str, plots: list[str]) -> None:
    create_markdown_artifact("\n".join([f"# {title}", "", f"- directory: `{directory}`", *embedded_plots(plots)]),
                             description=title)


@task(task_run_name="publish-artifacts")
def publish_artifacts(run: RunPaths, samples: list[dict], metrics: list[dict], plots: list[str]) -> None:
    """A table of samples with their metric summary, and a markdown summary with the plots."""
    summary = {(m.get("sample_key"), m["name"]): m["value"] for m in metrics if m["k"] == -1}
    table = [
        {
            "catalog_id": s["catalog_id"],
            "seed": s["seed"],
            "variant": s.get("variant") or "vstar",
            "status": s["status"],
            "states": len(s["states"]),
            "coherence": round(summary.get((s["sample_key"], "coherence"), float("nan")), 4),
            "dynamics_slope": round(summary.get((s["sample_key"], "dynamics_slope"), float("nan")), 5),
            "video": resolve_uri(run.samples, s["video_uri"]) if s.get("video_uri") else s.get("error"),
        }
        for s in samples
    ]
    # Artifact keys allow lowercase letters, digits and dashes: a lowercased run id is just that.
    create_table_artifact(table, key=f"vstar-run-{run.run_id.lower()}", description=f"samples of run {run.run_id}")
    failed = sum(s["status"] != "ok" for s in samples)
    metric = metrics[0]["metric"] if metrics else "none"
    lines = [
        f"# vstar run `{run.run_id}`", "",
        f"- run directory: `{run.run_dir}`",
        f"- videos: {len(samples) - failed} ok, {failed} failed",
        f"- metric: `{metric}`",
    ]
    scores = [m for m in metrics if m["name"] == "overall_score" and m.get("reference")]
    if scores:
        lines += ["", f"Distance to the reference `{scores[0]['reference']}` (mean 1-D Wasserstein over k; lower is"
                  " closer to real videos):", "", "| variant | score |", "|---|---|"]
        lines += [f"| {m['variant']} | {m['value']:.4f} |" for m in scores]
    lines += frame_strips(run, samples, STRIPS_EMBEDDED)
    lines += embedded_plots(plots)
    # Only keyed artifacts are listed by `prefect artifact ls` and on the UI's Artifacts page.
    create_markdown_artifact("\n".join(lines), key=f"vstar-run-{run.run_id.lower()}-summary",
                             description=f"summary of run {run.run_id}")


def frame_strips(run: RunPaths, samples: list[dict], embedded: int) -> list[str]:
    """Markdown showing the frame strips of the first ``embedded`` videos inline and naming the
    files of the others, so a summary stays a few MB however large the run."""
    ok = [s for s in samples if s["status"] == "ok"]
    if not ok:
        return []
    lines = ["", "## Videos", ""]
    for number, sample in enumerate(ok):
        variant = sample.get("variant") or DEFAULT_VARIANT
        label = f"{sample['catalog_id']} s{sample['seed']}" + ("" if variant == DEFAULT_VARIANT else f" {variant}")
        url = run.strip(sample["catalog_id"], sample["seed"], variant)
        if number < embedded:
            encoded = base64.b64encode(read_bytes(url)).decode()
            lines += [f"**{label}**: {_states_text(sample)}", "", f"![{label}](data:image/png;base64,{encoded})", ""]
        else:
            if number == embedded:
                lines += [f"{len(ok) - embedded} more (strips not embedded):", ""]
            lines.append(f"- {label}: `{url}`")
    return lines


def _states_text(sample: dict) -> str:
    return " → ".join(sample["states"]) if sample.get("vsp") else f"{sample['prompt']} (one prompt, no VSP)"
