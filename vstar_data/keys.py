"""Deterministic content keys for resuming: equal inputs give equal keys, across processes.

A key is the first 16 hex digits (64 bits) of the SHA-256 of the canonical JSON of a
namespaced input mapping (sorted keys, no whitespace, UTF-8). The namespace keeps a synopsis
key from ever equalling a sample key built from the same values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

KEY_HEX_DIGITS = 16


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys and no whitespace; tuples become lists.

    Raises:
        ValueError: ``value`` holds NaN/infinity or something JSON cannot represent
            (sets, bytes, paths, tensors, ...): convert it to a plain value first.
    """
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot build a content key from {value!r}: {error}") from error


def content_key(namespace: str, inputs: Mapping[str, Any]) -> str:
    """Short hex SHA-256 of ``{"namespace": namespace, "inputs": inputs}`` in canonical JSON."""
    if not namespace:
        raise ValueError("content_key needs a non-empty namespace")
    payload = canonical_json({"namespace": namespace, "inputs": dict(inputs)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_HEX_DIGITS]


def synopsis_key(prompt: str, llm_model: str, template_version: str, max_states: int) -> str:
    """Key of the synopsis an LLM makes for ``prompt``: the same prompt, model, instruction
    template and state limit reuse the cached synopsis."""
    return content_key(
        "synopsis",
        {
            "prompt": prompt,
            "llm_model": llm_model,
            "template_version": template_version,
            "max_states": max_states,
        },
    )


def sample_key(**inputs: Any) -> str:
    """Key of one generated video from every input that determines its pixels.

    Pass all of them by name, e.g. ``prompt``, ``states``, ``negative_prompt``, ``seed``,
    ``num_frames``, ``height``, ``width``, ``num_inference_steps``, ``guidance_scale``,
    ``model_preset``, ``model_revision``, ``tar``, ``vsp``, ``fps`` and ``device``; leaving one
    out means runs differing only in it share (wrongly) one cached video.
    """
    if not inputs:
        raise ValueError("sample_key needs the inputs that determine the video")
    return content_key("sample", inputs)
