"""The ``vstar`` command: produce datasets, validate catalogs, list runs."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
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
        None, help="TAR preset: UNet levels (64D1, 64D4, 64D1_32D8), DiT blocks (b0-9D1s0.5), off "
                   "(default: the model's: 64D1 for UNets)"
    ),
    variant: list[str] = typer.Option(
        ["vstar"], help="ablation variant(s), same seeds: vstar (VSP+TAR), tar, vsp, baseline; with RIFLEx (Wan): "
                        "riflex, tar_riflex, vstar_riflex; repeat for several"
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
) -> None:
    """Run the produce-dataset flow (Prefect's ephemeral API unless PREFECT_API_URL is set)."""
    entries = _checked_catalog(catalog, max_frames)  # before Prefect starts or anything is written
    from flows.produce import produce_dataset
    from tasks.evaluate import EvaluationSettings
    from tasks.jobs import ModelSettings, check_backbones, check_entries
    from tasks.synopsize import LLMSettings
    from vstar_model.backbones.loading import BackboneNotFound
    from vstar_model.evaluation.dreamsim_weights import DreamSimWeightsMissing

    model_settings = ModelSettings(preset=model, path=model_path, device=device, dtype=dtype, steps=steps,
                                   height=height, width=width, flow_shift=flow_shift)
    try:
        check_entries(list(entries), frames=frames, tar=tar, variants=variant, model=model_settings)
        check_backbones(list(entries), model_settings)  # missing weights: a message, not a traceback
    except (BackboneNotFound, ValueError) as error:
        _fail(str(error))
    try:
        with local_flow_settings(), video_progress(_count_videos(entries, samples, len(variant))):
            run_dir = produce_dataset(
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
            )
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
