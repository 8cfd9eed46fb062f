from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from vstar_data.runs import CachePaths, RunPaths, check_run_id, new_run_id


def test_run_ids_sort_by_time_and_are_unique():
    start = datetime(2026, 11, 2, 23, 59, 59, tzinfo=UTC)
    times = [start + timedelta(seconds=s) for s in (0, 1, 3600, 86400 * 40)]
    ids = [new_run_id(moment) for moment in times]
    assert ids == sorted(ids)
    assert all(check_run_id(run_id) == run_id for run_id in ids)
    assert ids[1].startswith("20261103T000000Z-")
    assert len({new_run_id(start) for _ in range(200)}) == 200


def test_run_id_uses_utc():
    plus_two = timezone(timedelta(hours=2))
    run_id = new_run_id(datetime(2026, 1, 1, 1, 0, tzinfo=plus_two))
    assert run_id.startswith("20251231T230000Z-")


def test_run_id_rejects_naive_time_and_bad_ids():
    with pytest.raises(ValueError, match="timezone-aware"):
        new_run_id(datetime(2026, 1, 1))
    for bad in ["latest", "../20261102T000000Z-abcdef", "20261102T000000Z-ABCDEF"]:
        with pytest.raises(ValueError, match="not of the form"):
            check_run_id(bad)
    with pytest.raises(ValueError):
        RunPaths("memory://out", "bad")


def test_run_paths_layout():
    paths = RunPaths("s3://bucket/out", "20261102T120000Z-a1b2c3")
    run = "s3://bucket/out/runs/20261102T120000Z-a1b2c3"
    assert paths.run_dir == run
    assert (paths.synopses, paths.samples, paths.metrics, paths.manifest) == (
        f"{run}/synopses.parquet",
        f"{run}/samples.parquet",
        f"{run}/metrics.parquet",
        f"{run}/manifest.json",
    )
    assert (paths.videos_dir, paths.plots_dir) == (f"{run}/videos", f"{run}/plots")
    assert paths.video("winter-to-spring", 7) == f"{run}/videos/winter-to-spring__s7.mp4"
    assert paths.strip("winter-to-spring", 7) == f"{run}/videos/winter-to-spring__s7.png"
    assert paths.index_entry == "s3://bucket/out/runs/_index/20261102T120000Z-a1b2c3.parquet"


@pytest.mark.parametrize("entry_id", ["../x", "a/b", "a..b", "", ".hidden"])
def test_video_names_reject_unsafe_ids(entry_id):
    with pytest.raises(ValueError, match="id"):
        RunPaths("/out", "20261102T120000Z-a1b2c3").video(entry_id, 0)


@pytest.mark.parametrize("seed", [-1, 2**63, 1.0, True])
def test_video_names_reject_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed"):
        RunPaths("/out", "20261102T120000Z-a1b2c3").strip("ok", seed)


def test_cache_paths():
    cache = CachePaths("/out")
    key = "0123456789abcdef"
    assert cache.synopsis(key) == f"/out/cache/synopses/{key}.json"
    assert cache.sample_record(key) == f"/out/cache/samples/{key}.json"
    assert cache.video(key) == f"/out/cache/samples/{key}.mp4"
    assert cache.strip(key) == f"/out/cache/samples/{key}.png"
    with pytest.raises(ValueError, match="cache key"):
        cache.video("../../etc/passwd")
