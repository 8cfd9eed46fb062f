"""URIs recorded relative to the file that records them, resolved from anywhere."""

from __future__ import annotations

import os

import pytest

from vstar_data.uris import absolute_url, is_inside, recorded_uri, relative_uri, resolve_uri


@pytest.mark.parametrize(
    ("recorded_in", "uri", "expected"),
    [
        ("s3://bucket/out/runs/r1/samples.parquet", "videos/a.mp4", "s3://bucket/out/runs/r1/videos/a.mp4"),
        ("s3://bucket/out/runs/_index/r1.parquet", "../r1/manifest.json", "s3://bucket/out/runs/r1/manifest.json"),
        (
            "gs://b/out/datasets/d/v1/index.parquet",
            "../../../runs/r1/videos/a.mp4",
            "gs://b/out/runs/r1/videos/a.mp4",
        ),
        ("memory://root/runs/r1/samples.parquet", "videos/a.mp4", "memory://root/runs/r1/videos/a.mp4"),
        ("/data/out/runs/r1/samples.parquet", "videos/a.mp4", "/data/out/runs/r1/videos/a.mp4"),
        ("file:///data/out/runs/r1/samples.parquet", "videos/a.mp4", "/data/out/runs/r1/videos/a.mp4"),
        # Absolute URIs (a user's real clips, a catalog) come back as they are.
        ("s3://bucket/out/runs/r1/samples.parquet", "s3://other/clip.mp4", "s3://other/clip.mp4"),
        ("s3://bucket/out/runs/r1/samples.parquet", "/clips/clip.mp4", "/clips/clip.mp4"),
    ],
)
def test_resolve_uri_joins_relative_uris_onto_the_recording_files_directory(recorded_in, uri, expected):
    assert resolve_uri(recorded_in, uri) == expected


def test_a_relative_base_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("out/runs/r1/samples.parquet", "videos/a.mp4") == str(tmp_path / "out/runs/r1/videos/a.mp4")
    assert absolute_url("./catalogs/demo.yaml") == str(tmp_path / "catalogs/demo.yaml")
    assert absolute_url("s3://bucket/catalog.yaml") == "s3://bucket/catalog.yaml"


def test_relative_uri_inverts_resolve_uri():
    cases = [
        ("s3://b/out/runs/r1/videos/a.mp4", "s3://b/out/runs/r1/samples.parquet", "videos/a.mp4"),
        ("s3://b/out/runs/r1/manifest.json", "s3://b/out/runs/_index/r1.parquet", "../r1/manifest.json"),
        ("/o/runs/r1/videos/a.mp4", "/o/datasets/d/v1/index.parquet", "../../../runs/r1/videos/a.mp4"),
    ]
    for target, recorded_in, relative in cases:
        assert relative_uri(target, recorded_in) == relative
        assert resolve_uri(recorded_in, relative) == target


def test_no_relative_uri_joins_two_stores():
    with pytest.raises(ValueError, match="different stores"):
        relative_uri("s3://b/x.mp4", "/local/samples.parquet")


def test_a_uri_climbing_above_a_bucket_is_an_error():
    with pytest.raises(ValueError, match="above the top"):
        resolve_uri("s3://bucket/index.parquet", "../../x.mp4")


def test_recorded_uri_is_relative_inside_the_output_root_and_absolute_outside(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    index = "out/datasets/d/v1/index.parquet"
    assert recorded_uri("out/runs/r1/videos/a.mp4", index, "out") == "../../../runs/r1/videos/a.mp4"
    assert recorded_uri("clips/real.mp4", index, "out") == os.path.join(str(tmp_path), "clips/real.mp4")
    assert recorded_uri("s3://b/real.mp4", index, "out") == "s3://b/real.mp4"
    # A sibling whose name starts like the root is not inside it.
    assert not is_inside("outputs-old/runs/x.mp4", "out") and not is_inside("out-2/x", "out")
    assert is_inside("out/x", "out/") and is_inside("s3://b/out/x", "s3://b/out")
