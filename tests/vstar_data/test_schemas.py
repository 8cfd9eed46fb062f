from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from vstar_data.runs import new_run_id
from vstar_data.schemas import (
    METRICS_SCHEMA,
    RUN_ID_KEY,
    RUNS_SCHEMA,
    SAMPLES_SCHEMA,
    SYNOPSES_SCHEMA,
    TUNING_SCHEMA,
    read_table,
    rows_to_table,
    table_run_id,
    write_table,
)
from vstar_data.storage import join

NOW = datetime(2026, 11, 2, 12, 30, tzinfo=UTC)


def synopsis_row(run_id: str, index: int) -> dict:
    return dict(
        run_id=run_id,
        catalog_id=f"entry-{index}",
        prompt=f"prompt {index}",
        states=[f"state {index}.{s}" for s in range(index + 1)],
        source="llm" if index % 2 else "catalog",
        llm_model="openai/gpt-4o-mini" if index % 2 else None,
        template_version="v1",
        synopsis_key=f"{index:016x}",
        latency_seconds=0.25 * index,
    )


def sample_row(run_id: str, index: int) -> dict:
    failed = index == 2
    return dict(
        run_id=run_id,
        sample_key=f"{index:016x}",
        catalog_id=f"entry-{index}",
        prompt=f"prompt {index}",
        states=["a young boy", "an old man"],
        synopsis_source="catalog",
        seed=2**40 + index,
        num_frames=16,
        fps=8,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=7.5,
        model_preset="tiny",
        model_revision=None,
        tar="paper",
        vsp=True,
        video_uri=None if failed else f"videos/entry-{index}__s{index}.mp4",
        video_sha256=None if failed else "ab" * 32,
        status="failed" if failed else "ok",
        error="RuntimeError: out of memory" if failed else None,
        generate_seconds=1.5,
        encode_seconds=0.1,
        created_at=NOW + timedelta(seconds=index),
        device="cpu",
    )


def metric_row(run_id: str, index: int) -> dict:
    return dict(
        run_id=run_id,
        sample_key=f"{index:016x}",
        catalog_id="entry-0",
        seed=0,
        metric="dreamsim_ensemble",
        k=index if index % 3 else -1,
        name="mean",
        value=index / 7,
        reference=None,
    )


def run_row(run_id: str, index: int) -> dict:
    return dict(
        run_id=run_id,
        created_at=NOW,
        finished_at=None if index else NOW + timedelta(minutes=3),
        status="ok",
        catalog="catalogs/demo.yaml",
        num_samples=4,
        num_failed=index,
        parameters_json='{"frames": 16}',
        manifest_uri=f"runs/{run_id}/manifest.json",
    )


def tuning_row(run_id: str, index: int) -> dict:
    return dict(
        run_id=run_id, catalog_id="entry-0", trial=index, levels="64" if index % 2 else "64_32", sigma=0.5 * 2**index,
        tar=f"64D{0.5 * 2**index:g}", score=0.1 / (index + 1), metric="pixel_cosine", reference="references/real/x",
        seed=0, num_frames=16, height=32, width=32, num_inference_steps=2, sample_key=f"{index:016x}",
        chosen=index == 1, stopped="converged",
    )


TABLES = [
    (SYNOPSES_SCHEMA, synopsis_row),
    (SAMPLES_SCHEMA, sample_row),
    (METRICS_SCHEMA, metric_row),
    (RUNS_SCHEMA, run_row),
    (TUNING_SCHEMA, tuning_row),
]


@pytest.mark.parametrize("schema, make_row", TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_round_trip_through_every_reader(schema, make_row, tmp_path):
    run_id = new_run_id()
    rows = [make_row(run_id, index) for index in range(4)]
    path = tmp_path / "table.parquet"
    write_table(str(path), rows, schema, run_id=run_id)
    expected = [{name: row.get(name) for name in schema.names} for row in rows]

    table = read_table(str(path))
    assert table.schema.equals(schema)
    assert table.to_pylist() == expected
    assert table_run_id(table) == run_id
    assert pq.read_schema(path).metadata[RUN_ID_KEY] == run_id.encode()

    assert ds.dataset(str(path)).to_table().to_pylist() == expected

    frame = pd.read_parquet(path)
    assert list(frame.columns) == schema.names and len(frame) == len(rows)
    assert frame["run_id"].tolist() == [run_id] * len(rows)

    columns = ", ".join(f'"{name}"' for name in schema.names)
    fetched = duckdb.sql(f"SELECT {columns} FROM read_parquet('{path}')").fetchall()
    assert [dict(zip(schema.names, values, strict=True)) for values in fetched] == expected


def test_hugging_face_datasets_reads_samples(tmp_path):
    datasets = pytest.importorskip("datasets")
    run_id = new_run_id()
    rows = [sample_row(run_id, index) for index in range(3)]
    write_table(str(tmp_path / "samples.parquet"), rows, SAMPLES_SCHEMA, run_id=run_id)
    loaded = datasets.Dataset.from_parquet(str(tmp_path / "samples.parquet"))
    assert loaded["catalog_id"] == [row["catalog_id"] for row in rows]
    assert loaded["states"] == [row["states"] for row in rows]


def test_write_and_read_on_memory_filesystem(memory_root):
    run_id = new_run_id()
    url = join(memory_root, "runs", run_id, "metrics.parquet")
    write_table(url, [metric_row(run_id, 1)], METRICS_SCHEMA, run_id=run_id)
    assert table_run_id(read_table(url)) == run_id


def test_empty_table_keeps_schema(tmp_path):
    write_table(str(tmp_path / "m.parquet"), [], METRICS_SCHEMA, run_id="r")
    table = read_table(str(tmp_path / "m.parquet"))
    assert table.num_rows == 0 and table.schema.equals(METRICS_SCHEMA)


def test_nullable_fields_may_be_left_out():
    row = metric_row("r", 1)
    del row["reference"]
    assert rows_to_table([row], METRICS_SCHEMA).column("reference").to_pylist() == [None]


def test_numpy_numbers_are_accepted():
    row = metric_row("r", 1) | {"seed": np.int64(5), "value": np.float32(0.5), "k": np.int32(2)}
    table = rows_to_table([row], METRICS_SCHEMA)
    assert table.to_pylist()[0]["seed"] == 5 and table.to_pylist()[0]["value"] == 0.5


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("seed", 1.5, r"row 1: field 'seed' expects int64, got float"),
        ("seed", True, r"field 'seed' expects int64, got bool"),
        ("num_frames", 2**31, r"field 'num_frames' expects int32"),
        ("num_frames", "16", r"field 'num_frames' expects int32, got str"),
        ("states", "a cat", r"field 'states' expects list<item: string>, got str"),
        ("states", ["a cat", 3], r"field 'states' expects list"),
        ("vsp", 1, r"field 'vsp' expects bool, got int"),
        ("guidance_scale", "7.5", r"field 'guidance_scale' expects double"),
        ("created_at", datetime(2026, 1, 1), r"field 'created_at' expects timestamp"),
        ("prompt", None, r"row 1: field 'prompt' is required, got null"),
    ],
)
def test_bad_values_name_row_and_field(field, value, match):
    rows = [sample_row("r", 0), sample_row("r", 1) | {field: value}]
    with pytest.raises(ValueError, match=match):
        rows_to_table(rows, SAMPLES_SCHEMA)


def test_missing_required_and_unknown_fields_are_rejected(tmp_path):
    row = sample_row("r", 0)
    del row["seed"]
    with pytest.raises(ValueError, match=r"row 0: field 'seed' is required"):
        write_table(str(tmp_path / "s.parquet"), [row], SAMPLES_SCHEMA, run_id="r")
    with pytest.raises(ValueError, match=r"row 0: unknown field\(s\) \['sed'\]"):
        rows_to_table([sample_row("r", 0) | {"sed": 1}], SAMPLES_SCHEMA)
    assert not (tmp_path / "s.parquet").exists()


def test_every_schema_is_tagged_with_its_table_name():
    names = [schema.metadata[b"vstar.table"] for schema, _ in TABLES]
    assert names == [b"synopses", b"samples", b"metrics", b"runs", b"tuning"]
    assert all(isinstance(schema, pa.Schema) for schema, _ in TABLES)


def test_parquet_is_read_from_arrows_own_copy_of_the_bytes(tmp_path, monkeypatch):
    """A reader whose source is Python memory may release it on an Arrow thread while the
    interpreter exits, which aborts the process (exit code 134): its source must be Arrow's."""
    import vstar_data.schemas as schemas

    write_table(str(tmp_path / "m.parquet"), [metric_row("r", 1)], METRICS_SCHEMA, run_id="r")
    data = (tmp_path / "m.parquet").read_bytes()
    sources = []
    real_read_table = pq.read_table

    def recording_read_table(source, **kwargs):
        sources.append(source)
        return real_read_table(source, **kwargs)

    monkeypatch.setattr(schemas, "read_bytes", lambda url, retry: data)
    monkeypatch.setattr(schemas.pq, "read_table", recording_read_table)
    assert table_run_id(read_table("any-url")) == "r"
    [source] = sources
    python_memory = np.frombuffer(data, np.uint8).ctypes.data
    assert isinstance(source, pa.Buffer) and source.address != python_memory
