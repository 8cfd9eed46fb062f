"""Prompt catalogs: what to generate, read from YAML, JSON, CSV or Parquet on any fsspec URL.

An entry::

    - id: winter-to-spring            # unique, file-name safe: [A-Za-z0-9][A-Za-z0-9._-]*
      prompt: A meadow turning from winter to spring
      synopsis:                       # optional: bring your own states, no LLM call
        - a meadow under deep snow
        - green shoots in melting snow
        - a meadow full of spring flowers
      frames: 32                      # optional overrides of the run's parameters
      seeds: [0, 7]                   # or num_samples: 2 (not both)
      tar: "..."                      # TAR preset/spec or auto, checked by the injected validator
      model: "..."                    # model preset, checked by the injected validator
      negative_prompt: blurry, static
      tar_band_from: clips/rainbow.mp4  # optional: ΔA from this real clip's frame similarity (Fig. 9)
      gtn_reference: clips/bloom.mp4    # optional: the real clip of the gtn variants (Appendix B)

YAML and JSON files hold a list of such mappings. CSV files have a header row naming these
fields; empty cells are absent values; ``synopsis`` and ``seeds`` cells hold either a JSON
list (``["a cat", "a lion"]``, ``[0, 7]``) or ``|``-separated items (``a cat | a lion``,
``0|7``). Parquet files have one column per field, ``synopsis`` as list<string> and
``seeds`` as list<int64>.

:func:`load_catalog` checks the whole file before returning and raises one
:class:`CatalogError` listing every problem with its file, row and field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from vstar_data.runs import ENTRY_ID_PATTERN
from vstar_data.schemas import read_parquet_bytes
from vstar_data.storage import StorageError, read_bytes

DEFAULT_MAX_FRAMES = 256
AUTO_TAR = "auto"  # tar: auto, a σ searched per entry (tasks/tuning.py)
MAX_TEXT_CHARS = 2000
MAX_SEED = 2**63 - 1
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

# A preset check raises ValueError for an unknown name; a collection lists the known names.
PresetCheck = Callable[[str], object] | Collection[str]
# A frame check raises ValueError for a frame count a model preset cannot make.
FramesCheck = Callable[[str, int], object]


class CatalogEntry(BaseModel):
    """One prompt of a catalog and its optional per-entry overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: str = Field(pattern=ENTRY_ID_PATTERN.pattern)
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    synopsis: list[str] | None = Field(default=None, min_length=1)
    frames: int | None = Field(default=None, ge=1)
    num_samples: int | None = Field(default=None, ge=1)
    seeds: list[int] | None = Field(default=None, min_length=1)
    tar: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)
    negative_prompt: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    tar_band_from: str | None = Field(default=None, min_length=1)  # a real clip: its frame similarity is ΔA
    gtn_reference: str | None = Field(default=None, min_length=1)  # a real clip for the gtn variants

    @field_validator("id")
    @classmethod
    def _no_parent_reference(cls, value: str) -> str:
        if ".." in value:
            raise ValueError(f"id {value!r} must not contain '..'")
        return value

    @field_validator("synopsis")
    @classmethod
    def _states_are_text(cls, states: list[str] | None) -> list[str] | None:
        for number, state in enumerate(states or (), start=1):
            if not state:
                raise ValueError(f"state {number} is empty")
            if len(state) > MAX_TEXT_CHARS:
                raise ValueError(f"state {number} is longer than {MAX_TEXT_CHARS} characters")
        return states

    @field_validator("frames")
    @classmethod
    def _frames_within_limit(cls, frames: int | None, info: ValidationInfo) -> int | None:
        max_frames = (info.context or {}).get("max_frames", DEFAULT_MAX_FRAMES)
        if frames is not None and frames > max_frames:
            raise ValueError(f"{frames} frames is above the maximum of {max_frames}")
        return frames

    @field_validator("seeds")
    @classmethod
    def _seeds_valid(cls, seeds: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if seeds is None:
            return None
        if info.data.get("num_samples") is not None:
            raise ValueError("give either seeds or num_samples, not both")
        out_of_range = [seed for seed in seeds if not 0 <= seed <= MAX_SEED]
        if out_of_range:
            raise ValueError(f"seeds must be in [0, 2**63 - 1], got {out_of_range}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {list(seeds)}")
        return seeds

    @field_validator("tar", "model")
    @classmethod
    def _known_preset(cls, name: str | None, info: ValidationInfo) -> str | None:
        check = (info.context or {}).get(f"check_{info.field_name}")
        if name is not None and check is not None:
            check(name)
        return name

    @model_validator(mode="after")
    def _band_or_search(self) -> CatalogEntry:
        if self.tar == AUTO_TAR and self.tar_band_from is not None:
            raise ValueError(
                "tar 'auto' searches the σ of TAR's Gaussian band; tar_band_from replaces that band: give one of them"
            )
        return self

    @model_validator(mode="after")
    def _frames_fit_the_model(self, info: ValidationInfo) -> CatalogEntry:
        check = (info.context or {}).get("check_frames")
        if check is not None and self.model is not None and self.frames is not None:
            check(self.model, self.frames)  # e.g. Wan's VAE makes 4k+1 frames only
        return self

    def resolve_seeds(self, *, default_num_samples: int, base_seed: int) -> list[int]:
        """The seeds to generate: the entry's own, else ``base_seed, base_seed + 1, ...`` for
        its ``num_samples`` (or ``default_num_samples``)."""
        if self.seeds is not None:
            return list(self.seeds)
        count = self.num_samples or default_num_samples
        if count < 1:
            raise ValueError(f"default_num_samples must be >= 1, got {default_num_samples}")
        return list(range(base_seed, base_seed + count))


class Catalog(BaseModel):
    """The entries of one catalog file, in file order, and where they came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    sha256: str  # of the file's bytes: identifies the catalog version in run records
    entries: tuple[CatalogEntry, ...]

    def __iter__(self) -> Iterator[CatalogEntry]:  # type: ignore[override]
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, entry_id: str) -> CatalogEntry:
        for entry in self.entries:
            if entry.id == entry_id:
                return entry
        raise KeyError(f"no entry {entry_id!r} in catalog {self.source}")


@dataclass(frozen=True)
class CatalogProblem:
    """One problem in a catalog file; ``where`` is e.g. ``row 3 (line 12)`` or ``line 4``."""

    source: str
    where: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        parts = [self.source]
        if self.where:
            parts.append(self.where)
        if self.field:
            parts.append(f"field {self.field!r}")
        return f"{': '.join(parts)}: {self.message}"


class CatalogError(ValueError):
    """A catalog is unusable; ``problems`` lists everything wrong with it."""

    def __init__(self, problems: list[CatalogProblem]):
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"invalid catalog {problems[0].source} ({count}):\n{lines}")


@dataclass(frozen=True)
class _RawEntry:
    """An entry as parsed from the file, before validation; ``error`` if it could not be."""

    where: str
    data: Any
    error: str | None = None


class _Problems:
    def __init__(self, source: str):
        self.source = source
        self.items: list[CatalogProblem] = []

    def add(self, where: str | None, field: str | None, message: str) -> None:
        self.items.append(CatalogProblem(self.source, where, field, message))

    def fail(self, where: str | None, field: str | None, message: str) -> CatalogError:
        self.add(where, field, message)
        return CatalogError(self.items)


def load_catalog(
    path_or_url: str,
    *,
    max_frames: int = DEFAULT_MAX_FRAMES,
    check_tar: PresetCheck | None = None,
    check_model: PresetCheck | None = None,
    check_frames: FramesCheck | None = None,
) -> Catalog:
    """Read and check the catalog at ``path_or_url`` (any fsspec URL).

    Args:
        max_frames: the largest ``frames`` an entry may ask for.
        check_tar: known TAR presets, or a callable raising ValueError for a bad TAR spec
            (e.g. ``vstar_model.tar.unet.parse_tar``).
        check_model: known model presets, or a callable raising ValueError for an unknown one.
        check_frames: a callable (model, frames) raising ValueError when an entry giving both asks
            for frames its model cannot make.

    Raises:
        CatalogError: the file cannot be read or parsed, or any entry is invalid.
    """
    try:
        raw = read_bytes(path_or_url)
    except StorageError as error:
        raise CatalogError([CatalogProblem(path_or_url, None, None, str(error))]) from error
    return parse_catalog(
        raw, source=path_or_url, max_frames=max_frames, check_tar=check_tar, check_model=check_model,
        check_frames=check_frames,
    )


def parse_catalog(
    raw: bytes,
    *,
    source: str,
    max_frames: int = DEFAULT_MAX_FRAMES,
    check_tar: PresetCheck | None = None,
    check_model: PresetCheck | None = None,
    check_frames: FramesCheck | None = None,
) -> Catalog:
    """Check the catalog file content ``raw``; its format comes from ``source``'s extension.

    See :func:`load_catalog` for the arguments.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    problems = _Problems(source)
    suffix = re.search(r"\.[A-Za-z]+$", source.split("?")[0])
    file_format = FORMATS.get(suffix.group(0).lower()) if suffix else None
    if file_format is None:
        raise problems.fail(
            None, None, f"unsupported catalog format; use one of {', '.join(sorted(FORMATS))}"
        )
    if file_format == "parquet":
        raw_entries = _parquet_entries(raw, problems)
    else:
        text = _decode_utf8(raw, problems)
        raw_entries = {"yaml": _yaml_entries, "json": _json_entries, "csv": _csv_entries}[
            file_format
        ](text, problems)
    if not raw_entries:
        raise problems.fail(None, None, "the catalog has no entries")

    context = {
        "max_frames": max_frames,
        "check_tar": _as_check(check_tar, "TAR preset"),
        "check_model": _as_check(check_model, "model preset"),
        "check_frames": check_frames,
    }
    entries: list[CatalogEntry] = []
    first_row_of_id: dict[str, tuple[str, str]] = {}
    for raw_entry in raw_entries:
        entry = _validate_entry(raw_entry, context, problems)
        if entry is None:
            continue
        # Case-insensitive: ids become file names, and "A" and "a" collide on macOS/Windows.
        seen = first_row_of_id.setdefault(entry.id.casefold(), (raw_entry.where, entry.id))
        if seen[0] != raw_entry.where:
            problems.add(
                raw_entry.where,
                "id",
                f"duplicate id {entry.id!r} (first used as {seen[1]!r} in {seen[0]})",
            )
        entries.append(entry)
    if problems.items:
        raise CatalogError(problems.items)
    return Catalog(source=source, sha256=hashlib.sha256(raw).hexdigest(), entries=tuple(entries))


def _as_check(check: PresetCheck | None, what: str) -> Callable[[str], object] | None:
    if check is None or callable(check):
        return check
    known = frozenset(check)

    def is_known(name: str) -> None:
        if name not in known:
            raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(known))}")

    return is_known


def _validate_entry(
    raw_entry: _RawEntry, context: Mapping[str, Any], problems: _Problems
) -> CatalogEntry | None:
    if raw_entry.error is not None:
        problems.add(raw_entry.where, None, raw_entry.error)
        return None
    if not isinstance(raw_entry.data, Mapping):
        problems.add(
            raw_entry.where,
            None,
            f"an entry must be a mapping, got {type(raw_entry.data).__name__}",
        )
        return None
    try:
        # Strict: YAML's `frames: "16"` or `prompt: yes` are mistakes, not values to coerce.
        return CatalogEntry.model_validate(raw_entry.data, strict=True, context=context)
    except ValidationError as error:
        for detail in error.errors():
            field = ".".join(str(part) for part in detail["loc"]) or None
            problems.add(raw_entry.where, field, _describe(detail))
        return None


def _describe(detail: Mapping[str, Any]) -> str:
    kind, value = detail["type"], detail.get("input")
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return f"unknown field; allowed: {', '.join(CatalogEntry.model_fields)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return (
            f"{value!r} is not a safe file name: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    message = detail["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "string_too_long", "too_long"):
        return message
    if kind == "string_type" and isinstance(value, (bool, int, float)):
        return f"{message} (got {value!r}; quote text that YAML reads as a number or boolean)"
    shown = repr(value) if not isinstance(value, (Mapping, list, tuple)) else type(value).__name__
    return f"{message} (got {shown})"


def _decode_utf8(raw: bytes, problems: _Problems) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise problems.fail(
            f"line {line}",
            None,
            f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start}); "
            "save the file as UTF-8",
        ) from error


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_entries(text: str, problems: _Problems) -> list[_RawEntry]:
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        message = " ".join(
            str(part)
            for part in (getattr(error, "context", None), getattr(error, "problem", None))
            if part
        )
        raise problems.fail(where, None, f"YAML syntax error: {message or error}") from error
    finally:
        loader.dispose()
    if data is None:
        return []
    if not isinstance(data, list):
        raise problems.fail(None, None, f"expected a list of entries, got {type(data).__name__}")
    return [
        _RawEntry(f"row {number} (line {item.start_mark.line + 1})", value)
        for number, (item, value) in enumerate(zip(node.value, data, strict=True), start=1)
    ]


def _json_entries(text: str, problems: _Problems) -> list[_RawEntry]:
    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        if duplicated:
            raise ValueError(f"duplicate key(s) {duplicated}")
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        raise problems.fail(
            f"line {error.lineno}, column {error.colno}", None, f"JSON syntax error: {error.msg}"
        ) from error
    except ValueError as error:
        raise problems.fail(None, None, f"JSON error: {error}") from error
    if not isinstance(data, list):
        raise problems.fail(None, None, f"expected a list of entries, got {type(data).__name__}")
    return [_RawEntry(f"row {number}", value) for number, value in enumerate(data, start=1)]


_INT_CELL = re.compile(r"^[+-]?\d+$")
_LIST_FIELDS = ("synopsis", "seeds")
_INT_FIELDS = ("frames", "num_samples")


def _csv_entries(text: str, problems: _Problems) -> list[_RawEntry]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [name.strip() for name in header]
        unknown = [name for name in header if name not in CatalogEntry.model_fields]
        for name in unknown:
            problems.add(
                "line 1", name, f"unknown column; allowed: {', '.join(CatalogEntry.model_fields)}"
            )
        duplicated = sorted({name for name in header if header.count(name) > 1})
        for name in duplicated:
            problems.add("line 1", name, "column appears more than once")
        if unknown or duplicated:
            raise CatalogError(problems.items)
        entries = []
        line = reader.line_num + 1
        for cells in reader:
            if any(cell.strip() for cell in cells):
                entries.append(_csv_entry(f"line {line}", header, cells))
            line = reader.line_num + 1
    except csv.Error as error:
        raise problems.fail(
            f"line {reader.line_num}", None, f"CSV syntax error: {error}"
        ) from error
    return entries


def _csv_entry(where: str, header: list[str], cells: list[str]) -> _RawEntry:
    if len(cells) != len(header):
        return _RawEntry(
            where, None, f"{len(cells)} cells but the header has {len(header)} columns"
        )
    data: dict[str, Any] = {}
    for name, cell in zip(header, cells, strict=True):
        cell = cell.strip()
        if not cell:
            continue  # an empty cell is an absent value
        if name in _LIST_FIELDS:
            data[name] = _csv_list(cell, integers=name == "seeds")
        elif name in _INT_FIELDS:
            data[name] = int(cell) if _INT_CELL.match(cell) else cell
        else:
            data[name] = cell
    return _RawEntry(where, data)


def _csv_list(cell: str, *, integers: bool) -> Any:
    """A JSON list cell as is; ``a | b`` split on ``|``; integer items converted for seeds.
    Anything unparsable is passed on unchanged, for validation to report."""
    if cell.startswith("["):
        try:
            return json.loads(cell)
        except ValueError:
            return cell
    items = [item.strip() for item in cell.split("|")]
    if integers:
        return [int(item) if _INT_CELL.match(item) else item for item in items]
    return items


def _parquet_entries(raw: bytes, problems: _Problems) -> list[_RawEntry]:
    try:
        table = read_parquet_bytes(raw)
    except (pa.ArrowException, OSError) as error:
        raise problems.fail(None, None, f"not a readable Parquet file: {error}") from error
    return [
        _RawEntry(
            f"row {number}", {name: value for name, value in row.items() if value is not None}
        )
        for number, row in enumerate(table.to_pylist(), start=1)
    ]
