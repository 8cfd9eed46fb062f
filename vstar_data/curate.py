"""Curate training data from runs: candidates, filters, near-duplicate removal, a cap per prompt.

Candidates are the ``ok`` videos of the selected runs, one row each, with every samples column,
the synopsis' ``llm_model`` and ``template_version``, and the run's metrics pivoted into columns:
per video ``coherence``, ``dynamics_slope``, ``temporal_flicker``, ``motion_magnitude`` and
``<name>@<k>`` for the per-interval summaries (``mean@1``, ``q05@3``…); per variant, against a
reference, ``overall_score`` and ``wasserstein@<k>``. ``similarity_metric`` names the metric the
similarity columns were measured with.

Selection, in this order: every ``--where`` condition (all must hold), then near-duplicates
(cosine of the videos' mean frame embeddings, kept from the evaluation in ``embeddings.parquet``,
at or above a threshold: the best by ``keep_best`` stays), then at most ``max_per_prompt`` clips
per prompt (the best by ``keep_best``).

A condition is ``<column> <operator> <literal>``: operators ``== != < <= > >= in``, literals a
number, ``true``/``false``, a quoted string, a bare word (``status == ok``) or for ``in`` a list
``(a, b)``. Nothing is evaluated as Python.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vstar_data.runs import RunPaths
from vstar_data.schemas import DATASET_SCHEMA, RUN_ID_KEY, read_table
from vstar_data.storage import exists, write_bytes_atomic
from vstar_data.uris import recorded_uri, resolve_uri

# Columns every candidate table has besides the metric columns; internal ones start with "_".
EMBEDDING = "_embedding"
EMBEDDING_METRIC = "_embedding_metric"
ORDER = "_order"
HEADLINE_METRICS = ("coherence", "dynamics_slope", "temporal_flicker", "motion_magnitude", "overall_score")

_OPERATORS = ("==", "!=", "<=", ">=", "<", ">", "in")
_CONDITION = re.compile(r"^\s*(?P<column>[A-Za-z_][A-Za-z0-9_@.]*)\s*(?P<operator>==|!=|<=|>=|<|>|\s+in\s+)\s*"
                        r"(?P<literal>.+?)\s*$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_BARE_WORD = re.compile(r"^[A-Za-z0-9_./:@-]+$")


class CurationError(ValueError):
    """A selection that cannot be made: a bad condition, an unknown column, missing embeddings."""


@dataclass(frozen=True)
class Condition:
    """``column operator value``; ``value`` is a tuple for ``in``."""

    column: str
    operator: str
    value: Any

    def __str__(self) -> str:
        shown = "(" + ", ".join(map(repr, self.value)) + ")" if self.operator == "in" else repr(self.value)
        return f"{self.column} {self.operator} {shown}"


def _literal(text: str, condition: str) -> Any:
    text = text.strip()
    if _NUMBER.match(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    if text in ("true", "false"):
        return text == "true"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if _BARE_WORD.match(text):
        return text
    raise CurationError(f"cannot read the value {text!r} in condition {condition!r}: use a number, true/false, "
                        "a quoted string or a bare word")


def parse_condition(text: str) -> Condition:
    """A condition from ``<column> <operator> <literal>``, e.g. ``coherence >= 0.8``, ``variant in (vstar, tar)``.

    Raises:
        CurationError: naming the condition and what is wrong with it.
    """
    match = _CONDITION.match(text)
    if not match:
        raise CurationError(f"cannot parse condition {text!r}: expected <column> <operator> <value> with an "
                            f"operator among {' '.join(_OPERATORS)}, e.g. 'coherence >= 0.8'")
    column, operator, literal = match["column"], match["operator"].strip(), match["literal"]
    if operator != "in":
        return Condition(column, operator, _literal(literal, text))
    if not (literal.startswith(("(", "[")) and literal.endswith((")", "]"))):
        raise CurationError(f"condition {text!r}: 'in' takes a list, e.g. 'variant in (vstar, tar)'")
    items = [item for item in literal[1:-1].split(",") if item.strip()]
    if not items:
        raise CurationError(f"condition {text!r}: the list after 'in' is empty")
    return Condition(column, operator, tuple(_literal(item, text) for item in items))


def known_columns(table: pa.Table) -> str:
    """The columns conditions may name, per-interval ones grouped: ``…, mean@1..15, …``."""
    plain, intervals = [], {}
    for name in table.column_names:
        if name.startswith("_"):
            continue
        base, _, k = name.partition("@")
        if k.isdigit():
            intervals.setdefault(base, []).append(int(k))
        else:
            plain.append(name)
    grouped = [f"{base}@{min(ks)}..{max(ks)}" for base, ks in intervals.items()]
    return ", ".join(sorted(plain + grouped))


def _check_column(table: pa.Table, column: str, purpose: str) -> None:
    if column not in table.column_names or column.startswith("_"):
        raise CurationError(f"unknown column {column!r} in {purpose}; known columns: {known_columns(table)}")


def condition_mask(table: pa.Table, condition: Condition) -> pa.ChunkedArray:
    """Boolean mask of the rows meeting ``condition``; null values never meet one."""
    _check_column(table, condition.column, f"condition '{condition}'")
    column = table[condition.column]
    values = condition.value if condition.operator == "in" else (condition.value,)
    kind = _kind(column.type)
    for value in values:
        if _value_kind(value) != kind and not (kind == "number" and isinstance(value, (int, float))):
            if column.null_count == len(column):
                return pa.chunked_array([pa.array([False] * len(column))])
            raise CurationError(f"condition '{condition}': column {condition.column!r} holds {kind}s, "
                                f"not {_value_kind(value)}s")
    if condition.operator == "in" and kind == "number":
        mask = pc.is_in(column.cast(pa.float64()), value_set=pa.array([float(v) for v in values], pa.float64()))
    elif condition.operator == "in":
        mask = pc.is_in(column, value_set=pa.array(values, type=column.type))
    else:
        function = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
                    ">=": pc.greater_equal}[condition.operator]
        mask = function(column, pa.scalar(condition.value, type=column.type if kind != "number" else None))
    return pc.fill_null(mask, False)


def _kind(type_: pa.DataType) -> str:
    if pa.types.is_boolean(type_):
        return "boolean"
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return "number"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    if pa.types.is_null(type_):
        return "null"
    return str(type_)


def _value_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else "string"


@dataclass(frozen=True)
class Ranking:
    """Which clip is best: the highest (``max``) or lowest (``min``) value of a column."""

    column: str
    order: str = "max"

    @classmethod
    def parse(cls, text: str) -> Ranking:
        """``coherence`` or ``coherence:max`` (highest first), ``dynamics_slope:min`` (lowest first)."""
        column, _, order = text.partition(":")
        order = order or "max"
        if order not in ("max", "min") or not column:
            raise CurationError(f"cannot read ranking {text!r}: expected <column>[:max|:min], e.g. 'coherence:max'")
        return cls(column, order)

    def order_of(self, table: pa.Table) -> np.ndarray:
        """Row positions best first; rows without a value last, ties in table order."""
        _check_column(table, self.column, f"ranking '{self.column}:{self.order}'")
        if _kind(table[self.column].type) not in ("number", "null"):
            raise CurationError(f"ranking by {self.column!r}: the column holds {_kind(table[self.column].type)}s, "
                                "not numbers")
        values = table[self.column].to_numpy(zero_copy_only=False).astype(np.float64)
        keys = np.where(np.isnan(values), np.inf, -values if self.order == "max" else values)
        return np.argsort(keys, kind="stable")


# ---- candidates -----------------------------------------------------------------------------

def _pivot(rows: pa.Table, keys: pa.Array, key_of_row: pa.Array) -> dict[str, pa.Array]:
    """Metric rows (name, k, value) pivoted to one float column per label (``name`` for k = -1,
    else ``name@k``) over ``keys``; vectorised, since a 16-frame run has ~110 rows per video."""
    if rows.num_rows == 0:
        return {}
    with_k = pc.binary_join_element_wise(rows["name"], pc.cast(rows["k"], pa.string()), "@")
    labels = pc.if_else(pc.equal(rows["k"], -1), rows["name"], with_k).combine_chunks().dictionary_encode()
    row_index = pc.index_in(key_of_row, value_set=keys)
    found = pc.is_valid(row_index).to_numpy(zero_copy_only=False)
    values = np.full((len(keys), len(labels.dictionary)), np.nan)
    values[pc.fill_null(row_index, 0).to_numpy()[found], labels.indices.to_numpy()[found]] = (
        rows["value"].to_numpy()[found]
    )
    return {label: pa.array(values[:, i], mask=np.isnan(values[:, i]))
            for i, label in enumerate(labels.dictionary.to_pylist())}


def run_candidates(run_dir: str) -> pa.Table:
    """The ``ok`` videos of one finished run as candidate rows (see the module docstring)."""
    run_id = run_dir.rstrip("/").rsplit("/", 1)[-1]
    run = RunPaths(run_dir.rstrip("/").rpartition("/runs/")[0], run_id)
    if not exists(run.manifest):
        raise CurationError(f"{run_dir} is not a finished run (no manifest.json)")
    samples = read_table(run.samples)
    samples = samples.filter(pc.equal(samples["status"], "ok")).replace_schema_metadata(None)
    n = samples.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {name: samples[name] for name in samples.column_names}
    for name in ("video_uri", "strip_uri"):
        columns[name] = pa.array([None if uri is None else resolve_uri(run.samples, uri)
                                  for uri in samples[name].to_pylist()], pa.string())

    synopses = {row["catalog_id"]: row for row in read_table(run.synopses).to_pylist()}
    for name in ("llm_model", "template_version"):
        columns[name] = pa.array([synopses.get(c, {}).get(name) for c in samples["catalog_id"].to_pylist()],
                                 pa.string())

    keys = samples["sample_key"].combine_chunks()
    similarity = [None] * n
    if exists(run.metrics):
        metrics = read_table(run.metrics)
        per_video = metrics.filter(pc.is_valid(metrics["sample_key"]))
        columns.update(_pivot(per_video, keys, per_video["sample_key"]))
        coherence = per_video.filter(pc.equal(per_video["name"], "coherence"))
        metric_of = dict(zip(coherence["sample_key"].to_pylist(), coherence["metric"].to_pylist()))
        similarity = [metric_of.get(key) for key in keys.to_pylist()]
        per_variant = metrics.filter(pc.is_null(metrics["sample_key"]))
        if per_variant.num_rows:
            # Pivoted over the variants, then spread to each variant's samples.
            variants = pc.fill_null(samples["variant"], "vstar").combine_chunks()
            row_variants = pc.fill_null(per_variant["variant"], "vstar")
            unique = pc.unique(variants)
            position = pc.index_in(variants, value_set=unique)
            for label, values in _pivot(per_variant, unique, row_variants).items():
                columns[label] = pc.take(values, position)
            reference = dict(zip(row_variants.to_pylist(), per_variant["reference"].to_pylist()))
            columns["reference"] = pa.array([reference.get(v) for v in variants.to_pylist()], pa.string())
    columns["similarity_metric"] = pa.array(similarity, pa.string())

    if exists(run.embeddings):
        table = read_table(run.embeddings)
        position = pc.index_in(keys, value_set=table["sample_key"].combine_chunks())
        columns[EMBEDDING] = pc.take(table["embedding"], position)
        columns[EMBEDDING_METRIC] = pc.take(table["metric"], position)
    else:
        columns[EMBEDDING] = pa.nulls(n, pa.list_(pa.float32()))
        columns[EMBEDDING_METRIC] = pa.nulls(n, pa.string())
    return pa.table(columns)


def candidates(run_dirs: list[str]) -> pa.Table:
    """Candidate rows of several runs, in run order; metric columns a run lacks are null there."""
    if not run_dirs:
        raise CurationError("no runs selected")
    tables = [run_candidates(run_dir) for run_dir in run_dirs]
    table = pa.concat_tables(tables, promote_options="permissive")
    # Always present, so a condition on them never names an unknown column.
    for name, type_ in [*((name, pa.float64()) for name in HEADLINE_METRICS), ("reference", pa.string())]:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, type_))
    return table.append_column(ORDER, pa.array(np.arange(table.num_rows)))


# ---- selection ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One selection step and the clips left after it, for the dataset card."""

    description: str
    remaining: int


def near_duplicate_keep(embeddings: np.ndarray, threshold: float, block: int = 1024) -> np.ndarray:
    """Greedy near-duplicate removal over unit rows [N, D] given best first: a row is kept when
    its cosine with every row kept before it is below ``threshold``. Returns a bool mask [N]."""
    n = len(embeddings)
    keep = np.zeros(n, dtype=bool)
    kept = np.empty((0, embeddings.shape[1]), dtype=embeddings.dtype)
    for start in range(0, n, block):
        rows = embeddings[start:start + block]
        blocked = (rows @ kept.T).max(axis=1) >= threshold if len(kept) else np.zeros(len(rows), dtype=bool)
        within = rows @ rows.T
        chosen: list[int] = []
        for i in range(len(rows)):
            if not blocked[i] and not (chosen and within[i, chosen].max() >= threshold):
                chosen.append(i)
        keep[start + np.array(chosen, dtype=np.int64)] = True
        kept = np.concatenate([kept, rows[chosen]])
    return keep


def deduplicate(table: pa.Table, threshold: float, ranking: Ranking) -> pa.Table:
    """``table`` without near-duplicates: of clips whose mean frame embeddings have cosine >=
    ``threshold``, the best by ``ranking`` stays."""
    if not 0 < threshold <= 1:
        raise CurationError(f"the near-duplicate threshold is a cosine in (0, 1], got {threshold}")
    if table.num_rows == 0:
        return table
    missing = table.filter(pc.is_null(table[EMBEDDING]))
    if missing.num_rows:
        runs = sorted(set(missing["run_id"].to_pylist()))
        raise CurationError(f"{missing.num_rows} clips have no frame embeddings (runs {', '.join(runs)}): "
                            "near-duplicate removal needs runs scored with a metric (not --metric none)")
    metrics = set(table[EMBEDDING_METRIC].to_pylist())
    if len(metrics) > 1:
        raise CurationError(f"the clips' embeddings come from different metrics {sorted(metrics)} and cannot be "
                            "compared: select runs of one metric, e.g. --where 'similarity_metric == ...'")
    order = ranking.order_of(table)
    ranked = table.take(order)
    flat = ranked[EMBEDDING].combine_chunks()
    embeddings = flat.flatten().to_numpy().reshape(len(flat), -1).astype(np.float32)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return ranked.filter(pa.array(near_duplicate_keep(embeddings, threshold))).sort_by(ORDER)


def cap_per_prompt(table: pa.Table, limit: int, ranking: Ranking) -> pa.Table:
    """At most ``limit`` clips per prompt, the best by ``ranking``."""
    if limit < 1:
        raise CurationError(f"the cap per prompt must be >= 1, got {limit}")
    ranked = table.take(ranking.order_of(table))
    counts: dict[str, int] = {}
    keep = []
    for prompt in ranked["prompt"].to_pylist():
        counts[prompt] = counts.get(prompt, 0) + 1
        keep.append(counts[prompt] <= limit)
    return ranked.filter(pa.array(keep, pa.bool_())).sort_by(ORDER)


def select(
    table: pa.Table,
    conditions: list[Condition],
    *,
    dedup_threshold: float | None = None,
    keep_best: Ranking = Ranking("coherence"),
    max_per_prompt: int | None = None,
) -> tuple[pa.Table, list[Step]]:
    """Apply the conditions, then near-duplicate removal, then the cap per prompt; returns the
    selected rows and the steps taken (with counts)."""
    steps = [Step("candidates: the ok videos of the selected runs", table.num_rows)]
    for condition in conditions:
        table = table.filter(condition_mask(table, condition))
        steps.append(Step(f"where {condition}", table.num_rows))
    if dedup_threshold is not None or max_per_prompt is not None:
        keep_best.order_of(table)  # an unknown ranking column is an error even when nothing is left
    if dedup_threshold is not None:
        table = deduplicate(table, dedup_threshold, keep_best)
        steps.append(Step(f"near-duplicates removed (cosine >= {dedup_threshold} of mean frame embeddings, "
                          f"best by {keep_best.column}:{keep_best.order} kept)", table.num_rows))
    if max_per_prompt is not None:
        table = cap_per_prompt(table, max_per_prompt, keep_best)
        steps.append(Step(f"at most {max_per_prompt} per prompt (best by {keep_best.column}:{keep_best.order})",
                          table.num_rows))
    return table, steps


# ---- the index ------------------------------------------------------------------------------

def _metric_structs(table: pa.Table) -> pa.Array:
    """Every metric column's non-null values per row, as list<struct<name, value>>."""
    labels = sorted(name for name in table.column_names if _is_metric_column(name))
    if not labels:
        return pa.array([[] for _ in range(table.num_rows)], pa.list_(DATASET_SCHEMA.field("metrics").type.value_type))
    values = np.column_stack([table[name].to_numpy(zero_copy_only=False).astype(np.float64) for name in labels])
    valid = ~np.isnan(values)
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    names = np.broadcast_to(np.array(labels, dtype=object), values.shape)[valid]
    structs = pa.StructArray.from_arrays([pa.array(names, pa.string()), pa.array(values[valid])],
                                         fields=list(DATASET_SCHEMA.field("metrics").type.value_type))
    return pa.ListArray.from_arrays(pa.array(offsets), structs,
                                    type=DATASET_SCHEMA.field("metrics").type)


def _is_metric_column(name: str) -> bool:
    """Pivoted metric columns: the headline ones and every ``<name>@<k>`` (samples columns have no ``@``)."""
    return name in HEADLINE_METRICS or "@" in name


def write_index(url: str, index: pa.Table, version: str) -> None:
    """Write a dataset index (``DATASET_SCHEMA``) atomically, its version in the schema metadata."""
    index = index.cast(DATASET_SCHEMA).replace_schema_metadata({**DATASET_SCHEMA.metadata,
                                                                 RUN_ID_KEY: version.encode()})
    buffer = io.BytesIO()
    pq.write_table(index, buffer)
    write_bytes_atomic(url, buffer.getvalue())


def index_table(selected: pa.Table, index_url: str, output_root: str) -> pa.Table:
    """The dataset index (``DATASET_SCHEMA``) of the selected candidate rows, video URIs recorded
    as seen from ``index_url``."""
    from vstar_model.vsp.captions import frame_captions
    from vstar_model.vsp.embeddings import keyframe_indices

    states = selected["states"].to_pylist()
    frames = selected["num_frames"].to_pylist()
    columns = {
        "clip_id": pc.binary_join_element_wise(selected["run_id"], selected["sample_key"], "_"),
        "video_uri": pa.array([recorded_uri(uri, index_url, output_root) for uri in selected["video_uri"].to_pylist()],
                              pa.string()),
        "keyframe_indices": pa.array([keyframe_indices(len(s), n).tolist() for s, n in zip(states, frames)],
                                     pa.list_(pa.int32())),
        "frame_captions": pa.array([frame_captions(s, n) for s, n in zip(states, frames)], pa.list_(pa.string())),
        "metrics": _metric_structs(selected),
    }
    arrays = [
        columns[field.name] if field.name in columns else selected[field.name].cast(field.type)
        for field in DATASET_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=DATASET_SCHEMA)
