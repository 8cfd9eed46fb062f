"""The ``vstar`` command: produce datasets, validate catalogs, list runs, curate and export datasets."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from datetime import datetime
from typing import Optional

import typer

# The ephemeral Prefect server the CLI starts would otherwise try to send telemetry (and log an
# error on machines without network); a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(help="Long, dynamic text-to-video datasets with VSTAR, orchestrated by Prefect.",
                  no_args_is_help=True, add_completion=False)
catalog_app = typer.Typer(help="Prompt catalogs.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs under an output root.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(runs_app, name="runs")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _count_videos(catalog, samples: int, variants: int) -> int:
    return variants * sum(len(entry.seeds) if entry.seeds else entry.num_samples or samples for entry in catalog)


@contextmanager
def local_flow_settings():
    """Prefect settings for a flow run in this process. Prefect's ephemeral API dies with the
    process, so nothing would ever read flow-run heartbeats there: they are turned off, which also
    ends each run up to a second sooner (Prefect joins the heartbeat thread at its next tick)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@contextmanager
def video_progress(total_videos: int):
    """A terminal bar over the run's videos, fed by the generate tasks' step reports."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.theme import Theme

    from tasks.progress import listening

    console = _prefect_console()
    if console is not None:
        console.push_theme(Theme())  # Prefect's theme lacks rich's default progress styles
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    overall = progress.add_task("videos", total=total_videos)
    current: dict[str, int] = {}

    def on_step(label: str, done: int, total: int) -> None:
        if label not in current:
            current[label] = progress.add_task(f"  {label}", total=total)
        progress.update(current[label], completed=done, total=total)
        if done == total:
            progress.remove_task(current.pop(label))
            progress.advance(overall)

    try:
        with progress, listening(on_step):
            yield
    finally:
        if console is not None:
            console.pop_theme()


def _prefect_console():
    """The rich Console Prefect logs to, so that log lines print above the bar instead of through it."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    for logger in (logging.getLogger("prefect"), logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler):
                return handler.console
    return None


def _checked_catalog(path: str, max_frames: int = 256):
    from tasks.catalogs import read_catalog_checked
    from vstar_data.catalog import CatalogError

    try:
        return read_catalog_checked(path, max_frames=max_frames)
    except CatalogError as error:
        _fail(str(error))


def _given(**options):
    """The options the user set; the others keep the flow's defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _level_sets(specs: list[str] | None) -> list[list[int]] | None:
    """``["64", "64_32"]`` → ``[[64], [64, 32]]``."""
    if not specs:
        return None
    try:
        return [[int(level) for level in spec.split("_")] for spec in specs]
    except ValueError:
        raise ValueError(f"--tuning-levels takes levels joined by '_', e.g. 64 or 64_32, got {specs}") from None


@app.command()
def produce(
    catalog: str = typer.Argument(..., help="catalog file or URL (YAML, JSON, CSV, Parquet)"),
    out: str = typer.Option("./outputs", "--out", help="output root: local path or fsspec URL"),
    model: str = typer.Option("tiny", help="model preset: tiny, modelscope, zeroscope, videocrafter2, animatediff"),
    model_path: Optional[str] = typer.Option(None, help="local directory of the model's weights"),
    frames: Optional[int] = typer.Option(None, min=1, help="frames per video (default: the preset's)"),
    max_frames: int = typer.Option(256, min=1, help="largest frames a catalog entry may ask for"),
    samples: int = typer.Option(1, min=1, help="videos per prompt (seeds seed, seed+1, …)"),
    seed: int = typer.Option(0, min=0),
    tar: str = typer.Option(
        "64D1", help="TAR preset, e.g. 64D1, 64D4, 64D1_32D8, off; or auto: σ searched per entry (needs --reference)"
    ),
    variant: list[str] = typer.Option(
        ["vstar"], help="ablation variant(s), same seeds: vstar (VSP+TAR), tar, vsp, baseline, gtn, gtn+vstar "
        "(noise fitted to --gtn-reference first); repeat for several"
    ),
    tar_band_from: Optional[str] = typer.Option(
        None, "--tar-band-from", help="real clip whose frame similarity (with --metric) is ΔA at the TAR levels"
    ),
    gtn_reference: Optional[str] = typer.Option(None, help="real clip the gtn variants fit their initial noise to"),
    gtn_steps: Optional[int] = typer.Option(None, min=0, help="GTN gradient steps (default 20)"),
    gtn_timestep: Optional[int] = typer.Option(
        None, min=0, help="GTN: compare attention at the sampling step nearest this timestep (default 500)"
    ),
    gtn_lr: Optional[float] = typer.Option(None, min=0.0, help="GTN: Adam learning rate (default 0.05)"),
    gtn_kl_weight: Optional[float] = typer.Option(
        None, min=0.0, help="GTN: weight λ of KL(N(μ, Σ) ‖ N(0, I)) (default 0.1)"
    ),
    tuning_budget: Optional[int] = typer.Option(
        None, min=1, help="--tar auto: trial videos per entry, at most (default 8)"
    ),
    tuning_levels: Optional[list[str]] = typer.Option(
        None, help="--tar auto: TAR level sets to try, e.g. 64 and 64_32 (repeat) (default 64)"
    ),
    steps: Optional[int] = typer.Option(None, min=1, help="denoising steps"),
    height: Optional[int] = typer.Option(None, min=8),
    width: Optional[int] = typer.Option(None, min=8),
    device: Optional[str] = typer.Option(None, help="cuda, cuda:1, cpu (default: cuda if available)"),
    dtype: Optional[str] = typer.Option(None, help="float16, bfloat16, float32"),
    llm_model: str = typer.Option("openai/gpt-4o-mini", help="litellm model string for synopses"),
    llm_api_base: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (vLLM, Ollama…)"),
    metric: str = typer.Option("dreamsim_ensemble", help="dreamsim_<type>, pixel_cosine or none"),
    fallback_metric: Optional[str] = typer.Option(
        None, help="metric to use when DreamSim weights are missing (recorded under its own name)"
    ),
    dreamsim_cache: Optional[str] = typer.Option(None, help="DreamSim weights folder"),
    reference: Optional[str] = typer.Option(None, help="reference from `vstar evaluate` to compare with"),
    gpu_slots: int = typer.Option(1, min=1, help="videos generated at once"),
) -> None:
    """Run the produce-dataset flow (Prefect's ephemeral API unless PREFECT_API_URL is set)."""
    entries = _checked_catalog(catalog, max_frames)  # before Prefect starts or anything is written
    from pydantic import ValidationError

    from flows.produce import ProduceParameters, produce_dataset
    from tasks.generate import GTNSettings
    from tasks.tuning import TuningSettings
    from tasks.clips import check_clip_inputs
    from tasks.tuning import check_tuning
    from tasks.evaluate import EvaluationSettings
    from tasks.jobs import ModelSettings, check_backbones
    from tasks.synopsize import LLMSettings
    from vstar_model.backbones.loading import BackboneNotFound
    from vstar_model.evaluation.dreamsim_weights import DreamSimWeightsMissing

    model_settings = ModelSettings(preset=model, path=model_path, device=device, dtype=dtype, steps=steps,
                                   height=height, width=width)
    try:
        check_backbones(list(entries), model_settings)  # missing weights: a message, not a traceback
    except BackboneNotFound as error:
        _fail(str(error))
    try:
        parameters = dict(
            catalog=catalog,
            output_root=out,
            frames=frames,
            max_frames=max_frames,
            samples_per_prompt=samples,
            seed=seed,
            tar=tar,
            variants=variant,
            gpu_slots=gpu_slots,
            model=model_settings,
            llm=LLMSettings(model=llm_model, api_base=llm_api_base),
            evaluation=EvaluationSettings(metric=metric, fallback=fallback_metric, cache_dir=dreamsim_cache,
                                          reference=reference),
            tar_band_from=tar_band_from,
            gtn=GTNSettings(**_given(reference=gtn_reference, steps=gtn_steps, timestep=gtn_timestep,
                                     learning_rate=gtn_lr, kl_weight=gtn_kl_weight)),
            tuning=TuningSettings(**_given(budget=tuning_budget, level_sets=_level_sets(tuning_levels))),
        )
        checked = ProduceParameters(**parameters)
        check_clip_inputs(list(entries), checked)  # real clips and tar auto: before Prefect starts
        check_tuning(list(entries), checked)
    except (ValueError, ValidationError) as error:
        _fail(str(error))
    try:
        with local_flow_settings(), video_progress(_count_videos(entries, samples, len(variant))):
            run_dir = produce_dataset(**parameters)
    except DreamSimWeightsMissing as error:
        _fail(f"{error}\n(or pass --fallback-metric pixel_cosine / --metric none)")
    except BackboneNotFound as error:
        _fail(str(error))
    typer.echo(run_dir)


@app.command()
def evaluate(
    source: str = typer.Argument(
        ..., help="a run directory (…/runs/<run_id>) to score again, or a folder/bucket of real clips"
    ),
    out: str = typer.Option("./outputs", "--out", help="output root: local path or fsspec URL"),
    name: str = typer.Option("real", help="reference name (references/<name>/<id>/)"),
    frames: int = typer.Option(16, min=2, help="frames each clip is resampled to (match your runs)"),
    metric: str = typer.Option("dreamsim_ensemble", help="dreamsim_<type> or pixel_cosine"),
    fallback_metric: Optional[str] = typer.Option(None, help="metric to use when DreamSim weights are missing"),
    dreamsim_cache: Optional[str] = typer.Option(None, help="DreamSim weights folder"),
    reference: Optional[str] = typer.Option(None, help="with a run directory: a reference to compare with"),
) -> None:
    """Real clips → a versioned reference distribution (pass it to `vstar produce --reference`);
    a run directory → its videos scored again into evaluations/<id>/. Prints the new directory."""
    from flows.evaluate import build_reference, evaluate_run
    from tasks.evaluate import EvaluationSettings
    from vstar_data.storage import exists, join
    from vstar_model.evaluation.dreamsim_weights import DreamSimWeightsMissing

    settings = EvaluationSettings(metric=metric, fallback=fallback_metric, cache_dir=dreamsim_cache,
                                  reference=reference)
    try:
        with local_flow_settings():
            if exists(join(source, "samples.parquet")):
                directory = evaluate_run(run_dir=source, evaluation=settings)
            else:
                directory = build_reference(videos=source, output_root=out, name=name, num_frames=frames,
                                            evaluation=settings)
    except DreamSimWeightsMissing as error:
        _fail(f"{error}\n(or pass --fallback-metric pixel_cosine)")
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    typer.echo(directory)


@app.command()
def analyze(
    out: str = typer.Option("./outputs", "--out", help="output root: local path or fsspec URL"),
    prompt: str = typer.Option("a landscape transitioning from winter to spring", help="prompt of the videos"),
    state: Optional[list[str]] = typer.Option(None, help="synopsis states (repeat); default: the prompt alone"),
    frames: list[int] = typer.Option([16, 48], help="video lengths (repeat)"),
    condition: list[str] = typer.Option(
        ["off", "64D1", "identity@64", "ones@64"],
        help="off, a TAR preset (σ sweep: 64D1, 64D4…) or a map replacement identity@64 / ones@64_32 (repeat)",
    ),
    real_videos: Optional[str] = typer.Option(None, help="folder or bucket of real clips to compare with"),
    model: str = typer.Option("tiny", help="model preset"),
    model_path: Optional[str] = typer.Option(None, help="local directory of the model's weights"),
    steps: Optional[int] = typer.Option(None, min=1, help="denoising steps"),
    device: Optional[str] = typer.Option(None),
    seed: int = typer.Option(0, min=0),
) -> None:
    """Temporal attention of generated (and real) videos per UNet level: how band-like it is under
    each condition. Prints the analysis directory."""
    from flows.analyze import analyze_attention
    from tasks.jobs import ModelSettings

    try:
        with local_flow_settings():
            directory = analyze_attention(
                output_root=out, prompt=prompt, states=state or None, frames=frames, conditions=condition,
                real_videos=real_videos, seed=seed,
                model=ModelSettings(preset=model, path=model_path, steps=steps, device=device),
            )
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    typer.echo(directory)


@app.command()
def curate(
    name: str = typer.Option(..., "--name", help="dataset name: datasets/<name>/<version>/ under the root"),
    root: str = typer.Option("./outputs", "--root", help="output root holding the runs (local path or fsspec URL)"),
    run: Optional[list[str]] = typer.Option(None, "--run", help="run id or run directory (repeat); default: every "
                                                               "finished run in the run index"),
    since: Optional[datetime] = typer.Option(None, help="only runs created at or after (UTC), e.g. 2026-12-01"),
    until: Optional[datetime] = typer.Option(None, help="only runs created before (UTC)"),
    where: Optional[list[str]] = typer.Option(None, "--where", help="condition on any samples column or metric, "
                                                                   "e.g. 'coherence >= 0.8' (repeat: all must hold)"),
    dedup: Optional[float] = typer.Option(None, "--dedup", min=0.0, max=1.0,
                                          help="drop near-duplicates: cosine of mean frame embeddings >= this"),
    keep_best: str = typer.Option("coherence:max", help="<column>:max|min kept among duplicates and per prompt"),
    max_per_prompt: Optional[int] = typer.Option(None, min=1, help="at most this many clips per prompt"),
) -> None:
    """Select clips from runs by metrics and columns, drop near-duplicates, cap per prompt, and
    write a versioned dataset (index.parquet, README.md card, manifest). Prints its directory."""
    from tasks.curate import check_curation
    from vstar_data.curate import CurationError
    from vstar_data.storage import StorageError

    try:  # bad conditions, unknown columns, no runs: one line, before Prefect starts
        check_curation(root, run or [], _utc(since), _utc(until), where or [], dedup, keep_best, max_per_prompt)
    except (CurationError, StorageError, ValueError) as error:
        _fail(str(error))
    from flows.curate import curate_dataset

    try:
        with local_flow_settings():
            directory = curate_dataset(
                name=name, output_root=root, runs=run or [], since=_utc(since), until=_utc(until),
                where=where or [], dedup_threshold=dedup, keep_best=keep_best, max_per_prompt=max_per_prompt,
            )
    except (CurationError, FileNotFoundError, ValueError) as error:
        _fail(str(error))
    typer.echo(directory)


def _utc(moment: Optional[datetime]) -> Optional[datetime]:
    from datetime import timezone

    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


@app.command()
def export(
    dataset: str = typer.Argument(..., help="a curated dataset: datasets/<name>/<version> (or <name> for the newest)"),
    format: str = typer.Option(..., "--format", help="webdataset (tar shards) or hf (Hugging Face Parquet)"),
    out: str = typer.Option(..., "--out", help="an empty folder or bucket prefix (any fsspec URL)"),
    shard_size: int = typer.Option(1000, min=1, help="at most this many clips per shard / Parquet file"),
    shard_bytes: Optional[str] = typer.Option(None, help="and at most this many bytes, e.g. 512MB, 2GB"),
) -> None:
    """Export a curated dataset as WebDataset shards or a Hugging Face datasets layout (videos
    checked against their sha256). Prints each file written."""
    from rich.progress import Progress

    from vstar_data.export import ExportError, export_hf, export_webdataset
    from vstar_data.storage import StorageError

    writers = {"webdataset": export_webdataset, "hf": export_hf}
    if format not in writers:
        _fail(f"unknown format {format!r}; expected one of {', '.join(writers)}")
    try:
        max_bytes = _parse_bytes(shard_bytes) if shard_bytes else None
        with Progress(transient=True) as progress:
            bar = progress.add_task("clips", total=None)
            files = writers[format](dataset, out, max_count=shard_size, max_bytes=max_bytes,
                                    progress=lambda done, total: progress.update(bar, completed=done, total=total))
    except (ExportError, StorageError, FileNotFoundError, ValueError) as error:
        _fail(str(error))
    for url in files:
        typer.echo(url)


def _parse_bytes(text: str) -> int:
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read a size from {text!r}: e.g. 512MB, 2GB, 100000")
    return int(float(match[1]) * 1024 ** " KMGT".index(match[2].upper() or " "))


@catalog_app.command("validate")
def catalog_validate(path: str) -> None:
    """Check a catalog; every problem is listed with file, row and field."""
    entries = _checked_catalog(path)
    typer.echo(f"{path}: {len(entries.entries)} entries OK")


@runs_app.command("list")
def runs_list(root: str) -> None:
    """The runs under an output root, oldest first."""
    from vstar_data.manifest import list_runs

    table = list_runs(root)
    if table.num_rows == 0:
        typer.echo(f"no runs under {root}")
        return
    for row in table.to_pylist():
        typer.echo(f"{row['run_id']}  {row['status']:<8} {row['num_samples']:>4} videos "
                   f"{row['num_failed']:>3} failed  {row['catalog']}")


def main() -> None:  # pragma: no cover
    sys.exit(app())
