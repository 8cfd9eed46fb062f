"""Flow ``produce-dataset``: catalog → synopses → videos → metrics → versioned run directory."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import partial

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.catalogs import read_catalog
from tasks.clips import check_clip_inputs, collect_bands, collect_gtn_references
from tasks.evaluate import EvaluationSettings, check_evaluation, evaluate_sample
from tasks.generate import GTNSettings, generate_sample
from tasks.jobs import (
    ModelSettings,
    check_backbones,
    check_entries,
    entry_frames,
    plan_jobs,
    results_or_failures,
    sample_failure_row,
    set_aside_unresolved,
    submit_in_window,
)
from tasks.limits import ensure_concurrency_limit
from tasks.reference import check_reference, compare_with_reference
from tasks.shards import run_shard, split_jobs
from tasks.outputs import finish_run, publish_artifacts, write_plots, write_rows
from tasks.synopsize import LLMSettings, failed_synopsis_row, synopsize_entry
from tasks.tuning import TuningSettings, check_tuning, tune_jobs, write_tuning
from vstar_data.runs import RunPaths, new_run_id
from vstar_data.storage import check_storage_options, using_storage_options
from vstar_data.uris import absolute_url
from vstar_model.sampling import VARIANTS


class ProduceParameters(BaseModel):
    """Parameters of one production run."""

    model_config = ConfigDict(extra="forbid")

    catalog: str = Field(description="catalog file or URL (YAML, JSON, CSV or Parquet)")
    output_root: str = Field("./outputs", description="local path or fsspec URL; runs go under runs/<run_id>/")
    storage_options: dict[str, Any] = Field(
        {}, description="fsspec options for output_root's protocol, e.g. {'endpoint_url': 'http://127.0.0.1:9000'}"
    )
    frames: int | None = Field(None, ge=1, description="frames per video (default: the model preset's)")
    max_frames: int = Field(256, ge=1, description="largest frames a catalog entry may ask for")
    samples_per_prompt: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, description="first seed; an entry's samples use seed, seed+1, …")
    tar: str | None = Field(
        None, description="TAR preset: UNet levels (64D1, 64D4, 64D1_32D8), DiT blocks (b0-9D1s0.5), off, or "
                          "'auto' (σ searched per entry); default: the model preset's"
    )
    variants: list[Literal[tuple(VARIANTS)]] = Field(  # type: ignore[valid-type]
        ["vstar"], min_length=1,
        description="ablation variants, same seeds (paper Fig. 11): vstar = VSP + TAR, tar, vsp, baseline; "
                    "gtn, gtn+vstar: initial noise fitted to a real clip first (Appendix B, UNets); "
                    "with RIFLEx (DiTs): riflex, tar_riflex, vstar_riflex",
    )
    gpu_slots: int = Field(1, ge=1, description="videos generated at once, over all machines (size it to the GPUs)")
    shards: int = Field(1, ge=1, description="machines to spread generation over (with shard_deployment)")
    shard_deployment: str | None = Field(
        None, description="e.g. 'generate-shard/gpu': generate through flow runs on that deployment's pool"
    )
    model: ModelSettings = ModelSettings()
    llm: LLMSettings = LLMSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    tar_band_from: str | None = Field(
        None,
        description="a real clip whose frame similarity (the run's metric) is ΔA at the TAR levels or DiT blocks (Fig. 9)",
    )
    gtn: GTNSettings = GTNSettings()
    tuning: TuningSettings = TuningSettings()

    @field_validator("catalog")
    @classmethod
    def _absolute_catalog(cls, catalog: str) -> str:
        # Recorded in the manifest and run index: a reader elsewhere must find it (vstar_data.uris).
        return absolute_url(catalog)

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_storage_options(options)  # they are stored with the run's parameters

    def uses_vsp(self) -> bool:
        """Whether any variant needs synopses (otherwise no LLM call is made)."""
        return any(VARIANTS[variant].vsp for variant in self.variants)


@flow(name="produce-dataset")
def produce_dataset(
    catalog: str,
    output_root: str = "./outputs",
    storage_options: dict[str, Any] = {},  # noqa: B006  (as variants)
    frames: int | None = None,
    max_frames: int = 256,
    samples_per_prompt: int = 1,
    seed: int = 0,
    tar: str | None = None,
    variants: list[str] = ["vstar"],  # noqa: B006  (Prefect parameters: a literal default for the schema)
    gpu_slots: int = 1,
    shards: int = 1,
    shard_deployment: str | None = None,
    model: ModelSettings = ModelSettings(),
    llm: LLMSettings = LLMSettings(),
    evaluation: EvaluationSettings = EvaluationSettings(),
    tar_band_from: str | None = None,
    gtn: GTNSettings = GTNSettings(),
    tuning: TuningSettings = TuningSettings(),
) -> str:
    """Produce one versioned dataset run and return its directory URL.

    Top-level parameters (not one nested model) so that deployments take
    ``--param catalog=... --param frames=64``; they are validated as :class:`ProduceParameters`.
    """
    p = ProduceParameters(**{name: value for name, value in locals().items()})
    with using_storage_options(p.output_root, p.storage_options):
        return _produce(p)


def _produce(p: ProduceParameters) -> str:
    logger = get_run_logger()
    entries = read_catalog(p.catalog, p.max_frames)  # a bad catalog stops the run before anything is written
    check_entries(entries, frames=p.frames, tar=p.tar, variants=p.variants, model=p.model)  # so do impossible videos
    check_backbones(entries, p.model)  # and missing model weights
    metric = check_evaluation(p.evaluation)  # and missing metric weights
    if p.evaluation.reference:
        check_reference(p.evaluation.reference, metric)  # and an unusable reference
    check_clip_inputs(entries, p)  # and real clips that are missing or cannot be used
    check_tuning(entries, p)
    run = RunPaths(p.output_root, new_run_id())
    created_at = datetime.now(timezone.utc)
    logger.info("run %s: %d catalog entries → %s", run.run_id, len(entries), run.run_dir)

    llm_limit = ensure_concurrency_limit("vstar-llm", p.llm.concurrency)
    gpu_limit = ensure_concurrency_limit("vstar-gpu", p.gpu_slots)
    synopses = [
        synopsize_entry.submit(entry, p.uses_vsp(), p.llm, entry_frames(entry, p.frames, p.model), p.output_root,
                               llm_limit)
        for entry in entries
    ]
    # Rows and matrices already in memory go to tasks quote()d: Prefect would otherwise walk every
    # nested value looking for futures, which costs more than the writes on a resumed run.
    synopsis_rows = results_or_failures(synopses, entries, partial(failed_synopsis_row, llm=p.llm))
    write_rows(run.synopses, "synopses", quote(synopsis_rows), run.run_id)

    bands, unresolved = collect_bands(entries, p)
    jobs = plan_jobs(entries, synopsis_rows, p, bands, collect_gtn_references(entries, p))
    jobs, tuning_rows, failed_tuning = tune_jobs(jobs, p, run, metric, gpu_limit)
    if tuning_rows:
        write_tuning(run, quote(tuning_rows))
    jobs, unresolved_rows = set_aside_unresolved(jobs, {**unresolved, **failed_tuning}, run)
    if p.shard_deployment:
        parts = split_jobs(jobs, p.shards)
        shard_runs = [run_shard.submit(p.shard_deployment, part, run, i, gpu_limit, p.storage_options)
                      for i, part in enumerate(parts)]
        samples = [row for future in shard_runs for row in future.result()]
    else:
        generated = submit_in_window(generate_sample, jobs, p.gpu_slots, run, gpu_limit)
        samples = results_or_failures(generated, jobs, partial(sample_failure_row, run=run))
    samples += unresolved_rows
    write_rows(run.samples, "samples", quote(samples), run.run_id)

    scored = []  # (sample, similarity matrix)
    metrics, embeddings = [], []
    if metric is not None:
        ok = [sample for sample in samples if sample["status"] == "ok"]
        for sample, future in zip(ok, [evaluate_sample.submit(s, p.evaluation, p.output_root) for s in ok]):
            rows, matrix, embedding = future.result()
            metrics.extend(rows)
            embeddings.append(embedding)
            scored.append((sample, matrix))
    if p.evaluation.reference and scored:
        metrics.extend(compare_with_reference(run.run_id, quote(scored), p.evaluation.reference, metric))
    write_rows(run.metrics, "metrics", quote(metrics), run.run_id)
    write_rows(run.embeddings, "embeddings", quote(embeddings), run.run_id)
    plots = write_plots(run.output_root, run.plots_dir, quote(scored), metric, p.evaluation.reference)
    publish_artifacts(run, quote(samples), quote(metrics), plots)

    finish_run(run, p.model_dump(mode="json"), created_at, p.catalog,
               quote(synopsis_rows), quote(samples), quote(metrics))
    return run.run_dir
