"""The produce-dataset flow on the tiny random Wan 2.1: 4k+1 frames, VSP over latent frames, TAR on blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.produce import produce_dataset
from tasks.evaluate import EvaluationSettings
from tasks.jobs import ModelSettings
from vstar_data.manifest import verify_manifest
from vstar_data.schemas import SAMPLES_SCHEMA, read_table
from vstar_data.storage import list_files, read_bytes
from vstar_model.backbones.presets import WAN_NEGATIVE_PROMPT

pytestmark = pytest.mark.usefixtures("prefect_harness")
CATALOG = str(Path(__file__).resolve().parents[2] / "catalogs" / "demo_wan.yaml")  # 17 and 33 frames


def test_tiny_wan_run_is_complete_with_tar_and_vsp_and_records_family_blocks_and_sigma(monkeypatch):
    """The built-in tiny Wan, built on first use (a clean checkout has no model files)."""
    from vstar_model.sampling import dit

    installed = []  # (TAR blocks, steps declared) per generated video

    def recording(transformer, tar):
        handle = real(transformer, tar)
        installed.append((dict(handle.blocks), []))
        steps = installed[-1][1]
        set_step = handle.set_step
        handle.set_step = lambda step, total: (steps.append(step), set_step(step, total))
        return handle

    real = dit.apply_dit_tar
    monkeypatch.setattr(dit, "apply_dit_tar", recording)
    run_dir = produce_dataset(
        catalog=CATALOG, output_root="memory://vstar-wan", variants=["vstar", "vstar_riflex", "baseline"],
        model=ModelSettings(preset="tiny-wan", steps=2, height=32, width=32),
        evaluation=EvaluationSettings(metric="pixel_cosine"),
    )
    files = set(list_files(run_dir))
    assert {"videos/winter-to-spring__s0.mp4", "videos/sunset-over-city__s0__vstar_riflex.mp4",
            "videos/sunset-over-city__s0__baseline.mp4", "manifest.json", "metrics.parquet"} <= files
    samples = read_table(f"{run_dir}/samples.parquet")
    assert samples.schema.remove_metadata() == SAMPLES_SCHEMA.remove_metadata()
    rows = {(r["catalog_id"], r["variant"]): r for r in samples.to_pylist()}
    assert {r["status"] for r in rows.values()} == {"ok"} and len(rows) == 6
    assert {r["catalog_id"]: r["num_frames"] for r in rows.values()} == {"winter-to-spring": 17, "sunset-over-city": 33}
    vstar = rows[("sunset-over-city", "vstar")]
    assert (vstar["model_preset"], vstar["model_family"], vstar["fps"]) == ("tiny-wan", "wan", 16)
    assert (vstar["tar"], vstar["tar_layers"], vstar["tar_sigmas"]) == ("b0-1D1s0.5", ["b0-1"], [1.0])
    assert (vstar["vsp"], vstar["riflex"], vstar["flow_shift"]) == (True, False, 3.0)
    assert len(vstar["states"]) == 3 and vstar["negative_prompt"] == WAN_NEGATIVE_PROMPT  # Wan's own, by default
    assert rows[("sunset-over-city", "vstar_riflex")]["riflex"] is True
    baseline = rows[("sunset-over-city", "baseline")]
    assert (baseline["tar"], baseline["tar_layers"], baseline["vsp"]) == ("off", [], False)

    # TAR really ran: both blocks regularised in the videos that ask for it, steps declared each step.
    with_tar = [blocks for blocks, steps in installed if blocks]
    assert len(with_tar) == 4 and all(set(b.values()) == {0, 1} for b in with_tar)
    assert all(steps == [0, 1] for _, steps in installed)

    manifest = json.loads(read_bytes(f"{run_dir}/manifest.json"))
    assert {(g["variant"], g["model_family"], g["tar"], tuple(g["tar_sigmas"]), g["riflex"])
            for g in manifest["generation"]} == {
        ("vstar", "wan", "b0-1D1s0.5", (1.0,), False), ("vstar_riflex", "wan", "b0-1D1s0.5", (1.0,), True),
        ("baseline", "wan", "off", (), False),
    }
    assert verify_manifest(run_dir) == []


def test_frame_counts_wan_cannot_make_stop_the_run_before_any_work(tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("- id: a\n  prompt: a cat\n  frames: 16\n- id: b\n  prompt: a dog\n  frames: 17\n")
    root = tmp_path / "out"
    with pytest.raises(ValueError, match=r"entry 'a': model 'tiny-wan' makes 4k\+1 frames"):
        produce_dataset(catalog=str(catalog), output_root=str(root), model=ModelSettings(preset="tiny-wan"),
                        evaluation=EvaluationSettings(metric="pixel_cosine"))
    assert not root.exists()
