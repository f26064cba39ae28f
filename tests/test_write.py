"""The on-disk format: tar + DALI index, Parquet, atomic writes, deterministic bytes."""

from __future__ import annotations

import io
import subprocess
import tarfile

import numpy as np
import pyarrow.parquet as pq

from pipeline.write import encode_sample, plan_shards, remove_temporaries, sample_nbytes, write_shard_files


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
    assert (tmp_path / "ref.idx").read_text() == (tmp_path / "webdataset/part1-000000.idx").read_text()
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        assert names[:3] == ["00000.frames.npy", "00000.json", "00000.soft.npy"]
        frames = np.load(io.BytesIO(tar.extractfile("00003.frames.npy").read()), allow_pickle=False)
    assert np.array_equal(frames, np.load(io.BytesIO(samples[3]["frames.npy"]), allow_pickle=False))
    table = pq.read_table(tmp_path / "parquet/part1-000000.parquet")
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
    (tmp_path / "webdataset/part1-000000.tar.tmp").write_bytes(b"partial")
    (tmp_path / "index.json.tmp").write_bytes(b"{")
    (tmp_path / "thesis.tmp").write_bytes(b"not ours")
    assert remove_temporaries(tmp_path) == 2
    assert (tmp_path / "thesis.tmp").exists()
