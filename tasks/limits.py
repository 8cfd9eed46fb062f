"""Prefect global concurrency limits: they limit nothing unless they exist, so the flow makes them."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL


def ensure_concurrency_limit(name: str, slots: int) -> str | None:
    """Create or resize the global concurrency limit ``name`` to ``slots``; returns its name.

    Returns None (no limit) in Prefect's ephemeral mode: nothing there expires the lease of a
    process that died, so one killed ``vstar produce`` would hold its slot for ever and every later
    run would wait on it. A single process is bounded by its model's lock instead.
    """
    if slots < 1:
        raise ValueError(f"concurrency limit {name!r} needs at least one slot, got {slots}")
    if not PREFECT_API_URL.value():
        return None
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots)
    return name
