"""verify: corruption is caught by verify and by the loader, with the shard named; --repair."""

from __future__ import annotations

import logging
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.format import ShardError
from pipeline.stream import create_loader
from pipeline.verify import verify_shards


@pytest.fixture
def copy(built, tmp_path):
    """A private copy of the built shards (with its source dataset still in place)."""
    dst = tmp_path / "shards"
    shutil.copytree(built[0], dst, ignore=shutil.ignore_patterns("mixed"))
    return dst


def _flip(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_clean_shards_verify(copy):
    report = verify_shards(copy)
    assert report.ok and report.samples == 2 * len(pq.read_table(copy / "clips.parquet").filter(
        pc.equal(pq.read_table(copy / "clips.parquet")["status"], "written")))
    assert report.files == len(list(copy.glob("webdataset/*.tar"))) + len(list(copy.glob("parquet/part=*/*.parquet")))


def test_flipped_byte_caught_by_verify_and_loader(copy, ray_session):
    tar = sorted(copy.glob("webdataset/part1-*.tar"))[0]
    _flip(tar, 512 + 128 + 5000)  # inside the first sample's frames.npy
    report = verify_shards(copy)
    assert not report.ok
    msgs = [str(p) for p in report.problems]
    assert any(str(tar) in m and "sha256" in m for m in msgs)
    assert any(str(tar) in m and "sample" in m and "crc32" in m for m in msgs)
    loader = create_loader(str(copy), fold=1, split="test", batch_size=64, device="cpu", py_workers=1)
    with pytest.raises(Exception, match=rf"{tar.name} sample \w+: frames.npy fails its crc32"):
        for _ in loader:
            pass
    res = CliRunner().invoke(main, ["verify", str(copy)])
    assert res.exit_code == 1 and "PROBLEM" in res.output and tar.name in res.output
    assert f"fix: midas-prep verify {copy} --repair" in res.output  # the way out is named


def test_truncated_tar_caught_by_verify_and_loader(copy):
    tar = sorted(copy.glob("webdataset/part2-*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[:10_000])
    problems = [str(p) for p in verify_shards(copy).problems]
    assert any(tar.name in p and "bytes, index.json says" in p for p in problems)
    with pytest.raises(ShardError, match=rf"{tar.name}: 10000 bytes"):
        create_loader(str(copy), fold=2, split="test", device="cpu", py_workers=1)


def test_repair_rebuilds_only_the_damaged_shard(copy, built, ray_session, caplog):
    damaged = sorted(copy.glob("webdataset/part3-*.tar"))[0]
    _flip(damaged, 3000)
    twin = copy / "parquet" / ("part=3/" + damaged.stem.split("-")[1] + ".parquet")
    twin.unlink()
    others = {p: p.stat().st_mtime_ns for p in [*copy.glob("*/*"), *copy.glob("parquet/*/*")]
              if p.stem != damaged.stem and p != twin and p.is_file()}
    with caplog.at_level(logging.INFO, logger="pipeline.write"):
        res = CliRunner().invoke(main, ["verify", str(copy), "--repair"])
    assert res.exit_code == 0, res.output
    assert f"repaired 1 shard(s): {damaged.stem}" in res.output and "OK" in res.output
    # the repair expects the damaged shard to be incomplete: that is news at INFO, not a WARNING
    assert [r.levelname for r in caplog.records if "is incomplete on disk" in r.getMessage()] == ["INFO"]
    assert {p: p.stat().st_mtime_ns for p in others} == others  # nothing else was touched
    assert damaged.read_bytes() == (built[0] / "webdataset" / damaged.name).read_bytes()
