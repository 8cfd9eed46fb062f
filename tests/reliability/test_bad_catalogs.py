"""Bad catalogs through the ``vstar`` command: refused before any work, problems named, nothing written.

The loader-level matrix (every field, every format) is tests/vstar_data/test_catalog.py; these
cases check what a user sees at the command line.
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import vstar

pytestmark = pytest.mark.slow

MANY_PROBLEMS_YAML = f"""\
- id: good
  prompt: a meadow from winter to spring
- id: good
  prompt: the same id again
- id: ../escape
  prompt: a path out of the output root
- id: long
  prompt: {"x" * 2500}
- id: types
  prompt: [not, a, string]
- id: too-many-frames
  prompt: a very long video
  frames: 100000
- id: no-frames
  prompt: an empty video
  frames: 0
- id: presets
  prompt: unknown presets
  tar: 99Z9
  model: sora-ultra
- id: no-prompt
"""

# (file name, bytes, fragments every one of which the error output must hold)
CASES = {
    "yaml-entry-problems": (
        "catalog.yaml",
        MANY_PROBLEMS_YAML.encode(),
        [
            "(9 problems)",
            "row 2 (line 3): field 'id': duplicate id 'good'",
            "row 3 (line 5): field 'id': '../escape'",
            "row 4 (line 7): field 'prompt': String should have at most 2000 characters",
            "row 5 (line 9): field 'prompt': Input should be a valid string",
            "row 6 (line 11): field 'frames': 100000 frames is above the maximum",
            "row 7 (line 14): field 'frames'",
            "row 8 (line 17): field 'tar': unknown TAR preset '99Z9'",
            "row 8 (line 17): field 'model': unknown model preset 'sora-ultra'",
            "row 9 (line 21): field 'prompt'",
        ],
    ),
    "csv-not-utf8": (
        "catalog.csv",
        b"id,prompt\nok,fine\nbad,caf\xe9 latte\n",
        ["line 3: not valid UTF-8 (byte 0xe9"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_produce_refuses_a_bad_catalog_before_writing_anything(case, tmp_path, cli_env):
    name, content, fragments = CASES[case]
    catalog = tmp_path / name
    catalog.write_bytes(content)
    root = tmp_path / "out"

    result = vstar("produce", str(catalog), "--out", str(root), env=cli_env)

    assert result.returncode != 0
    assert str(catalog) in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert not root.exists()
    # Refused before Prefect started: no flow run, so no database either.
    assert not any((tmp_path / "prefect-home").iterdir())


def test_catalog_validate_names_the_problem_and_passes_a_good_file(tmp_path, cli_env):
    bad = tmp_path / "catalog.json"
    bad.write_bytes(b'[{"id": "a", "prompt": "x"},\n {"id": "b" "prompt": "y"}]')
    result = vstar("catalog", "validate", str(bad), env=cli_env)
    assert result.returncode != 0
    assert f"{bad}: line 2, column 13: JSON syntax error" in result.stderr

    good = tmp_path / "good.yaml"
    good.write_text("- id: good\n  prompt: a meadow from winter to spring\n")
    result = vstar("catalog", "validate", str(good), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert f"{good}: 1 entries OK" in result.stdout
