"""Prefect global concurrency limits: they limit nothing unless they exist, so the flow makes them."""

from __future__ import annotations

from prefect.client.orchestration import get_client


def ensure_concurrency_limit(name: str, slots: int) -> str:
    """Create or resize the global concurrency limit ``name`` to ``slots``; returns its name."""
    if slots < 1:
        raise ValueError(f"concurrency limit {name!r} needs at least one slot, got {slots}")
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots)
    return name
