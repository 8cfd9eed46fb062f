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
# Prefect gives its ephemeral API server 20 s to start, which a loaded machine exceeds (seen at load
# average 7-9 on 2 cores); a user's own setting wins.
EPHEMERAL_STARTUP_TIMEOUT_S = 180
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT_S))

# The ephemeral server builds task runs from the client's events, one database write per event
# (its TaskRunRecorder), and is stopped as soon as the flow returns: a write still running then is
# cancelled and logged at ERROR with a CancelledError traceback ("Error flushing 1 events") on the
# stderr of a successful run, and that task run's last state is lost anyway. The CLI's ephemeral
# server does without those event-built task-run records; flow runs, their states, logs and
# artifacts are written through the API directly and stay. A real server keeps its own settings.
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED", "false")

# Exit codes a scheduler can act on (README, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # the run did not finish: Prefect's API would not start, storage failed mid-run, ...
EXIT_REFUSED = 2  # nothing was run: bad catalog or option, missing weights, unusable output root
EXIT_PARTIAL = 3  # the run finished, but some videos or catalog entries failed
EXIT_DEGRADED = 4  # the run finished with every video, but some synopses fell back to the plain prompt
EXIT_CODE_OF_STATUS = {"ok": EXIT_OK, "partial": EXIT_PARTIAL, "degraded": EXIT_DEGRADED}

app = typer.Typer(help="Long, dynamic text-to-video datasets with VSTAR, orchestrated by Prefect.",
                  no_args_is_help=True, add_completion=False)
catalog_app = typer.Typer(help="Prompt catalogs.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs under an output root.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(runs_app, name="runs")


def _fail(message: str, code: int = EXIT_REFUSED) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def start_prefect_api() -> None:
    """Make sure a Prefect API answers before any flow starts, so that a failure is one line.

    Without ``PREFECT_API_URL`` this starts Prefect's ephemeral server now (the flow then reuses
    it); with it, the server there must answer its health check.
    """
    import httpx
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if api_url := PREFECT_API_URL.value():
        try:
            httpx.get(f"{api_url.rstrip('/')}/health", timeout=30).raise_for_status()
        except httpx.HTTPError as error:
            _fail(f"the Prefect API at PREFECT_API_URL={api_url} does not answer ({type(error).__name__}: "
                  f"{error}); start the server, or unset PREFECT_API_URL to use an ephemeral one", EXIT_FAILED)
        return
    from prefect.server.api.server import SubprocessASGIServer

    try:
        SubprocessASGIServer().start()
    except Exception as error:  # Prefect raises RuntimeError on its timeout, httpx errors on slow answers
        timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        reason = str(error).split(". ", 1)[0].strip().rstrip(".")
        _fail(f"Prefect's ephemeral API server did not start within {timeout} s ({type(error).__name__}: {reason}); "
              "on a busy machine set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher, or PREFECT_API_URL "
              "to a running Prefect server", EXIT_FAILED)


def _storage_options(pairs: list[str] | None) -> dict:
    from vstar_data.storage import check_storage_options, parse_storage_option

    try:
        return check_storage_options(dict(parse_storage_option(pair) for pair in pairs or ()))
    except ValueError as error:
        _fail(str(error))


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
    model: str = typer.Option(
        "tiny", help="model preset: tiny, modelscope, zeroscope, videocrafter2, animatediff, tiny-wan, wan2.1-1.3b, "
                     "wan2.1-14b"
    ),
    model_path: Optional[str] = typer.Option(None, help="local directory of the model's weights"),
    frames: Optional[int] = typer.Option(None, min=1, help="frames per video (default: the preset's)"),
    max_frames: int = typer.Option(256, min=1, help="largest frames a catalog entry may ask for"),
    samples: int = typer.Option(1, min=1, help="videos per prompt (seeds seed, seed+1, …)"),
    seed: int = typer.Option(0, min=0),
    tar: Optional[str] = typer.Option(
        None, help="TAR preset: UNet levels (64D1, 64D4, 64D1_32D8), DiT blocks (b0-9D1s0.5), off, or auto: σ "
                   "searched per entry (UNets, needs --reference) (default: the model's: 64D1 for UNets)"
    ),
    variant: list[str] = typer.Option(
        ["vstar"], help="ablation variant(s), same seeds: vstar (VSP+TAR), tar, vsp, baseline; gtn, gtn+vstar "
        "(UNets: noise fitted to --gtn-reference first); with RIFLEx (Wan): riflex, tar_riflex, vstar_riflex; "
        "repeat for several"
    ),
    tar_band_from: Optional[str] = typer.Option(
        None, "--tar-band-from",
        help="real clip whose frame similarity (with --metric) is ΔA at the TAR levels or DiT blocks",
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
    flow_shift: Optional[float] = typer.Option(None, help="flow-matching shift (Wan; default 3.0, 5.0 suits 720P)"),
    llm_model: str = typer.Option("openai/gpt-4o-mini", help="litellm model string for synopses"),
    llm_api_base: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (vLLM, Ollama…)"),
    metric: str = typer.Option("dreamsim_ensemble", help="dreamsim_<type>, pixel_cosine or none"),
    fallback_metric: Optional[str] = typer.Option(
        None, help="metric to use when DreamSim weights are missing (recorded under its own name)"
    ),
    dreamsim_cache: Optional[str] = typer.Option(None, help="DreamSim weights folder"),
    reference: Optional[str] = typer.Option(None, help="reference from `vstar evaluate` to compare with"),
    gpu_slots: int = typer.Option(1, min=1, help="videos generated at once"),
    llm_timeout: float = typer.Option(60.0, min=0.1, help="seconds per LLM call"),
    llm_retries: int = typer.Option(4, min=0, help="retries of an LLM call after a network/server fault"),
    llm_concurrency: int = typer.Option(4, min=1, help="LLM calls in flight at once (all runs, against a server)"),
    llm_on_failure: str = typer.Option(
        "fallback", help="when an entry gets no synopsis: fallback (its plain prompt, VSP off) or fail (leave it out)"
    ),
    llm_api_key_env: Optional[str] = typer.Option(
        None, help="environment variable holding the LLM key, when litellm does not read it itself"
    ),
    storage_option: Optional[list[str]] = typer.Option(
        None, help="fsspec option KEY=VALUE for --out's storage, e.g. endpoint_url=http://127.0.0.1:9000 (repeat)"
    ),
) -> None:
    """Run the produce-dataset flow (Prefect's ephemeral API unless PREFECT_API_URL is set).

    Prints the run directory, and a one-line summary on stderr. Exit code: 0 ok, 3 partial (some
    videos or entries failed), 4 degraded (some synopses fell back to the plain prompt), 2 nothing
    run (bad input), 1 failed.
    """
    from vstar_data.storage import StorageError, check_writable, using_storage_options

    options = _storage_options(storage_option)
    if llm_on_failure not in ("fallback", "fail"):
        _fail(f"--llm-on-failure must be fallback or fail, got {llm_on_failure!r}")
    with using_storage_options(out, options):
        entries = _checked_catalog(catalog, max_frames)  # before Prefect starts or anything is written
        from pydantic import ValidationError

        from flows.produce import ProduceParameters, produce_dataset
        from tasks.clips import check_clip_inputs
        from tasks.evaluate import EvaluationSettings
        from tasks.generate import GTNSettings
        from tasks.jobs import ModelSettings, check_backbones, check_entries
        from tasks.synopsize import LLMSettings
        from tasks.tuning import TuningSettings, check_tuning
        from vstar_model.backbones.loading import BackboneNotFound
        from vstar_model.evaluation.dreamsim_weights import DreamSimWeightsMissing

        model_settings = ModelSettings(preset=model, path=model_path, device=device, dtype=dtype, steps=steps,
                                       height=height, width=width, flow_shift=flow_shift)
        try:
            check_entries(list(entries), frames=frames, tar=tar, variants=variant,
                          model=model_settings)  # what the backbone cannot make
            check_backbones(list(entries), model_settings)  # missing weights: a message, not a traceback
        except (BackboneNotFound, ValueError) as error:
            _fail(str(error))
        try:
            parameters = dict(
                catalog=catalog,
                output_root=out,
                storage_options=options,
                frames=frames,
                max_frames=max_frames,
                samples_per_prompt=samples,
                seed=seed,
                tar=tar,
                variants=variant,
                gpu_slots=gpu_slots,
                model=model_settings,
                llm=LLMSettings(model=llm_model, api_base=llm_api_base, api_key_env=llm_api_key_env,
                                timeout=llm_timeout, max_retries=llm_retries, concurrency=llm_concurrency,
                                on_failure=llm_on_failure),
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
            check_writable(out)
        except StorageError as error:
            _fail(f"output root {out} is not usable: {error}")
        start_prefect_api()
        try:
            with local_flow_settings(), video_progress(_count_videos(entries, samples, len(variant))):
                run_dir = produce_dataset(**parameters)
        except DreamSimWeightsMissing as error:
            _fail(str(error))
        except BackboneNotFound as error:
            _fail(str(error))
        except StorageError as error:
            _fail(f"the run failed: {error}", EXIT_FAILED)
        typer.echo(run_dir)
        raise typer.Exit(_summarise(out, run_dir))


def _summarise(output_root: str, run_dir: str) -> int:
    """Print the run's one-line summary on stderr; its exit code."""
    from vstar_data.runs import RunPaths
    from vstar_data.schemas import read_table

    [run] = read_table(RunPaths(output_root, run_dir.rstrip("/").rsplit("/", 1)[-1]).index_entry).to_pylist()
    made = run["num_samples"] - run["num_failed"]
    typer.echo(f"run {run['run_id']}: {run['status']}: {made} videos made, {run['num_failed']} failed; "
               f"{run['num_synopses_fallback']} synopses fell back to the plain prompt, "
               f"{run['num_synopses_failed']} entries failed", err=True)
    return EXIT_CODE_OF_STATUS.get(run["status"], EXIT_FAILED)


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
    start_prefect_api()
    try:
        with local_flow_settings():
            if exists(join(source, "samples.parquet")):
                directory = evaluate_run(run_dir=source, evaluation=settings)
            else:
                directory = build_reference(videos=source, output_root=out, name=name, num_frames=frames,
                                            evaluation=settings)
    except DreamSimWeightsMissing as error:
        _fail(str(error))
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    typer.echo(directory)


@app.command()
def analyze(
    out: str = typer.Option("./outputs", "--out", help="output root: local path or fsspec URL"),
    prompt: str = typer.Option("a landscape transitioning from winter to spring", help="prompt of the videos"),
    state: Optional[list[str]] = typer.Option(None, help="synopsis states (repeat); default: the prompt alone"),
    frames: Optional[list[int]] = typer.Option(None, help="video lengths (repeat); default 16 and 48 (Wan: 81 and 161, "
                                               "tiny-wan 17 and 33)"),
    condition: Optional[list[str]] = typer.Option(
        None,
        help="off, a TAR preset (σ sweep: 64D1, 64D4…; Wan: b0-9D1s0.5…) or, for UNets, a map replacement "
        "identity@64 / ones@64_32 (repeat); default: off, 64D1, identity@64, ones@64 (Wan: off and its default)",
    ),
    real_videos: Optional[str] = typer.Option(None, help="folder or bucket of real clips to compare with"),
    model: str = typer.Option("tiny", help="model preset"),
    model_path: Optional[str] = typer.Option(None, help="local directory of the model's weights"),
    steps: Optional[int] = typer.Option(None, min=1, help="denoising steps"),
    device: Optional[str] = typer.Option(None),
    seed: int = typer.Option(0, min=0),
) -> None:
    """Temporal attention of generated (and real) videos per UNet level (Wan: per transformer block):
    how band-like it is under each condition. Prints the analysis directory."""
    from flows.analyze import analyze_attention
    from tasks.analysis import analysis_settings
    from tasks.jobs import ModelSettings

    start_prefect_api()
    try:
        settings = ModelSettings(preset=model, path=model_path, steps=steps, device=device)
        frames, condition = analysis_settings(frames, condition, settings)  # before Prefect starts
        with local_flow_settings():
            directory = analyze_attention(
                output_root=out, prompt=prompt, states=state or None, frames=frames, conditions=condition,
                real_videos=real_videos, seed=seed, model=settings,
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
def runs_list(
    root: str,
    all_runs: bool = typer.Option(False, "--all", help="also run directories without a manifest (incomplete)"),
    storage_option: Optional[list[str]] = typer.Option(None, help="fsspec option KEY=VALUE for ROOT (repeat)"),
) -> None:
    """The runs under an output root, oldest first."""
    from vstar_data.manifest import incomplete_runs, list_runs
    from vstar_data.storage import StorageError, using_storage_options

    lines = []
    try:
        with using_storage_options(root, _storage_options(storage_option)):
            for row in list_runs(root).to_pylist():
                lines.append((row["run_id"], f"{row['run_id']}  {row['status']:<10} {row['num_samples']:>4} videos "
                                             f"{row['num_failed']:>3} failed  {row['catalog']}"))
            if all_runs:
                for run in incomplete_runs(root):
                    lines.append((run.run_id, f"{run.run_id}  {'incomplete':<10} {run.files:>4} files, "
                                              f"{_size(run.size)}, last written {run.last_written:%Y-%m-%d %H:%M:%S} UTC"))
    except StorageError as error:
        _fail(str(error), EXIT_FAILED)
    if not lines:
        typer.echo(f"no runs under {root}")
    for _, line in sorted(lines):
        typer.echo(line)


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _duration_s(text: str) -> float:
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        _fail(f"--older-than takes a number and a unit (s, m, h, d), e.g. 24h; got {text!r}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@runs_app.command("clean")
def runs_clean(
    root: str,
    older_than: str = typer.Option("24h", help="age since the run directory's last write: 30m, 24h, 7d"),
    yes: bool = typer.Option(False, "--yes", help="delete (without it, only print what would be deleted)"),
    storage_option: Optional[list[str]] = typer.Option(None, help="fsspec option KEY=VALUE for ROOT (repeat)"),
) -> None:
    """Delete incomplete run directories (no manifest: killed or failed runs) older than --older-than.

    A dry run unless --yes. Finished runs and the cache are never touched.
    """
    from datetime import UTC, datetime, timedelta

    from vstar_data.manifest import incomplete_runs
    from vstar_data.storage import StorageError, remove, using_storage_options

    cutoff = datetime.now(UTC) - timedelta(seconds=_duration_s(older_than))
    try:
        with using_storage_options(root, _storage_options(storage_option)):
            stale = [run for run in incomplete_runs(root) if run.last_written < cutoff]
            for run in stale:
                what = f"{run.run_dir} (incomplete, {run.files} files, {_size(run.size)}, last written " \
                       f"{run.last_written:%Y-%m-%d %H:%M:%S} UTC)"
                if yes:
                    remove(run.run_dir, recursive=True)
                    typer.echo(f"deleted {what}")
                else:
                    typer.echo(f"would delete {what}")
    except StorageError as error:
        _fail(str(error), EXIT_FAILED)
    if not stale:
        typer.echo(f"no incomplete runs older than {older_than} under {root}")
    elif not yes:
        typer.echo(f"{len(stale)} incomplete run(s); run again with --yes to delete them")


@runs_app.command("verify")
def runs_verify(
    run_dir: str,
    storage_option: Optional[list[str]] = typer.Option(None, help="fsspec option KEY=VALUE for RUN_DIR (repeat)"),
) -> None:
    """Check every file of a run against the size and SHA-256 in its manifest; exit 1 on any problem."""
    from vstar_data.manifest import MANIFEST_NAME, read_manifest, verify_manifest
    from vstar_data.storage import StorageError, exists, join, using_storage_options

    try:
        with using_storage_options(run_dir, _storage_options(storage_option)):
            if not exists(join(run_dir, MANIFEST_NAME)):
                _fail(f"{run_dir}: no {MANIFEST_NAME}: the run is incomplete (killed, failed or still running)", 1)
            problems = verify_manifest(run_dir)
            listed = len(read_manifest(run_dir)["files"])
    except StorageError as error:
        _fail(str(error), EXIT_FAILED)
    for problem in problems:
        typer.secho(f"{run_dir}: {problem}", fg=typer.colors.RED, err=True)
    if problems:
        _fail(f"{run_dir}: {len(problems)} problem(s) in {listed} files", 1)
    typer.echo(f"{run_dir}: all {listed} files match the manifest")


def main() -> None:  # pragma: no cover
    sys.exit(app())
