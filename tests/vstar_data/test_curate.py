"""Curation on a small hand-made catalog: every filter, near-duplicate and caption result below is
worked out by hand from the values in ``catalog_runs``."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from tests.synthetic_runs import START, Clip, write_run
from vstar_data.curate import (
    CurationError,
    Ranking,
    candidates,
    index_table,
    near_duplicate_keep,
    parse_condition,
    select,
)
from vstar_data.storage import sha256
from vstar_data.uris import resolve_uri

RUN_A, RUN_B = "20261201T120000Z-aaaaaa", "20261202T120000Z-bbbbbb"


@pytest.fixture
def catalog_runs(tmp_path):
    """Run A (clips 1-5, clip 4 failed) and run B a day later (clips 6, 7); see the module docstring."""
    root = str(tmp_path / "out")

    def clip(number, catalog_id, seed, coherence, slope, embedding, **fields):
        return Clip(catalog_id, seed, metrics={"coherence": coherence, "dynamics_slope": slope,
                                               "mean@2": coherence - 0.1, "temporal_flicker": 0.9,
                                               "motion_magnitude": number / 10},
                    embedding=embedding, **fields)

    write_run(root, RUN_A, [
        clip(1, "meadow", 0, 0.90, -0.004, [1, 0, 0], states=["A", "B", "C"]),
        clip(2, "meadow", 1, 0.85, -0.001, [0.99, 0.141, 0]),  # cosine 0.99 with clip 1
        clip(3, "candle", 0, 0.70, -0.003, [0, 1, 0], variant="baseline", tar=None),
        Clip("city", 0, status="failed"),
        clip(5, "city", 1, 0.95, -0.005, [0, 0, 1], variant="tar"),
    ], created_at=START, variant_metrics={"vstar": {"overall_score": 0.05, "wasserstein@1": 0.04},
                                          "baseline": {"overall_score": 0.2}, "tar": {"overall_score": 0.08}},
              reference="/refs/real")
    write_run(root, RUN_B, [
        clip(6, "meadow", 0, 0.92, -0.0025, [1, 0, 0]),  # the same embedding as clip 1
        clip(7, "river", 0, 0.81, -0.002, [0.6, 0.8, 0]),  # cosine 0.6 with clip 1, 0.8 with clip 3
    ], created_at=START + timedelta(days=1))
    return root


def _clips(table) -> list[tuple[str, str, int]]:
    """(run letter, catalog id, seed) of each row, in table order."""
    return [("A" if r["run_id"] == RUN_A else "B", r["catalog_id"], r["seed"])
            for r in table.select(["run_id", "catalog_id", "seed"]).to_pylist()]


def _runs(root):
    return [f"{root}/runs/{RUN_A}", f"{root}/runs/{RUN_B}"]


def test_candidates_are_the_ok_videos_with_metrics_as_columns(catalog_runs):
    table = candidates(_runs(catalog_runs))
    assert _clips(table) == [("A", "meadow", 0), ("A", "meadow", 1), ("A", "candle", 0), ("A", "city", 1),
                             ("B", "meadow", 0), ("B", "river", 0)]
    first = table.to_pylist()[0]
    assert (first["coherence"], first["mean@2"], first["motion_magnitude"]) == (0.90, pytest.approx(0.8), 0.1)
    assert first["overall_score"] == 0.05 and first["wasserstein@1"] == 0.04 and first["reference"] == "/refs/real"
    assert first["similarity_metric"] == "pixel_cosine"
    # Run B was scored without a reference: its per-variant columns are null.
    assert table.to_pylist()[-1]["overall_score"] is None


@pytest.mark.parametrize(("conditions", "expected"), [
    (["coherence >= 0.8"], [("A", "meadow", 0), ("A", "meadow", 1), ("A", "city", 1), ("B", "meadow", 0),
                            ("B", "river", 0)]),
    (["coherence >= 0.8", "dynamics_slope <= -0.002"], [("A", "meadow", 0), ("A", "city", 1), ("B", "meadow", 0),
                                                        ("B", "river", 0)]),
    (["overall_score <= 0.1"], [("A", "meadow", 0), ("A", "meadow", 1), ("A", "city", 1)]),
    (["variant in (baseline, tar)"], [("A", "candle", 0), ("A", "city", 1)]),
    (["variant != vstar", "tar == '64D1'"], [("A", "city", 1)]),
    (["mean@2 > 0.81"], [("A", "city", 1), ("B", "meadow", 0)]),
    (["status == ok", "model_preset == tiny", "vsp == true"], [("A", "meadow", 0), ("A", "meadow", 1),
                                                             ("A", "candle", 0), ("A", "city", 1),
                                                             ("B", "meadow", 0), ("B", "river", 0)]),
    (["seed in (1, 7)"], [("A", "meadow", 1), ("A", "city", 1)]),
])
def test_conditions_select_the_hand_computed_clips(catalog_runs, conditions, expected):
    selected, steps = select(candidates(_runs(catalog_runs)), [parse_condition(c) for c in conditions])
    assert _clips(selected) == expected
    assert [s.remaining for s in steps][0] == 6 and steps[-1].remaining == len(expected)


def test_near_duplicates_keep_the_best_by_the_chosen_metric(catalog_runs):
    table = candidates(_runs(catalog_runs))
    # By coherence: 5 (.95), 6 (.92) kept; 1 and 2 duplicate 6; 7 (.81) and 3 (.70) are far enough.
    selected, _ = select(table, [], dedup_threshold=0.95)
    assert _clips(selected) == [("A", "candle", 0), ("A", "city", 1), ("B", "meadow", 0), ("B", "river", 0)]
    # Lowest slope first: 5, 1, 3 kept; 6 duplicates 1; 7 kept; 2 duplicates 1.
    selected, _ = select(table, [], dedup_threshold=0.95, keep_best=Ranking.parse("dynamics_slope:min"))
    assert _clips(selected) == [("A", "meadow", 0), ("A", "candle", 0), ("A", "city", 1), ("B", "river", 0)]
    # At 0.75, river (0.8 with candle, best first by coherence) removes candle too.
    selected, _ = select(table, [], dedup_threshold=0.75)
    assert _clips(selected) == [("A", "city", 1), ("B", "meadow", 0), ("B", "river", 0)]


def test_greedy_dedup_compares_with_kept_rows_only_across_blocks():
    # b duplicates a, c duplicates b but not a: with b dropped, c stays — in one block or across blocks.
    rows = np.array([[1, 0], [0.96, 0.28], [0.85, 0.53]], dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    for block in (1, 2, 1024):
        assert near_duplicate_keep(rows, 0.95, block=block).tolist() == [True, False, True]


def test_cap_per_prompt_keeps_the_best(catalog_runs):
    table = candidates(_runs(catalog_runs))
    selected, steps = select(table, [], max_per_prompt=2)  # meadow: 6 (.92) and 1 (.90), not 2 (.85)
    assert _clips(selected) == [("A", "meadow", 0), ("A", "candle", 0), ("A", "city", 1), ("B", "meadow", 0),
                                ("B", "river", 0)]
    selected, _ = select(table, [], max_per_prompt=1, keep_best=Ranking.parse("dynamics_slope:min"))
    assert _clips(selected) == [("A", "meadow", 0), ("A", "candle", 0), ("A", "city", 1), ("B", "river", 0)]
    assert steps[-1].description == "at most 2 per prompt (best by coherence:max)"


def test_index_rows_carry_captions_keyframes_and_resolvable_uris(catalog_runs):
    selected, _ = select(candidates(_runs(catalog_runs)), [parse_condition("catalog_id == meadow"),
                                                            parse_condition("seed == 0")])
    index_url = f"{catalog_runs}/datasets/d/20261203T000000Z-cccccc/index.parquet"
    rows = index_table(selected, index_url, catalog_runs).to_pylist()
    first = rows[0]
    assert first["states"] == ["A", "B", "C"] and first["keyframe_indices"] == [0, 4, 8]
    assert first["frame_captions"] == ["A", "A", "B", "B", "B", "B", "C", "C", "C"]
    assert first["video_uri"] == f"../../../runs/{RUN_A}/videos/meadow__s0.mp4"
    assert first["clip_id"] == f"{RUN_A}_{first['sample_key']}" and "." not in first["clip_id"]
    for row in rows:
        assert sha256(resolve_uri(index_url, row["video_uri"])) == row["video_sha256"]
    metrics = {m["name"]: m["value"] for m in first["metrics"]}
    assert metrics["coherence"] == 0.90 and metrics["overall_score"] == 0.05 and metrics["wasserstein@1"] == 0.04
    assert "seed" not in metrics and "guidance_scale" not in metrics
    assert rows[1]["frame_captions"] == ["a state"] * 9 and rows[1]["overall_score"] is None


def test_an_unknown_column_is_named_with_the_known_ones(catalog_runs):
    table = candidates(_runs(catalog_runs))
    with pytest.raises(CurationError, match=r"unknown column 'coherance' in condition.*known columns: .*coherence"
                                            r".*mean@2\.\.2"):
        select(table, [parse_condition("coherance >= 0.8")])
    with pytest.raises(CurationError, match="unknown column 'quality' in ranking"):
        select(table, [], dedup_threshold=0.9, keep_best=Ranking.parse("quality"))
    with pytest.raises(CurationError, match="column 'catalog_id' holds strings, not numbers"):
        select(table, [parse_condition("catalog_id > 3")])


@pytest.mark.parametrize("text", ["coherence >> 0.8", "coherence 0.8", ">= 0.8", "variant in vstar",
                                  "prompt == a b c", "coherence in ()"])
def test_malformed_conditions_are_refused_with_the_expected_form(text):
    with pytest.raises(CurationError, match="condition"):
        parse_condition(text)


def test_literals_are_numbers_booleans_quoted_or_bare_words():
    assert parse_condition("dynamics_slope <= -0.002").value == -0.002
    assert parse_condition("seed == 3").value == 3 and parse_condition("vsp == false").value is False
    assert parse_condition("prompt == 'a b, c'").value == "a b, c"
    assert parse_condition("variant in [vstar, 'tar']").value == ("vstar", "tar")
    assert parse_condition("similarity_metric == dreamsim_ensemble").value == "dreamsim_ensemble"


def test_dedup_needs_embeddings_of_one_metric(catalog_runs, tmp_path):
    write_run(catalog_runs, "20261203T120000Z-dddddd", [Clip("lake", metrics={"coherence": 0.5})],
              created_at=START + timedelta(days=2))
    table = candidates([*_runs(catalog_runs), f"{catalog_runs}/runs/20261203T120000Z-dddddd"])
    with pytest.raises(CurationError, match="1 clips have no frame embeddings.*20261203T120000Z-dddddd"):
        select(table, [], dedup_threshold=0.9)
    assert select(table, [parse_condition("catalog_id != lake")], dedup_threshold=0.9)[0].num_rows == 4
