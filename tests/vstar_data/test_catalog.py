from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from vstar_data.catalog import (
    DEFAULT_MAX_FRAMES,
    MAX_TEXT_CHARS,
    CatalogEntry,
    CatalogError,
    load_catalog,
    parse_catalog,
)
from vstar_data.storage import join, write_bytes_atomic

CATALOGS = Path(__file__).resolve().parents[2] / "catalogs"
FORMATS = ["yaml", "json", "csv", "parquet"]

GOOD_ENTRIES = [
    {
        "id": "winter-to-spring",
        "prompt": "A meadow from winter to spring",
        "synopsis": ["a snowy meadow", "melting snow", "a meadow in bloom"],
        "frames": 32,
        "seeds": [0, 7],
    },
    {"id": "boy.ageing_1", "prompt": "A boy getting old", "num_samples": 2, "tar": "paper"},
    {"id": "plain", "prompt": "A candle burning down", "model": "tiny", "negative_prompt": "blur"},
]


def render(entries: list[dict], file_format: str) -> bytes:
    """``entries`` as the bytes of a catalog file of ``file_format``."""
    if file_format == "yaml":
        return yaml.safe_dump(entries, sort_keys=False, allow_unicode=True).encode()
    if file_format == "json":
        return json.dumps(entries, ensure_ascii=False).encode()
    if file_format == "csv":
        columns = list(dict.fromkeys(name for entry in entries for name in entry))
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for entry in entries:
            cells = []
            for name in columns:
                value = entry.get(name)
                if isinstance(value, list):
                    value = "|".join(str(item) for item in value)
                cells.append("" if value is None else value)
            writer.writerow(cells)
        return out.getvalue().encode()
    columns = dict.fromkeys(name for entry in entries for name in entry)
    table = pa.table({name: [entry.get(name) for entry in entries] for name in columns})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def parse(entries: list[dict], file_format: str, **options):
    return parse_catalog(render(entries, file_format), source=f"cat.{file_format}", **options)


def problems_of(raised: pytest.ExceptionInfo) -> list[tuple[str | None, str | None]]:
    return [(problem.where, problem.field) for problem in raised.value.problems]


@pytest.mark.parametrize("file_format", FORMATS)
def test_good_catalog_loads_the_same_in_every_format(file_format):
    catalog = parse(GOOD_ENTRIES, file_format, check_tar={"paper"}, check_model={"tiny"})
    assert [entry.model_dump(exclude_none=True) for entry in catalog] == GOOD_ENTRIES
    assert catalog["plain"].prompt == "A candle burning down"
    assert len(catalog) == 3 and len(catalog.sha256) == 64


@pytest.mark.parametrize("name", ["demo.yaml", "transitions.yaml"])
def test_shipped_catalogs_load(name):
    catalog = load_catalog(str(CATALOGS / name))
    assert len(catalog) >= 3


def test_demo_catalog_runs_without_an_llm():
    catalog = load_catalog(str(CATALOGS / "demo.yaml"))
    assert len(catalog) == 3
    assert all(entry.synopsis and 2 <= len(entry.synopsis) <= 4 for entry in catalog)
    assert all(entry.frames == 16 for entry in catalog)
    assert sum(len(entry.seeds or []) == 2 for entry in catalog) == 1


def test_transitions_catalog_leaves_synopses_to_the_llm():
    catalog = load_catalog(str(CATALOGS / "transitions.yaml"))
    assert len(catalog) >= 40
    assert all(entry.synopsis is None for entry in catalog)


def test_catalog_on_an_fsspec_url(memory_root):
    url = join(memory_root, "catalog.json")
    write_bytes_atomic(url, render(GOOD_ENTRIES, "json"))
    assert [entry.id for entry in load_catalog(url)] == [entry["id"] for entry in GOOD_ENTRIES]


def test_text_is_stripped_and_utf8_bom_accepted():
    raw = "\ufeffid,prompt\nx,  Blühende Kirschbäume im Frühling  \n".encode()
    assert parse_catalog(raw, source="c.csv")["x"].prompt == "Blühende Kirschbäume im Frühling"


def test_csv_list_cells_take_json_lists():
    raw = b'id,prompt,synopsis,seeds\nx,p,"[""a | b"", ""c""]","[3, 4]"\n'
    entry = parse_catalog(raw, source="c.csv")["x"]
    assert entry.synopsis == ["a | b", "c"] and entry.seeds == [3, 4]


def test_csv_errors_are_reported_by_line():
    raw = b"id,prompt,frames\n\na,first,16\nb,second,many\nc\n"
    with pytest.raises(CatalogError) as raised:
        parse_catalog(raw, source="c.csv")
    assert problems_of(raised) == [("line 4", "frames"), ("line 5", None)]
    assert "c.csv: line 4: field 'frames'" in str(raised.value)


def test_yaml_rows_also_give_the_line():
    raw = b"- id: a\n  prompt: p\n\n- id: b\n  prompt: ''\n"
    with pytest.raises(CatalogError) as raised:
        parse_catalog(raw, source="c.yaml")
    assert problems_of(raised) == [("row 2 (line 4)", "prompt")]


# Every case: (entry fields, field the problem names, words in the message).
BAD_ENTRIES = {
    "missing prompt": ({"id": "a"}, "prompt", "missing"),
    "empty prompt": ({"id": "a", "prompt": "   "}, "prompt", "must not be empty"),
    "missing id": ({"prompt": "p"}, "id", "missing"),
    "slash in id": ({"id": "a/b", "prompt": "p"}, "id", "safe file name"),
    "backslash in id": ({"id": "a\\b", "prompt": "p"}, "id", "safe file name"),
    "dot-dot in id": ({"id": "a..b", "prompt": "p"}, "id", "'..'"),
    "id is dot-dot": ({"id": "..", "prompt": "p"}, "id", "safe file name"),
    "very long prompt": ({"id": "a", "prompt": "x" * (MAX_TEXT_CHARS + 1)}, "prompt", "2000"),
    "very long state": (
        {"id": "a", "prompt": "p", "synopsis": ["s", "y" * 2001]},
        "synopsis",
        "state 2",
    ),
    "empty state": (
        {"id": "a", "prompt": "p", "synopsis": ["s", ""]},
        "synopsis",
        "state 2 is empty",
    ),
    "frames zero": (
        {"id": "a", "prompt": "p", "frames": 0},
        "frames",
        "greater than or equal to 1",
    ),
    "frames negative": (
        {"id": "a", "prompt": "p", "frames": -4},
        "frames",
        "greater than or equal to 1",
    ),
    "frames too many": ({"id": "a", "prompt": "p", "frames": 257}, "frames", "maximum of 256"),
    "frames as text": ({"id": "a", "prompt": "p", "frames": "many"}, "frames", "valid integer"),
    "zero samples": ({"id": "a", "prompt": "p", "num_samples": 0}, "num_samples", "greater than"),
    "seeds and num_samples": (
        {"id": "a", "prompt": "p", "num_samples": 2, "seeds": [1, 2]},
        "seeds",
        "not both",
    ),
    "repeated seed": ({"id": "a", "prompt": "p", "seeds": [3, 3]}, "seeds", "distinct"),
    "negative seed": ({"id": "a", "prompt": "p", "seeds": [-1]}, "seeds", "[0, 2**63 - 1]"),
    "unknown tar": (
        {"id": "a", "prompt": "p", "tar": "strong"},
        "tar",
        "unknown TAR preset 'strong'",
    ),
    "unknown model": (
        {"id": "a", "prompt": "p", "model": "sora"},
        "model",
        "unknown model preset 'sora'",
    ),
    "unknown field": ({"id": "a", "prompt": "p", "frame": 16}, "frame", "unknown"),
}


@pytest.mark.parametrize("file_format", FORMATS)
@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_bad_entry_is_rejected_naming_file_row_and_field(case, file_format):
    bad, field, words = BAD_ENTRIES[case]
    entries = [GOOD_ENTRIES[2], bad]
    with pytest.raises(CatalogError) as raised:
        parse(entries, file_format, check_tar={"paper"}, check_model={"tiny"})
    second_row = "line 3" if file_format == "csv" else "row 2"
    if file_format == "csv" and case == "empty prompt":
        words = "missing"  # an empty CSV cell is an absent value
    if file_format == "csv" and case == "unknown field":
        second_row = "line 1"  # the header names the unknown column
    [problem] = raised.value.problems
    assert problem.where.startswith(second_row) and problem.field == field
    assert words in problem.message
    assert f"cat.{file_format}: {problem.where}: field {field!r}" in str(raised.value)


# Types that only YAML, JSON and Parquet can express (a CSV cell is always text).
WRONG_TYPES = {
    "number as prompt": ({"id": "a", "prompt": 12}, "prompt"),
    "boolean as prompt": ({"id": "a", "prompt": True}, "prompt"),
    "number as id": ({"id": 7, "prompt": "p"}, "id"),
    "text as frames": ({"id": "a", "prompt": "p", "frames": "16"}, "frames"),
    "float as frames": ({"id": "a", "prompt": "p", "frames": 16.0}, "frames"),
    "text as synopsis": ({"id": "a", "prompt": "p", "synopsis": "one state"}, "synopsis"),
    "text as seeds": ({"id": "a", "prompt": "p", "seeds": "1,2"}, "seeds"),
}


@pytest.mark.parametrize("file_format", ["yaml", "json", "parquet"])
@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_wrong_types_are_not_coerced(case, file_format):
    bad, field = WRONG_TYPES[case]
    with pytest.raises(CatalogError) as raised:
        parse([bad], file_format)
    assert problems_of(raised) == [("row 1" if file_format != "yaml" else "row 1 (line 1)", field)]


def test_yaml_boolean_hint():
    with pytest.raises(CatalogError, match="quote text"):
        parse_catalog(b"- id: a\n  prompt: yes\n", source="c.yaml")


@pytest.mark.parametrize("file_format", FORMATS)
def test_duplicate_ids_name_both_rows(file_format):
    entries = [
        {"id": "Same", "prompt": "p"},
        {"id": "other", "prompt": "q"},
        {"id": "same", "prompt": "r"},
    ]
    with pytest.raises(CatalogError) as raised:
        parse(entries, file_format)
    [problem] = raised.value.problems
    assert problem.field == "id" and "duplicate id 'same'" in problem.message
    assert ("line 2" if file_format == "csv" else "row 1") in problem.message


@pytest.mark.parametrize("file_format", FORMATS)
def test_every_problem_is_reported_not_just_the_first(file_format):
    entries = [
        {"id": "a/b", "prompt": "p", "frames": 0},
        GOOD_ENTRIES[2],
        {"id": "c", "prompt": "", "tar": "nope"},
    ]
    with pytest.raises(CatalogError) as raised:
        parse(entries, file_format, check_tar={"paper"})
    fields = [field for _, field in problems_of(raised)]
    assert fields == ["id", "frames", "prompt", "tar"]
    assert str(raised.value).startswith(f"invalid catalog cat.{file_format} (4 problems)")


def test_max_frames_is_configurable():
    entries = [{"id": "a", "prompt": "p", "frames": 33}]
    assert parse(entries, "yaml", max_frames=64)["a"].frames == 33
    with pytest.raises(CatalogError, match="33 frames is above the maximum of 32"):
        parse(entries, "yaml", max_frames=32)
    with pytest.raises(ValueError, match="max_frames"):
        parse(entries, "yaml", max_frames=0)


def test_preset_checks_may_be_callables():
    def check_tar(spec: str) -> None:
        if not spec.startswith("gaussian:"):
            raise ValueError(f"bad TAR spec {spec!r}")

    entries = [
        {"id": "a", "prompt": "p", "tar": "gaussian:0.5"},
        {"id": "b", "prompt": "p", "tar": "x"},
    ]
    with pytest.raises(CatalogError) as raised:
        parse(entries, "json", check_tar=check_tar)
    assert problems_of(raised) == [("row 2", "tar")]
    assert "bad TAR spec 'x'" in str(raised.value)


@pytest.mark.parametrize(
    "source, raw, where, words",
    [
        ("c.yaml", b"- id: a\n  prompt: [unclosed\n", "line 3, column 1", "YAML syntax error"),
        ("c.yaml", b"- id: a\n  prompt: p\n  id: b\n", "line 3, column 3", "duplicate key 'id'"),
        ("c.json", b'[{"id": "a", "prompt": "p",}]', "line 1, column 28", "JSON syntax error"),
        ("c.json", b'[{"id": "a", "id": "b"}]', None, "duplicate key"),
        ("c.csv", b'id,prompt\na,"p"x\n', "line 2", "CSV syntax error"),
        ("c.parquet", b"PAR1 not really", None, "not a readable Parquet file"),
        ("c.yaml", b"- id: a\n  prompt: caf\xe9\n", "line 2", "not valid UTF-8 (byte 0xe9"),
        ("c.json", b'[{"id": "a", "prompt": "\xff"}]', "line 1", "not valid UTF-8"),
        ("c.csv", b"id,prompt\n\na,\xc3\x28\n", "line 3", "not valid UTF-8"),
        ("c.yaml", b"id: a\nprompt: p\n", None, "expected a list of entries, got dict"),
        ("c.json", b'{"entries": []}', None, "expected a list of entries, got dict"),
        ("c.yaml", b"# nothing yet\n", None, "no entries"),
        ("c.csv", b"id,prompt\n", None, "no entries"),
        ("c.csv", b"id,prompt,colour\na,p,red\n", "line 1", "unknown column"),
        ("c.txt", b"- id: a\n", None, "unsupported catalog format"),
    ],
)
def test_unreadable_files_are_rejected(source, raw, where, words):
    with pytest.raises(CatalogError) as raised:
        parse_catalog(raw, source=source)
    [problem] = raised.value.problems
    assert problem.source == source and problem.where == where
    assert words in problem.message


def test_missing_file_is_a_catalog_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(CatalogError, match=r"nope\.yaml.*FileNotFoundError"):
        load_catalog(str(missing))


def test_resolve_seeds():
    assert CatalogEntry(id="a", prompt="p", seeds=[9, 4]).resolve_seeds(
        default_num_samples=3, base_seed=100
    ) == [9, 4]
    assert CatalogEntry(id="a", prompt="p", num_samples=2).resolve_seeds(
        default_num_samples=3, base_seed=100
    ) == [100, 101]
    assert CatalogEntry(id="a", prompt="p").resolve_seeds(default_num_samples=3, base_seed=0) == [
        0,
        1,
        2,
    ]


def test_default_max_frames_matches_the_documented_limit():
    assert DEFAULT_MAX_FRAMES == 256


@pytest.mark.parametrize("file_format", FORMATS)
def test_real_clip_fields_and_tar_auto(file_format):
    from tasks.catalogs import check_tar

    entries = [
        {"id": "band", "prompt": "a rainbow appears", "tar": "64D1", "tar_band_from": "clips/rainbow.mp4"},
        {"id": "tuned", "prompt": "a peony blooms", "tar": "auto", "gtn_reference": "s3://clips/bloom.mp4"},
    ]
    catalog = parse(entries, file_format, check_tar=check_tar)
    assert [(e.tar, e.tar_band_from, e.gtn_reference) for e in catalog] == [
        ("64D1", "clips/rainbow.mp4", None), ("auto", None, "s3://clips/bloom.mp4"),
    ]


def test_tar_auto_and_a_band_from_a_clip_exclude_each_other():
    entries = [{"id": "both", "prompt": "p", "tar": "auto", "tar_band_from": "clips/a.mp4"}]
    with pytest.raises(CatalogError) as raised:
        parse(entries, "yaml")
    assert problems_of(raised) == [("row 1 (line 1)", None)]
    assert "give one of them" in str(raised.value)
