"""Turn catalog entries into video synopses: the catalog's own, the LLM's (cached), or the prompt."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict

from vstar_data.catalog import CatalogEntry
from vstar_data.keys import synopsis_key
from vstar_data.runs import CachePaths
from tasks.retries import retry_unless
from vstar_data.storage import StorageError, exists, read_bytes, write_bytes_atomic


class LLMSettings(BaseModel):
    """How synopses are made when a catalog entry brings none."""

    model_config = ConfigDict(extra="forbid")

    model: str = "openai/gpt-4o-mini"
    api_base: str | None = None
    api_key_env: str | None = None
    max_states: int = 8
    timeout: float = 60.0
    max_retries: int = 4
    concurrency: int = 4
    on_failure: str = "fallback"  # "fallback": plain prompt (VSP off) for that entry; "fail": fail it


class SynopsisFailed(RuntimeError):
    """The LLM could not make a synopsis and the run is configured to fail such entries."""


def synopsis_row(entry: CatalogEntry, states: list[str], source: str, *, llm: LLMSettings | None,
                 key: str | None, error: str | None = None, latency: float | None = None) -> dict:
    from vstar_model.vsp.synopsis import TEMPLATE_VERSION

    return {
        "catalog_id": entry.id,
        "prompt": entry.prompt,
        "states": states,
        "source": source,
        "llm_model": llm.model if llm and source in ("llm", "fallback") else None,
        "template_version": TEMPLATE_VERSION if source in ("llm", "fallback") else None,
        "synopsis_key": key,
        "error": error,
        "latency_seconds": latency,
    }


def failed_synopsis_row(entry: CatalogEntry, state, *, llm: LLMSettings) -> dict:
    """The synopses row of an entry left out because its synopsis failed (``on_failure="fail"``)."""
    from tasks.jobs import failure_reason

    return synopsis_row(entry, [entry.prompt], "failed", llm=llm, key=None, error=failure_reason(state))


def make_synopsis(entry: CatalogEntry, *, vsp: bool, llm: LLMSettings, num_frames: int,
                  output_root: str) -> dict:
    """The synopsis row of ``entry`` (without run id): catalog states, cached or fresh LLM states,
    or the plain prompt when VSP is off or the LLM failed and ``on_failure`` is "fallback"."""
    if not vsp:
        return synopsis_row(entry, [entry.prompt], "none", llm=None, key=None)
    if entry.synopsis:
        return synopsis_row(entry, list(entry.synopsis), "catalog", llm=None, key=None)
    from vstar_model.vsp.llm import synopsize
    from vstar_model.vsp.synopsis import TEMPLATE_VERSION, SynopsisError, validate_states

    key = synopsis_key(entry.prompt, llm.model, TEMPLATE_VERSION, llm.max_states)
    cached = CachePaths(output_root).synopsis(key)
    latency = None  # of the LLM call; none for a cached synopsis
    try:
        if exists(cached):
            states = list(validate_states(json.loads(read_bytes(cached))["states"], max_states=llm.max_states,
                                          num_frames=num_frames))
        else:
            synopsis = synopsize(
                entry.prompt, model=llm.model, max_states=llm.max_states, num_frames=num_frames,
                api_base=llm.api_base, api_key_env=llm.api_key_env, timeout=llm.timeout,
                max_retries=llm.max_retries, max_concurrency=llm.concurrency,
            )
            states, latency = list(synopsis.states), synopsis.latency_seconds
            write_bytes_atomic(cached, json.dumps({"prompt": entry.prompt, "states": states}).encode())
    except SynopsisError as error:
        if llm.on_failure == "fail":
            raise SynopsisFailed(f"{entry.id}: {error}") from None
        return synopsis_row(entry, [entry.prompt], "fallback", llm=llm, key=key, error=str(error),
                            latency=getattr(error, "latency_seconds", None))
    return synopsis_row(entry, states, "llm", llm=llm, key=key, latency=latency)


@task(task_run_name="synopsize-{entry.id}", retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_unless(SynopsisFailed, StorageError))
def synopsize_entry(entry: CatalogEntry, vsp: bool, llm: LLMSettings, num_frames: int,
                    output_root: str, concurrency_limit: str | None = None) -> dict:
    """Thin Prefect task around :func:`make_synopsis`, holding one slot of the server's global LLM
    limit while it calls (all runs); this process's own bound is the LLM client's."""
    from prefect.concurrency.sync import concurrency

    if concurrency_limit and vsp and not entry.synopsis:
        with concurrency(concurrency_limit, occupy=1, strict=True):
            row = make_synopsis(entry, vsp=vsp, llm=llm, num_frames=num_frames, output_root=output_root)
    else:
        row = make_synopsis(entry, vsp=vsp, llm=llm, num_frames=num_frames, output_root=output_root)
    logger = get_run_logger()
    if row["source"] == "fallback":  # in the flow run's logs, so the UI shows it too
        logger.warning("%s: no LLM synopsis, the video is made from the plain prompt (VSP off): %s",
                       entry.id, row["error"])
    else:
        logger.info("%s: %d states (%s)", entry.id, len(row["states"]), row["source"])
    return row
