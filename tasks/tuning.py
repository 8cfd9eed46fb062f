"""``tar: auto``: per catalog entry, search the TAR σ whose videos come closest to a real reference.

The search itself (strategy, budget, stopping rule) is :func:`vstar_model.tar.tuning.search_tar`;
here a trial is one video of the entry (its first seed, the first TAR variant's text) at reduced
steps and resolution, scored with the run's metric and compared with the reference's interval
similarities (mean per-k Wasserstein, as ``overall_score`` in metrics.parquet). Trial videos are
cached like any other, so a resumed run repeats the same search from the cache and picks the same σ.
Every trial lands in ``tuning.parquet``; the winner is the entry's ``tar`` in samples.parquet.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.futures import wait
from pydantic import BaseModel, ConfigDict, Field

from tasks.evaluate import EvaluationSettings, scored_sample
from tasks.generate import SampleJob, cached_sample, gpu_slot_for
from tasks.jobs import failure_reason, submit_in_window
from tasks.retries import retry_unless
from tasks.reference import matching_reference
from vstar_data.catalog import AUTO_TAR, CatalogEntry
from vstar_data.runs import CachePaths, RunPaths
from vstar_data.schemas import TUNING_SCHEMA, write_table
from vstar_data.storage import StorageError
from vstar_model.tar.tuning import SigmaSearch


class TuningSettings(BaseModel):
    """The σ search of ``tar: auto`` entries; search defaults are :class:`~vstar_model.tar.tuning.SigmaSearch`'s."""

    model_config = ConfigDict(extra="forbid")

    budget: int = Field(SigmaSearch.budget, ge=1, description="trial videos per entry, at most")
    sigma_min: float = Field(SigmaSearch.sigma_min, gt=0)
    sigma_max: float = Field(SigmaSearch.sigma_max, gt=0)
    tolerance: float = Field(SigmaSearch.tolerance, gt=0, description="stop once the σ bracket is this narrow (log₂)")
    level_sets: list[list[int]] = Field([[64]], min_length=1, description="TAR levels to try, e.g. [[64], [64, 32]]")
    trial_steps: int | None = Field(None, ge=1, description="denoising steps of a trial (default: half the run's)")
    trial_scale: float = Field(0.5, gt=0, le=1, description="trial height and width relative to the run's")

    def search(self) -> SigmaSearch:
        return SigmaSearch(sigma_min=self.sigma_min, sigma_max=self.sigma_max, budget=self.budget,
                           tolerance=self.tolerance, level_sets=tuple(tuple(levels) for levels in self.level_sets))


def check_tuning(entries: list[CatalogEntry], parameters) -> None:
    """``tar: auto`` needs a reference and a metric to compare with; refuse before any work."""
    tuned = [entry.id for entry in entries if (entry.tar or parameters.tar) == AUTO_TAR]
    if not tuned:
        return
    if not parameters.evaluation.reference:
        raise ValueError(f"tar 'auto' (entries {', '.join(tuned)}) needs a reference of real clips to compare "
                         "trial videos with: pass --reference (made by `vstar evaluate CLIPS`)")
    if parameters.evaluation.metric == "none":
        raise ValueError("tar 'auto' compares trial videos with a reference: it needs a metric, not 'none'")
    parameters.tuning.search()  # an impossible search (e.g. more level sets than trials) stops here


def trial_job(job: SampleJob, tuning: TuningSettings) -> SampleJob:
    """``job`` at a trial's steps and size (multiples of 8, the VAE factor of every preset), without GTN."""
    steps = tuning.trial_steps or max(1, job.num_inference_steps // 2)

    def scaled(size: int) -> int:
        return max(8, int(size * tuning.trial_scale) // 8 * 8)

    return job.model_copy(update={"num_inference_steps": steps, "height": scaled(job.height),
                                  "width": scaled(job.width), "gtn": None, "gtn_reference_sha256": None})


@task(task_run_name="tune-tar-{trial.entry_id}", retries=1, retry_delay_seconds=2,
      retry_condition_fn=retry_unless(FloatingPointError, StorageError))
def tune_tar(trial: SampleJob, tuning: TuningSettings, evaluation: EvaluationSettings, run: RunPaths,
             metric: str, concurrency_limit: str | None = None) -> tuple[str, list[dict]]:
    """Search the TAR σ of ``trial``'s entry; returns the chosen preset and one row per trial."""
    import torch

    from vstar_model.evaluation.similarity import compare_to_reference, interval_similarities
    from vstar_model.tar.tuning import search_tar

    logger = get_run_logger()
    reference = matching_reference(evaluation.reference, metric)
    search = tuning.search()
    slot = gpu_slot_for(concurrency_limit)
    rows: list[dict] = []

    def objective(preset: str) -> float:
        job = trial.model_copy(update={"tar": preset})
        key, record, _ = cached_sample(job, run.output_root, gpu_slot=slot)
        sample = {"run_id": run.run_id, "sample_key": key, "catalog_id": job.entry_id, "seed": job.seed,
                  "video_uri": CachePaths(run.output_root).video(key)}
        _, matrix, _ = scored_sample(sample, evaluation, run.output_root)
        score = compare_to_reference(interval_similarities(torch.tensor(matrix)), reference).score
        rows.append({"catalog_id": job.entry_id, "trial": len(rows), "tar": preset, "score": score, "metric": metric,
                     "reference": evaluation.reference, "seed": job.seed, "num_frames": job.num_frames,
                     "height": job.height, "width": job.width, "num_inference_steps": job.num_inference_steps,
                     "sample_key": key})
        logger.info("%s: trial %d/%d %s → %.4f", job.entry_id, len(rows), search.budget, preset, score)
        return score

    result = search_tar(objective, search)
    for row, found in zip(rows, result.trials):
        row.update(levels="_".join(map(str, found.levels)), sigma=found.sigma, chosen=found is result.best,
                   stopped=result.stopped[found.levels])
    logger.info("%s: TAR %s after %d trials", trial.entry_id, result.best.preset, len(rows))
    return result.best.preset, rows


def tune_jobs(jobs: list[SampleJob], parameters, run: RunPaths, metric: str | None,
              concurrency_limit: str | None) -> tuple[list[SampleJob], list[dict], dict[str, str]]:
    """Settle ``tar: auto`` for every entry that has TAR jobs: (jobs with the chosen preset,
    tuning rows, entry id → why its search failed). One search per entry, run in parallel up to
    the run's GPU slots."""
    first_auto: dict[str, SampleJob] = {}
    for job in jobs:
        if job.tar == AUTO_TAR:
            first_auto.setdefault(job.entry_id, job)
    if not first_auto:
        return jobs, [], {}
    trials = [trial_job(job, parameters.tuning) for job in first_auto.values()]
    futures = submit_in_window(tune_tar, trials, parameters.gpu_slots, parameters.tuning, parameters.evaluation,
                               run, metric, concurrency_limit)
    wait(futures)
    chosen, rows, failures = {}, [], {}
    for trial, future in zip(trials, futures):
        if future.state.is_completed():
            chosen[trial.entry_id], entry_rows = future.result()
            rows += entry_rows
        else:
            failures[trial.entry_id] = f"TAR σ search failed: {failure_reason(future.state)}"
    tuned = [job.model_copy(update={"tar": chosen[job.entry_id]}) if job.tar == AUTO_TAR and job.entry_id in chosen
             else job for job in jobs]
    return tuned, rows, failures


@task(task_run_name="write-tuning", retries=2, retry_delay_seconds=[1, 5])
def write_tuning(run: RunPaths, rows: list[dict]) -> str:
    write_table(run.tuning, [{**row, "run_id": run.run_id} for row in rows], TUNING_SCHEMA, run_id=run.run_id)
    return run.tuning
