"""The on-disk format: tar + DALI index, Parquet, atomic writes, deterministic bytes."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.format import idx_path, mixed_dir, sample_nbytes, shard_path
from pipeline.write import encode_sample, plan_shards, remove_temporaries, write_shard_files


def _samples(n: int, t: int = 4, s: int = 16) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        soft = rng.dirichlet(np.ones(7)).astype(np.float32)
        soft /= soft.sum()
        meta = {"clip_id": f"{i:05d}", "label": i % 7, "part": 1, "votes": [1, 2, 3, 4, 0, 0, 0]}
        out.append(encode_sample(f"{i:05d}", rng.integers(0, 256, (t, s, s, 3), dtype=np.uint8), soft, meta))
    return out


def test_plan_groups_by_part_in_clip_order():
    clips = [{"clip_id": f"{i:05d}", "part": i % 3} for i in range(20)]
    plan = plan_shards(clips, shard_size_mb=3 * sample_nbytes(4, 16) / 1e6, nbytes=sample_nbytes(4, 16))
    assert [p["part"] for p in plan] == sorted(p["part"] for p in plan)
    for p in plan:
        assert len(p["clip_ids"]) <= 3 and p["clip_ids"] == sorted(p["clip_ids"])
        assert all(int(c) % 3 == p["part"] for c in p["clip_ids"])
    assert sorted(c for p in plan for c in p["clip_ids"]) == [c["clip_id"] for c in clips]
    assert plan[0]["name"] == "part0-000000" and plan[1]["name"] == "part0-000001"


def test_tar_index_matches_wds2idx_and_reads_back(tmp_path):
    samples = _samples(5)
    entries = write_shard_files(tmp_path, "part1-000000", 1, samples, ("webdataset", "parquet"))
    tar_path = tmp_path / "webdataset/part1-000000.tar"
    subprocess.run(["wds2idx", str(tar_path), str(tmp_path / "ref.idx")], check=True, capture_output=True)
    assert (tmp_path / "ref.idx").read_text() == (tmp_path / "webdataset-idx/part1-000000.idx").read_text()
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        assert names[:3] == ["00000.frames.npy", "00000.json", "00000.soft.npy"]
        frames = np.load(io.BytesIO(tar.extractfile("00003.frames.npy").read()), allow_pickle=False)
    assert np.array_equal(frames, np.load(io.BytesIO(samples[3]["frames.npy"]), allow_pickle=False))
    table = pq.read_table(tmp_path / "parquet/part=1/000000.parquet")
    assert table.column("clip_id").to_pylist() == [f"{i:05d}" for i in range(5)]
    assert table.column("frames")[3].as_py() == samples[3]["frames.npy"]
    assert {e["format"] for e in entries} == {"webdataset", "parquet"}
    assert all(e["samples"] == 5 and len(e["sha256"]) == 64 for e in entries)
    assert not list(tmp_path.rglob("*.tmp"))


def test_same_samples_same_bytes(tmp_path):
    a = write_shard_files(tmp_path / "a", "part2-000000", 2, _samples(3), ("webdataset", "parquet"))
    b = write_shard_files(tmp_path / "b", "part2-000000", 2, _samples(3), ("webdataset", "parquet"))
    assert a == b


def test_empty_shard_writes_nothing(tmp_path):
    assert write_shard_files(tmp_path, "part3-000000", 3, [], ("webdataset",)) == []
    assert not list(tmp_path.iterdir())


def test_temporaries_are_cleaned(tmp_path):
    (tmp_path / "_state").mkdir()
    (tmp_path / "_state/plan.json").write_text('{"config": {}, "shards": [{"name": "part1-000000", "part": 1}]}')
    (tmp_path / "webdataset").mkdir()
    (tmp_path / "parquet/part=1").mkdir(parents=True)
    (tmp_path / "webdataset/part1-000000.tar.tmp").write_bytes(b"partial")
    (tmp_path / "parquet/part=1/000000.parquet.tmp").write_bytes(b"partial")
    (tmp_path / "index.json.tmp").write_bytes(b"{")
    (tmp_path / "thesis.tmp").write_bytes(b"not ours")
    assert remove_temporaries(tmp_path) == 3
    assert (tmp_path / "thesis.tmp").exists()


def test_layout_paths(tmp_path):
    """The layout every reader relies on: tars alone, .idx beside them, hive-style Parquet and mixed folds."""
    assert shard_path("webdataset", "part3-000012") == "webdataset/part3-000012.tar"
    assert idx_path("part3-000012") == "webdataset-idx/part3-000012.idx"
    assert shard_path("parquet", "part3-000012") == "parquet/part=3/000012.parquet"
    assert shard_path("parquet", "copy1-000002") == "parquet/copy=1/000002.parquet"
    assert mixed_dir(tmp_path, 4) == tmp_path / "mixed/fold=4"
    entries = write_shard_files(tmp_path, "part1-000000", 1, _samples(2), ("webdataset", "parquet"))
    assert {e["path"] for e in entries} == {"webdataset/part1-000000.tar", "parquet/part=1/000000.parquet"}
    assert [e["idx"]["path"] for e in entries if "idx" in e] == ["webdataset-idx/part1-000000.idx"]
    assert sorted(p.name for p in (tmp_path / "webdataset").iterdir()) == ["part1-000000.tar"]


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_parquet_metadata_types_and_compression(tmp_path, codec):
    """Key-value metadata says what frames holds; small columns are zstd by their real column
    paths (list values included); frames uses the chosen codec and 64-bit offsets."""
    classes = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
    write_shard_files(tmp_path, "part2-000000", 2, _samples(3, t=4, s=16), ("parquet",), classes, codec)
    pf = pq.ParquetFile(tmp_path / "parquet/part=2/000000.parquet")
    meta = pf.schema_arrow.metadata
    frames = json.loads(meta[b"midas.frames"])
    assert frames | {"decode": ""} == {"encoding": "npy", "dtype": "uint8", "shape": [4, 16, 16, 3], "layout": "THWC",
                                       "color": "RGB", "compression": codec, "decode": ""}
    assert json.loads(meta[b"midas.classes"]) == list(classes)
    assert json.loads(meta[b"midas.soft"])["classes"] == list(classes)
    assert pf.schema_arrow.field("frames").type == pa.large_binary()
    assert "part" not in pf.schema_arrow.names  # it is the hive folder: pyarrow refuses a column of the same name
    rg = pf.metadata.row_group(0)
    codecs = {rg.column(i).path_in_schema: rg.column(i).compression for i in range(rg.num_columns)}
    assert codecs["votes.list.element"] == codecs["soft.list.element"] == "ZSTD"
    assert codecs["key"] == codecs["json"] == codecs["label"] == "ZSTD"
    assert codecs["frames"] == ("UNCOMPRESSED" if codec == "none" else "ZSTD")
    table = pq.read_table(tmp_path / "parquet")  # the folder: hive partition `part` comes back
    assert table.column("part").to_pylist() == [2, 2, 2]
    cell = table.column("frames")[1].as_py()
    assert np.load(io.BytesIO(cell), allow_pickle=False).shape == tuple(frames["shape"])


def test_large_frames_column_has_64bit_offsets(tmp_path):
    """Over 2 GiB of frames in one shard needs large_binary; check the written type holds int64 offsets."""
    write_shard_files(tmp_path, "part1-000000", 1, _samples(2), ("parquet",))
    col = pq.read_table(tmp_path / "parquet/part=1/000000.parquet").column("frames")
    assert col.type == pa.large_binary() and col.chunk(0).buffers()[1].size == 8 * (len(col.chunk(0)) + 1)
