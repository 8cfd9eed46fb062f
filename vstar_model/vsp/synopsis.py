"""Video Synopsis Prompting, the language side: the instruction template and answer parsing.

An LLM is shown one worked example of a prompt split into visual states, then asked to split the
user's prompt the same way (paper §3.2, Appendix C; the wording here is our own). Its answer is
parsed tolerantly and validated strictly, so that a bad answer fails with a reason that says
which rule it broke. No LLM client is imported here: see :mod:`vstar_model.vsp.llm` for the calls.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# Bump TEMPLATE_VERSION on any change to the wording below (cached synopses are keyed by it), then
# set TEMPLATE_SHA256 to the new ``template_fingerprint()``; a test checks the two agree.
TEMPLATE_VERSION = "vsp-1"
TEMPLATE_SHA256 = "1cb40637a9a1252ee51c1862b5689c9cab604cdc1f2e5b652d898759f94d2331"

INSTRUCTION = """\
You turn a text-to-video prompt that describes a change over time into a video synopsis: the \
sequence of visual states a viewer sees, from the first frame to the last.

Rules:
- Describe each state in exactly one short, plain sentence about what is visible at that moment.
- Be direct and concrete: no storytelling, no explanations, no words such as "then", "later" or \
"finally".
- Keep the states coherent with each other: the same subject, setting and style throughout, \
changing only what the prompt says changes.
- Use as many states as the change needs: two for a simple change, more for a change with several \
distinct phases, and never more than {max_states}.
- Reply with JSON only, in the form {{"states": ["first state", "second state"]}}."""

USER_MESSAGE = "Prompt: {quoted_prompt}"

EXAMPLE_PROMPT = "a boy growing old"
EXAMPLE_STATES = (
    "A young boy with a round face and short brown hair.",
    "A teenage boy with a lean face and tousled brown hair.",
    "A middle-aged man with a short beard and greying temples.",
    "An old man with white hair and a deeply wrinkled face.",
)

# CLIP-style text encoders read at most 77 tokens; a state far longer than that is not a sentence.
MAX_STATE_CHARS = 300
_EXCERPT_CHARS = 120

_LIST_ITEM = re.compile(r"^\s*(?:\d{1,2}[.):]|[-*•])\s+(?P<item>\S.*)$")
_REFUSAL = re.compile(  # an apostrophe may be straight or curly (\u2019)
    r"^\W*(?:(?:i['\u2019]?m|i am) (?:sorry|unable)|sorry\b|i can(?:not|['\u2019]?t)"
    r"|i won['\u2019]?t|as an ai)",
    re.IGNORECASE,
)


class SynopsisError(ValueError):
    """An LLM answer (or call) that yields no usable synopsis.

    ``kind`` names the failure in a word that can be counted and stored: ``empty``, ``refusal``,
    ``malformed``, ``no_states``, ``too_many_states``, ``not_one_sentence``, ``state_too_long``,
    ``secret_echo`` (answer problems), or ``timeout``, ``rate_limited``, ``server_error``,
    ``connection``, ``auth``, ``bad_request``, ``error`` (call problems, raised by
    :mod:`vstar_model.vsp.llm`).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # pickle both arguments: results travel between Prefect workers
        return type(self), (self.kind, str(self))


@dataclass(frozen=True)
class Synopsis:
    """The visual states an LLM made of one prompt, and what made them."""

    prompt: str
    states: tuple[str, ...]
    template_version: str
    llm_model: str
    raw_answer: str | None = None
    # Seconds the LLM call that gave this answer took (not the time it waited for a free slot).
    latency_seconds: float | None = field(default=None, compare=False)

    @property
    def num_states(self) -> int:
        return len(self.states)


def template_fingerprint() -> str:
    """SHA-256 of every piece of template text, to detect wording changes."""
    parts = [INSTRUCTION, USER_MESSAGE, EXAMPLE_PROMPT, *EXAMPLE_STATES]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def build_messages(prompt: str, *, max_states: int) -> list[dict[str, str]]:
    """Chat messages asking for the synopsis of ``prompt``.

    The instruction (system), one worked example (a user prompt and the assistant's answer),
    then ``prompt`` itself: a one-shot, in-context decomposition.
    """
    if not prompt.strip():
        raise ValueError("prompt is empty: there is nothing to split into visual states")
    _check_max_states(max_states)
    return [
        {"role": "system", "content": INSTRUCTION.format(max_states=max_states)},
        {"role": "user", "content": _user_message(EXAMPLE_PROMPT)},
        {"role": "assistant", "content": json.dumps({"states": list(EXAMPLE_STATES)})},
        {"role": "user", "content": _user_message(prompt)},
    ]


def states_json_schema() -> dict:
    """JSON schema of the answer, for providers that enforce structured output.

    The count limits are checked by :func:`validate_states` instead of ``minItems``/``maxItems``,
    which some providers' strict modes reject.
    """
    return {
        "type": "object",
        "properties": {"states": {"type": "array", "items": {"type": "string"}}},
        "required": ["states"],
        "additionalProperties": False,
    }


def parse_synopsis(
    answer: str | None,
    *,
    prompt: str,
    llm_model: str,
    max_states: int,
    num_frames: int | None = None,
) -> Synopsis:
    """Parse and validate an LLM answer into a :class:`Synopsis` (raises :class:`SynopsisError`)."""
    states = validate_states(parse_states(answer), max_states=max_states, num_frames=num_frames)
    return Synopsis(prompt, states, TEMPLATE_VERSION, llm_model, answer)


def parse_states(answer: str | None) -> list[str]:
    """Extract the list of states from an answer, tolerating how LLMs wrap JSON.

    Accepted, in this order: the first ``{"states": [...]}`` object or JSON list of strings (so
    also one under another key), alone, in a code fence or amid prose; then, as a last resort,
    numbered or bulleted lines.
    """
    text = (answer or "").strip()
    if not text:
        raise SynopsisError("empty", "the LLM answer is empty")
    states = _states_in_json(text)
    if states is not None:
        return states
    items = [m.group("item") for line in text.splitlines() if (m := _LIST_ITEM.match(line))]
    if items:
        return [item.strip().rstrip(",").strip().strip('"“”') for item in items]
    if _REFUSAL.match(text):
        raise SynopsisError("refusal", f"the LLM refused: {excerpt(text)}")
    raise SynopsisError(
        "malformed",
        'the LLM answer holds no complete {"states": [...]} JSON, no JSON list of strings and no '
        f"numbered lines: {excerpt(text)}",
    )


def validate_states(
    states: Sequence[str], *, max_states: int, num_frames: int | None = None
) -> tuple[str, ...]:
    """Strip states, drop empty ones and check the synopsis rules; return the states kept.

    Rules: at least one state; at most ``max_states`` and, when given, at most ``num_frames``
    (each state needs a frame of its own); each state a single line of at most MAX_STATE_CHARS.
    """
    _check_max_states(max_states)
    kept = tuple(s.strip() for s in states if s.strip())
    if not kept:
        raise SynopsisError("no_states", "the LLM answer holds no non-empty state")
    limit, reason = max_states, f"max_states={max_states}"
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if num_frames < max_states:
            limit, reason = num_frames, f"num_frames={num_frames} (one frame per state at least)"
    if len(kept) > limit:
        raise SynopsisError(
            "too_many_states",
            f"the LLM gave {len(kept)} states, more than {reason}: {excerpt(kept)}",
        )
    for number, state in enumerate(kept, start=1):
        if "\n" in state or "\r" in state:
            raise SynopsisError(
                "not_one_sentence",
                f"state {number} spans several lines, not one sentence: {excerpt(state)}",
            )
        if len(state) > MAX_STATE_CHARS:
            raise SynopsisError(
                "state_too_long",
                f"state {number} has {len(state)} characters, more than {MAX_STATE_CHARS}: "
                f"{excerpt(state)}",
            )
    return kept


def excerpt(value: object, limit: int = _EXCERPT_CHARS) -> str:
    """A short one-line quote of ``value`` for error messages."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _user_message(prompt: str) -> str:
    return USER_MESSAGE.format(quoted_prompt=json.dumps(prompt.strip(), ensure_ascii=False))


def _check_max_states(max_states: int) -> None:
    if max_states < 1:
        raise ValueError(f"max_states must be >= 1, got {max_states}")


def _states_in_json(text: str) -> list[str] | None:
    """The first ``{"states": [str, ...]}`` or ``[str, ...]`` JSON value in ``text``, or None."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            value = value.get("states")
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
    return None
