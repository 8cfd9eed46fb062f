"""LLM calls for Video Synopsis Prompting, through litellm only.

Any litellm model string works: ``gpt-4o-mini``, ``anthropic/...``, ``gemini/...``,
``ollama/...``, or ``openai/<name>`` with ``api_base`` pointing at any OpenAI-compatible server
(vLLM, llama.cpp, LM Studio). Retries are ours, not litellm's or the OpenAI SDK's: exponential
backoff with jitter (honouring ``Retry-After``) on timeouts, 429, 5xx and connection errors; an
answer that is unusable by its content (a refusal, no states, too many, a state too long, prose
instead of JSON) is asked again once, saying what was wrong, and then fails; authentication and
other request errors, and answers that quote a secret, fail at once. Calls sharing a
``max_concurrency`` share one process-wide bound on the calls in flight.

API keys come from the environment (litellm's own variables such as ``OPENAI_API_KEY``, or the
variable named by ``api_key_env``). Every error message, log line and stored answer goes through
:func:`redact` first, and errors are raised without their litellm cause attached, so a key can
never surface in a traceback, a log or an artifact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

from vstar_model.vsp.synopsis import (
    Synopsis,
    SynopsisError,
    build_messages,
    excerpt,
    parse_synopsis,
    states_json_schema,
)

logger = logging.getLogger(__name__)

# Failures that a second call cannot mend: the answer quoting a secret is one of them (asking
# again would invite it again).
NON_RETRYABLE_KINDS = frozenset({"auth", "bad_request", "error", "secret_echo"})
# Answers wrong by their content: asked again at most CONTENT_REASKS times, without backoff (the
# server answered; it is not overloaded). Everything else (timeouts, rate limits, server and
# connection errors) is retried up to max_retries times with backoff.
CONTENT_KINDS = frozenset(
    {"empty", "refusal", "malformed", "no_states", "too_many_states", "not_one_sentence", "state_too_long"}
)
CONTENT_REASKS = 1

# Environment variables whose values are secrets: a name with one of these words between
# underscores (OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AZURE_AD_TOKEN,
# WATSONX_APIKEY, PREFECT_API_AUTH_STRING...), covering what litellm's providers read.
_SECRET_NAME_WORDS = frozenset(
    {"KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS", "JWT", "AUTH"}
)
_MIN_SECRET_CHARS = (
    8  # shorter env values ("1", "true") are settings, and replacing them would garble text
)
# A run of this many characters of a secret counts as the secret (an echo without its "sk-"
# prefix, a key split across two lines); shorter secrets count only whole.
_MIN_SECRET_PIECE = 10
_SECRET_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),  # OpenAI, Anthropic, OpenRouter... keys
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),  # Google keys
    re.compile(r"\b[Bb]earer\s+[A-Za-z0-9._~+/\-]{8,}=*"),  # echoed Authorization headers
)
_REDACTED = "[REDACTED]"
# Arguments that synopsize sets itself; completion_options may not override them.
_RESERVED_OPTIONS = frozenset(
    {
        "model",
        "messages",
        "api_base",
        "api_key",
        "timeout",
        "num_retries",
        "max_retries",
        "response_format",
    }
)


def secret_values(secrets: Iterable[str | None] = ()) -> set[str]:
    """The values of every secret environment variable (see ``_SECRET_NAME_WORDS``) and ``secrets``."""
    values = {
        value
        for name, value in os.environ.items()
        if _SECRET_NAME_WORDS & set(name.upper().split("_")) and len(value) >= _MIN_SECRET_CHARS
    }
    values.update(s for s in secrets if s)
    return values


def _secret_spans(text: str, secret: str) -> list[tuple[int, int]]:
    """Where ``text`` holds ``secret`` or a run of ``_MIN_SECRET_PIECE`` of its characters."""
    if len(secret) <= _MIN_SECRET_PIECE:
        return [(m.start(), m.end()) for m in re.finditer(re.escape(secret), text)]
    pieces = {secret[i : i + _MIN_SECRET_PIECE] for i in range(len(secret) - _MIN_SECRET_PIECE + 1)}
    return [
        (i, i + _MIN_SECRET_PIECE)
        for i in range(len(text) - _MIN_SECRET_PIECE + 1)
        if text[i : i + _MIN_SECRET_PIECE] in pieces
    ]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with secrets replaced by ``[REDACTED]``.

    Removes the values of secret environment variables (names with ``KEY``, ``TOKEN``,
    ``SECRET``, ``PASSWORD``, ``CREDENTIALS``... between underscores) and the given ``secrets``,
    wherever ``text`` holds one whole or a run of 10 or more of its characters, and anything
    shaped like a key (``sk-...``, ``AIza...``, ``Bearer ...``).
    """
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_REDACTED, text)
    spans = sorted(span for value in secret_values(secrets) for span in _secret_spans(text, value))
    if spans:
        merged = [list(spans[0])]
        for start, end in spans[1:]:
            if start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        for start, end in reversed(merged):
            text = text[:start] + _REDACTED + text[end:]
    return text


_slots_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


def call_slots(limit: int) -> threading.BoundedSemaphore:
    """The process-wide bound of ``limit`` LLM calls in flight, shared by every call (any thread,
    any flow run) made with the same limit."""
    if limit < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {limit}")
    with _slots_lock:
        return _slots.setdefault(limit, threading.BoundedSemaphore(limit))


def synopsize(
    prompt: str,
    *,
    model: str,
    max_states: int = 8,
    num_frames: int | None = None,
    api_base: str | None = None,
    api_key_env: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 4,
    backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
    max_concurrency: int | None = None,
    completion_options: Mapping[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Synopsis:
    """Ask ``model`` for the video synopsis of ``prompt``: 1..min(max_states, num_frames) states.

    Args:
        prompt: the text-to-video prompt describing a change over time.
        model: a litellm model string.
        max_states: most states accepted (and asked for).
        num_frames: frames of the video, when known: a synopsis never has more states.
        api_base: the server's base URL, for self-hosted or OpenAI-compatible endpoints.
        api_key_env: name of the environment variable holding the key, when it is not one that
            litellm reads by itself.
        timeout: seconds per attempt.
        max_retries: retries after a network or server fault (so up to ``max_retries + 1`` calls,
            plus ``CONTENT_REASKS`` for unusable answers).
        backoff_s, max_backoff_s: the wait before retry ``i`` is ``backoff_s * 2**i`` capped at
            ``max_backoff_s``, times a random factor in [0.5, 1], or the server's ``Retry-After``
            when longer (still capped).
        max_concurrency: at most this many calls in flight in this process, over every
            ``synopsize`` with the same value (:func:`call_slots`); a call holds its slot only
            while it waits for the server, not while it backs off.
        completion_options: further ``litellm.completion`` arguments (``temperature``,
            ``extra_headers``, ``mock_response``...).
        sleep: how to wait between attempts (tests pass a recorder).

    Returns:
        The synopsis, its ``latency_seconds`` the duration of the call that gave it.

    Raises:
        SynopsisError: with ``kind`` and a reason free of keys, once retries are spent or at once
            for a non-retryable failure; its ``latency_seconds`` is the time spent in calls.
        ValueError: for invalid arguments, before any call.
    """
    messages = build_messages(prompt, max_states=max_states)
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    options = dict(completion_options or {})
    if reserved := sorted(_RESERVED_OPTIONS & options.keys()):
        raise ValueError(
            f"completion_options may not set {reserved}: use synopsize's own arguments "
            "(keys only through the environment, see api_key_env)"
        )
    api_key = _key_from_env(api_key_env) if api_key_env else None
    secrets = (api_key,)
    slots = call_slots(max_concurrency) if max_concurrency is not None else contextlib.nullcontext()

    litellm = _import_litellm()
    request: dict[str, Any] = dict(
        model=model,
        messages=messages,
        api_base=api_base,
        timeout=timeout,
        # No retries by litellm, nor by the provider SDK it hands this to (the OpenAI SDK would
        # retry twice by default): ours below are the only ones.
        num_retries=0,
        drop_params=True,  # a provider lacking an optional parameter ignores it, not fails
        **options,
    )
    if api_key is not None:
        request["api_key"] = api_key
    if (response_format := _response_format(litellm, model)) is not None:
        request["response_format"] = response_format

    retries = reasks = 0
    in_calls = 0.0
    while True:
        response = None
        try:
            with slots:
                started = time.perf_counter()
                try:
                    response = litellm.completion(**request)
                finally:
                    latency = time.perf_counter() - started
                    in_calls += latency
            synopsis = _synopsis_from_response(
                response,
                prompt=prompt,
                model=model,
                max_states=max_states,
                num_frames=num_frames,
                secrets=secrets,
            )
            return dataclasses.replace(synopsis, latency_seconds=latency)
        except Exception as exc:  # every failure is classified, redacted and re-raised
            error = exc if isinstance(exc, SynopsisError) else _call_error(litellm, exc)
            reason = redact(str(error), secrets)
            calls = retries + reasks + 1
            content = error.kind in CONTENT_KINDS
            if (
                error.kind in NON_RETRYABLE_KINDS
                or (content and reasks == CONTENT_REASKS)
                or (not content and retries == max_retries)
            ):
                message = (
                    f"no synopsis for {excerpt(prompt)} after {calls} call(s), "
                    f"{error.kind}: {reason}"
                )
                failure = SynopsisError(error.kind, redact(message, secrets))
                failure.latency_seconds = in_calls
                raise failure from None
            if content:  # ask again at once, saying what was wrong with the answer
                request["messages"] = [*messages, *_reask_messages(prompt, response, reason, secrets)]
                logger.warning("synopsis answer for %s unusable (%s): %s; asking once more",
                               redact(excerpt(prompt), secrets), error.kind, reason)
                reasks += 1
                continue
            wait = _backoff_s(retries, backoff_s, max_backoff_s, _retry_after_s(exc))
            logger.warning(
                "synopsis call %d/%d for %s failed (%s): %s; retrying in %.2f s",
                retries + 1,
                max_retries + 1,
                redact(excerpt(prompt), secrets),
                error.kind,
                reason,
                wait,
            )
            sleep(wait)
            retries += 1


def _reask_messages(
    prompt: str, response: Any, reason: str, secrets: Iterable[str | None]
) -> list[dict[str, str]]:
    """The unusable answer and why it was unusable, appended to the conversation for one more try
    (restating the prompt, so the request still names what it is about)."""
    try:
        answer = response.choices[0].message.content or ""
    except (AttributeError, IndexError):
        answer = ""
    return [
        {"role": "assistant", "content": redact(answer, secrets)},
        {"role": "user", "content": f"That answer cannot be used: {reason}. Answer again for the prompt "
                                    f'"{prompt}", following the instructions: only the JSON object '
                                    '{"states": [...]}.'},
    ]


def synopsize_many(
    prompts: Sequence[str], *, max_concurrency: int = 4, **synopsize_kwargs: Any
) -> list[Synopsis | SynopsisError]:
    """:func:`synopsize` for each prompt, at most ``max_concurrency`` calls in flight.

    One prompt's failure does not stop the others: the result holds, in prompt order, each
    prompt's :class:`Synopsis` or its :class:`SynopsisError` (the caller decides whether that
    entry falls back to its plain prompt or fails). Arguments are checked before any call.
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    for index, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(
                f"prompts[{index}] is empty: there is nothing to split into visual states"
            )
    if not prompts:
        return []

    synopsize_kwargs.setdefault("max_concurrency", max_concurrency)

    def one(prompt: str) -> Synopsis | SynopsisError:
        try:
            return synopsize(prompt, **synopsize_kwargs)
        except SynopsisError as error:
            return error

    workers = min(max_concurrency, len(prompts))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vstar-synopsis") as pool:
        return list(pool.map(one, prompts))


def _import_litellm() -> ModuleType:
    # The cost map is otherwise fetched from GitHub at import time; the bundled copy is enough.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner printed per error
    return litellm


def _key_from_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ValueError(
            f"api_key_env={name!r} names an environment variable that is unset or empty"
        )
    return value


def _response_format(litellm: ModuleType, model: str) -> dict[str, Any] | None:
    """A JSON schema where the provider enforces one, else JSON mode where it has it, else None."""
    if litellm.supports_response_schema(model=model):
        return {
            "type": "json_schema",
            "json_schema": {
                "name": "video_synopsis",
                "schema": states_json_schema(),
                "strict": True,
            },
        }
    try:
        supported = litellm.get_supported_openai_params(model=model) or ()
    except Exception:  # an unknown provider: plain text, parsed tolerantly
        supported = ()
    return {"type": "json_object"} if "response_format" in supported else None


def _synopsis_from_response(
    response: Any,
    *,
    prompt: str,
    model: str,
    max_states: int,
    num_frames: int | None,
    secrets: Iterable[str | None],
) -> Synopsis:
    if not response.choices:
        raise SynopsisError("empty", "the LLM response has no choices")
    message = response.choices[0].message
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise SynopsisError("refusal", f"the LLM refused: {excerpt(redact(refusal, secrets))}")
    answer = message.content or ""
    if redact(answer, secrets) != answer:
        raise SynopsisError(
            "secret_echo", "the LLM answer quotes a secret (an API key or token of this environment): not used"
        )
    return parse_synopsis(
        answer, prompt=prompt, llm_model=model, max_states=max_states, num_frames=num_frames
    )


def _call_error(litellm: ModuleType, exc: Exception) -> SynopsisError:
    """Classify a litellm exception into a :class:`SynopsisError` kind."""
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    if isinstance(exc, litellm.Timeout):
        kind = "timeout"
    elif isinstance(
        exc, (litellm.AuthenticationError, litellm.PermissionDeniedError)
    ) or status in (401, 403):
        kind = "auth"
    elif isinstance(exc, litellm.RateLimitError) or status == 429:
        kind = "rate_limited"
    elif isinstance(exc, litellm.APIConnectionError):
        kind = "connection"
    elif status is not None and (status >= 500 or status in (408, 409)):
        kind = "server_error"
    elif (status is not None and 400 <= status < 500) or isinstance(exc, litellm.BadRequestError):
        kind = "bad_request"
    else:
        kind = "error"
    return SynopsisError(kind, f"{type(exc).__name__}: {exc}")


def _retry_after_s(exc: Exception) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None)
    try:
        return max(0.0, float(headers.get("retry-after"))) if headers is not None else None
    except (TypeError, ValueError):  # absent, or an HTTP date: fall back to our own backoff
        return None


def _backoff_s(
    attempt: int, backoff_s: float, max_backoff_s: float, retry_after_s: float | None
) -> float:
    wait = backoff_s * 2**attempt * random.uniform(0.5, 1.0)
    if retry_after_s is not None:
        wait = max(wait, retry_after_s)
    return min(wait, max_backoff_s)
