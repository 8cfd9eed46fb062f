from __future__ import annotations

import json
import pickle

import pytest

from vstar_model.vsp import synopsis
from vstar_model.vsp.synopsis import (
    EXAMPLE_PROMPT,
    EXAMPLE_STATES,
    MAX_STATE_CHARS,
    TEMPLATE_VERSION,
    Synopsis,
    SynopsisError,
    build_messages,
    parse_states,
    parse_synopsis,
    template_fingerprint,
    validate_states,
)

STATES = [
    "A snowy field under a grey sky.",
    "Snow melting on a muddy field.",
    "A green meadow full of flowers.",
]


def test_template_version_is_bumped_whenever_the_template_text_changes():
    assert template_fingerprint() == synopsis.TEMPLATE_SHA256, (
        "the template wording changed: bump TEMPLATE_VERSION and set TEMPLATE_SHA256 to "
        f"{template_fingerprint()!r}"
    )


def test_fingerprint_covers_every_piece_of_template_text(monkeypatch):
    before = template_fingerprint()
    for name, changed in [
        ("INSTRUCTION", synopsis.INSTRUCTION + " "),
        ("USER_MESSAGE", "Input: {quoted_prompt}"),
        ("EXAMPLE_PROMPT", "a tree losing its leaves"),
        ("EXAMPLE_STATES", EXAMPLE_STATES[:-1]),
    ]:
        with monkeypatch.context() as patch:
            patch.setattr(synopsis, name, changed)
            assert template_fingerprint() != before, name


def test_messages_give_the_instruction_one_worked_example_then_the_prompt():
    prompt = 'A landscape going from "winter" to spring'

    messages = build_messages(prompt, max_states=5)

    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "never more than 5" in messages[0]["content"]
    assert EXAMPLE_PROMPT in messages[1]["content"]
    assert json.loads(messages[2]["content"]) == {"states": list(EXAMPLE_STATES)}
    quoted = messages[3]["content"].split(": ", 1)[1]
    assert json.loads(quoted) == prompt  # quotes inside the prompt cannot break the message
    assert all("\n" not in m["content"] for m in messages[1:])


def test_the_worked_example_obeys_the_rules_it_teaches():
    example_answer = build_messages("anything", max_states=len(EXAMPLE_STATES))[2]["content"]

    parsed = parse_synopsis(
        example_answer, prompt=EXAMPLE_PROMPT, llm_model="m", max_states=len(EXAMPLE_STATES)
    )

    assert parsed.states == EXAMPLE_STATES


def test_messages_reject_an_empty_prompt_and_a_max_below_one():
    with pytest.raises(ValueError, match="prompt is empty"):
        build_messages("  ", max_states=4)
    with pytest.raises(ValueError, match="max_states must be >= 1, got 0"):
        build_messages("a boy growing old", max_states=0)


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps({"states": STATES}),
        "```json\n" + json.dumps({"states": STATES}, indent=2) + "\n```",
        "Here is the synopsis [3 states]:\n"
        + json.dumps({"states": STATES})
        + "\nHope this helps!",
        json.dumps(STATES),
        "Sure:\n```\n" + json.dumps(STATES) + "\n```",
        json.dumps({"synopsis": {"states": STATES}}),
        json.dumps({"stages": STATES}),
        "\n".join(f"{i}. {s}" for i, s in enumerate(STATES, start=1)),
        "States:\n" + "\n".join(f'- "{s}"' for s in STATES),
        "\n".join(f"{i}) {s}" for i, s in enumerate(STATES, start=1)),
    ],
    ids=[
        "json",
        "fenced",
        "prose-around",
        "bare-list",
        "fenced-list",
        "nested",
        "other-key",
        "numbered",
        "bulleted",
        "parens",
    ],
)
def test_answers_wrapped_in_the_usual_ways_parse_to_the_same_states(answer):
    assert parse_states(answer) == STATES


@pytest.mark.parametrize(
    ("answer", "kind", "reason"),
    [
        (None, "empty", "empty"),
        ("   \n ", "empty", "empty"),
        ("I'm sorry, but I can't help with that request.", "refusal", "refused"),
        ("I\u2019m unable to describe that.", "refusal", "refused"),
        ('{"states": ["A snowy field.", "A gre', "malformed", "no complete"),
        ('{"states": "A snowy field."}', "malformed", "no complete"),
        ('{"states": [{"text": "A snowy field."}]}', "malformed", "no complete"),
        ("A snowy field that slowly turns green.", "malformed", "no complete"),
    ],
    ids=[
        "none",
        "blank",
        "refusal",
        "curly-refusal",
        "truncated",
        "not-a-list",
        "not-strings",
        "prose",
    ],
)
def test_unusable_answers_are_rejected_with_their_kind_and_an_excerpt(answer, kind, reason):
    with pytest.raises(SynopsisError, match=reason) as caught:
        parse_states(answer)
    assert caught.value.kind == kind
    assert isinstance(caught.value, ValueError)
    if answer and answer.strip():
        assert answer.strip()[:15] in str(caught.value)


def test_validation_strips_states_and_drops_empty_ones():
    assert validate_states(["  A snowy field. ", "", "  ", "A green meadow."], max_states=2) == (
        "A snowy field.",
        "A green meadow.",
    )


def test_validation_accepts_exactly_max_states_and_rejects_one_more():
    assert len(validate_states(STATES, max_states=3)) == 3
    with pytest.raises(SynopsisError, match=r"4 states, more than max_states=3") as caught:
        validate_states([*STATES, "A meadow at dusk."], max_states=3)
    assert caught.value.kind == "too_many_states"


def test_validation_never_allows_more_states_than_frames():
    assert len(validate_states(STATES, max_states=8, num_frames=3)) == 3
    with pytest.raises(SynopsisError, match=r"3 states, more than num_frames=2") as caught:
        validate_states(STATES, max_states=8, num_frames=2)
    assert caught.value.kind == "too_many_states"


def test_validation_rejects_no_states_multi_line_states_and_overlong_states():
    with pytest.raises(SynopsisError, match="no non-empty state") as caught:
        validate_states(["", " "], max_states=4)
    assert caught.value.kind == "no_states"

    with pytest.raises(SynopsisError, match="state 2 spans several lines") as caught:
        validate_states(["A snowy field.", "Snow melts.\n\nThe grass appears."], max_states=4)
    assert caught.value.kind == "not_one_sentence"

    long_state = "A field " + "with flowers " * 40
    assert len(long_state) > MAX_STATE_CHARS
    with pytest.raises(
        SynopsisError, match=f"state 1 has {len(long_state.strip())} characters"
    ) as caught:
        validate_states([long_state], max_states=4)
    assert caught.value.kind == "state_too_long"


def test_parse_synopsis_records_what_made_the_states():
    answer = json.dumps({"states": STATES})

    result = parse_synopsis(
        answer, prompt="winter to spring", llm_model="openai/x", max_states=8, num_frames=16
    )

    assert result == Synopsis(
        "winter to spring", tuple(STATES), TEMPLATE_VERSION, "openai/x", answer
    )
    assert result.num_states == 3


def test_error_excerpts_are_short_single_lines():
    answer = "Let me think.\n\n" + "blah " * 200

    with pytest.raises(SynopsisError) as caught:
        parse_states(answer)

    message = str(caught.value)
    assert "\n" not in message and len(message) < 300
    assert "Let me think. blah" in message


def test_errors_survive_pickling_with_their_kind():
    error = SynopsisError("too_many_states", "the LLM gave 9 states, more than max_states=8")

    copy = pickle.loads(pickle.dumps(error))

    assert (type(copy), copy.kind, str(copy)) == (SynopsisError, error.kind, str(error))
