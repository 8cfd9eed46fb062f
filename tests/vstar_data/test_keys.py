from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vstar_data.keys import KEY_HEX_DIGITS, canonical_json, content_key, sample_key, synopsis_key

SAMPLE_INPUTS = dict(
    prompt="A landscape from winter to spring",
    states=["snow", "thaw", "flowers"],
    negative_prompt=None,
    seed=7,
    num_frames=32,
    height=320,
    width=512,
    num_inference_steps=25,
    guidance_scale=7.5,
    model_preset="videocrafter2",
    model_revision="abc123",
    tar="paper",
    vsp=True,
    fps=8,
    device="cuda",
)

CHANGED_VALUES = dict(
    prompt="A landscape from spring to winter",
    states=["thaw", "snow", "flowers"],
    negative_prompt="blurry",
    seed=8,
    num_frames=48,
    height=256,
    width=256,
    num_inference_steps=50,
    guidance_scale=9.0,
    model_preset="modelscope",
    model_revision="def456",
    tar=None,
    vsp=False,
    fps=16,
    device="cpu",
)


def test_keys_are_short_lowercase_hex():
    for key in (sample_key(**SAMPLE_INPUTS), synopsis_key("p", "m", "v1", 4)):
        assert len(key) == KEY_HEX_DIGITS and int(key, 16) >= 0 and key == key.lower()


def test_sample_key_ignores_argument_order_and_sequence_type():
    reordered = dict(reversed(list(SAMPLE_INPUTS.items())))
    reordered["states"] = tuple(reordered["states"])
    assert sample_key(**reordered) == sample_key(**SAMPLE_INPUTS)


@pytest.mark.parametrize("field", sorted(CHANGED_VALUES))
def test_sample_key_changes_with_every_input(field):
    assert SAMPLE_INPUTS[field] != CHANGED_VALUES[field]
    changed = SAMPLE_INPUTS | {field: CHANGED_VALUES[field]}
    assert sample_key(**changed) != sample_key(**SAMPLE_INPUTS)


@pytest.mark.parametrize(
    "changed",
    [
        ("winter to summer", "gpt-4o", "v1", 4),
        ("winter to spring", "claude", "v1", 4),
        ("winter to spring", "gpt-4o", "v2", 4),
        ("winter to spring", "gpt-4o", "v1", 5),
    ],
)
def test_synopsis_key_changes_with_every_input(changed):
    assert synopsis_key(*changed) != synopsis_key("winter to spring", "gpt-4o", "v1", 4)


def test_namespaces_keep_synopsis_and_sample_keys_apart():
    inputs = dict(prompt="p", llm_model="m", template_version="v1", max_states=4)
    assert sample_key(**inputs) != synopsis_key(**inputs)
    assert content_key("a", {"x": 1}) != content_key("b", {"x": 1})


def test_keys_are_equal_in_another_process():
    code = (
        "import json, sys; from vstar_data.keys import sample_key, synopsis_key; "
        "inputs = json.loads(sys.argv[1]); "
        "print(sample_key(**inputs), synopsis_key('p', 'm', 'v1', 4))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(SAMPLE_INPUTS)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert result.stdout.split() == [sample_key(**SAMPLE_INPUTS), synopsis_key("p", "m", "v1", 4)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1, 2}, b"bytes", object()])
def test_values_json_cannot_represent_are_rejected(bad):
    with pytest.raises(ValueError, match="cannot build a content key"):
        sample_key(**SAMPLE_INPUTS, extra=bad)


def test_canonical_json_is_sorted_and_compact():
    assert canonical_json({"b": [1, (2, 3)], "a": "é"}) == '{"a":"é","b":[1,[2,3]]}'


def test_empty_inputs_are_rejected():
    with pytest.raises(ValueError, match="sample_key needs"):
        sample_key()
    with pytest.raises(ValueError, match="namespace"):
        content_key("", {"x": 1})
