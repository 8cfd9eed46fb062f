"""Per-process caches of loaded models: one load per worker process, reused by every task there."""

from __future__ import annotations

import threading

from vstar_model.backbones.loading import VideoModel, load_backbone

_lock = threading.Lock()
_backbones: dict[tuple, VideoModel] = {}


def cached_backbone(preset: str, *, path: str | None, device: str | None, dtype: str | None) -> VideoModel:
    """The backbone for (preset, path, device, dtype), loaded on first use in this process."""
    key = (preset, path, device, dtype)
    with _lock:  # tasks run in threads: two first uses must not load twice
        if key not in _backbones:
            _backbones[key] = load_backbone(preset, path=path, device=device, dtype=dtype)
        return _backbones[key]


_embedders: dict[tuple, object] = {}


def cached_embedder(metric: str, *, fallback: str | None, cache_dir: str | None, device: str | None):
    """The frame embedder for evaluation (DreamSim or an explicitly configured fallback), per process."""
    from vstar_model.evaluation.similarity import build_embedder

    key = (metric, fallback, cache_dir, device)
    with _lock:
        if key not in _embedders:
            _embedders[key] = build_embedder(
                metric, fallback=fallback, cache_dir=cache_dir, device=device or "cpu"
            )
        return _embedders[key]
