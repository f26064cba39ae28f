"""docs/reading.md, "Reading the shards": every recipe runs verbatim against a real build (with a mixed fold);
and the readers under abuse: wrong shapes, garbled .idx, broken index.json, old format, `../` members."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import MixConfig, RayConfig, StreamConfig
from pipeline.format import ShardError, npy_bytes
from pipeline.mix import mix_offline
from pipeline.read import SampleReader, load_index, open_index, parse_idx
from pipeline.stream import ShardSource, create_loader, list_samples
from pipeline.verify import verify_shards
from pipeline.write import encode_sample, write_tar

README = Path(__file__).resolve().parent.parent / "docs" / "reading.md"  # the recipes live here
RECIPES = ["pyarrow", "pandas", "duckdb", "hf-datasets", "ray", "webdataset", "dali", "tarfile"]


def recipe(name: str) -> str:
    """The python block that follows `<!-- recipe: NAME -->` in docs/reading.md."""
    m = re.search(rf"<!-- recipe: {re.escape(name)} -->\n```python\n(.*?)\n```", README.read_text(), re.S)
    assert m, f"docs/reading.md has no recipe {name!r}"
    return m.group(1)


@pytest.fixture(scope="module")
def shards(built, tmp_path_factory, ray_session) -> Path:
    """A private copy of the build, named shards/, with mix-offline's fold 1 in shards/mixed/fold=1."""
    dst = tmp_path_factory.mktemp("readers") / "shards"
    shutil.copytree(built[0], dst, ignore=shutil.ignore_patterns("mixed"))
    mix_offline(MixConfig(shards=str(dst), fold=1, copies=1), RayConfig(workers=2))
    return dst


def _run(name: str, shards: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(shards.parent)
    ns: dict = {"__name__": f"recipe_{name}"}
    exec(compile(recipe(name), f"docs/reading.md recipe {name}", "exec"), ns)  # noqa: S102 - the docs' own code
    return ns


def _spec(shards: Path) -> tuple[int, int, int]:
    index = open_index(shards)
    return index["sample"]["num_frames"], index["sample"]["frame_size"], index["counts"]["written"]


def _frames_ok(frames: np.ndarray, shards: Path) -> None:
    t, s, _ = _spec(shards)
    assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.shape == (t, s, s, 3)


def test_every_recipe_is_in_the_readme():
    text = README.read_text()
    assert sorted(re.findall(r"<!-- recipe: ([\w-]+) -->", text)) == sorted(RECIPES)


def test_pyarrow_recipe(shards, monkeypatch):
    ns = _run("pyarrow", shards, monkeypatch)
    _frames_ok(ns["frames"], shards)
    table = ns["table"]
    assert table.num_rows == _spec(shards)[2]
    clips = {c["clip_id"]: c["part"] for c in pq.read_table(shards / "clips.parquet").to_pylist()}
    assert all(int(p) == clips[c] for c, p in zip(table.column("clip_id").to_pylist(),
                                                  table.column("part").to_pylist(), strict=True))


def test_pandas_recipe(shards, monkeypatch):
    ns = _run("pandas", shards, monkeypatch)
    _frames_ok(ns["frames"], shards)
    assert len(ns["df"]) == _spec(shards)[2] and 1 not in set(ns["fold1_train"]["part"])


def test_duckdb_recipe(shards, monkeypatch):
    ns = _run("duckdb", shards, monkeypatch)
    counts = ns["counts"]
    clips = pq.read_table(shards / "clips.parquet").to_pandas()
    written = clips[clips["status"] == "written"]
    assert counts["clips"].sum() == len(written)
    expect = written.groupby(["part", "label"]).size().to_dict()
    assert {(int(r.part), int(r.label)): int(r.clips) for r in counts.itertuples()} == expect
    assert ns["rejects"]["n"].sum() == len(pq.read_table(shards / "rejects.parquet"))
    mixed = ns["mixed"]
    assert list(mixed["fold"]) == [1] and list(mixed["copy"]) == [0]
    assert int(mixed["samples"].sum()) == open_index(shards / "mixed/fold=1")["counts"]["samples"]


def test_hf_datasets_recipe(shards, monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")  # tests write under tmp only
    ns = _run("hf-datasets", shards, monkeypatch)
    _frames_ok(ns["frames"], shards)
    clips = pq.read_table(shards / "clips.parquet").to_pylist()
    assert len(ns["train"]) == sum(c["status"] == "written" and c["part"] in (2, 3, 4, 5) for c in clips)
    sample = ns["sample"]
    _frames_ok(sample["frames.npy"], shards)  # uint8, not int64
    assert len(ns["wds"]) == _spec(shards)[2] and "label" in sample["json"]
    cache = shards.parent / ns["cache"]  # the recipe caches inside the work directory, not under ~/.cache
    assert cache.is_dir() and any(cache.rglob("*.arrow")) and not any((tmp_path / "hf").rglob("*.arrow"))


def test_ray_recipe(shards, monkeypatch, ray_session):
    ns = _run("ray", shards, monkeypatch)
    _frames_ok(ns["frames"], shards)
    assert ns["clips"].count() == _spec(shards)[2] and 0 <= int(ns["row"]["part"]) <= 5
    _frames_ok(np.asarray(ns["sample"]["frames.npy"]), shards)


def test_webdataset_recipe(shards, monkeypatch):
    ns = _run("webdataset", shards, monkeypatch)
    _frames_ok(ns["frames"], shards)
    assert ns["soft"].dtype == np.float32 and abs(float(ns["soft"].sum()) - 1) < 1e-5
    assert ns["meta"]["clip_id"] == ns["sample"]["__key__"]
    assert sum(1 for _ in ns["dataset"]) == _spec(shards)[2]


def test_dali_recipe(shards, monkeypatch):
    ns = _run("dali", shards, monkeypatch)
    _frames_ok(ns["frames"], shards)
    assert ns["pipe"].reader_meta("reader")["epoch_size"] == _spec(shards)[2]


def test_tarfile_recipe(shards, monkeypatch):
    ns = _run("tarfile", shards, monkeypatch)
    _frames_ok(ns["frames"], shards)
    assert all(set(s) == {"frames.npy", "soft.npy", "json"} for s in ns["samples"].values())


# --- the readers under abuse -------------------------------------------------------------------------


@pytest.fixture
def copy(built, tmp_path) -> Path:
    dst = tmp_path / "shards"
    shutil.copytree(built[0], dst, ignore=shutil.ignore_patterns("mixed"))
    return dst


def _tar_entry(shards: Path, part: int) -> dict:
    index = json.loads((shards / "index.json").read_text())
    return sorted((e for e in index["shards"] if e["format"] == "webdataset" and e["part"] == part),
                  key=lambda e: e["path"])[0]


def _rewrite_tar(shards: Path, entry: dict, edit) -> None:
    """Rewrite one tar (its samples passed through `edit`), its .idx, and index.json's sizes and
    sha256 for both: the damage a crc32 and a sha256 cannot see."""
    with tarfile.open(shards / entry["path"]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    keys = sorted({n.split(".", 1)[0] for n in members})
    samples = []
    for k in keys:
        frames = np.load(io.BytesIO(members[f"{k}.frames.npy"]), allow_pickle=False)
        soft = np.load(io.BytesIO(members[f"{k}.soft.npy"]), allow_pickle=False)
        meta = json.loads(members[f"{k}.json"])
        meta.pop("crc32")
        key, frames, meta = edit(k, frames, meta)
        samples.append(encode_sample(key, frames, soft, meta))
    buf = io.BytesIO()
    idx = write_tar(buf, samples)
    (shards / entry["path"]).write_bytes(buf.getvalue())
    (shards / entry["idx"]["path"]).write_bytes(idx)
    index = json.loads((shards / "index.json").read_text())
    for e in index["shards"]:
        if e["path"] == entry["path"]:
            e["bytes"], e["sha256"] = len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()
            e["idx"]["bytes"], e["idx"]["sha256"] = len(idx), hashlib.sha256(idx).hexdigest()
    (shards / "index.json").write_text(json.dumps(index))


def _first_key(shards: Path, entry: dict) -> str:
    return parse_idx((shards / entry["idx"]["path"]).read_text())[0][0]


def test_wrong_shape_with_a_matching_crc32_is_refused_by_every_reader(copy):
    entry = _tar_entry(copy, 2)
    bad = _first_key(copy, entry)
    _rewrite_tar(copy, entry, lambda k, f, m: (k, f[:, :64, :64] if k == bad else f, m))
    reader = SampleReader(copy, open_index(copy))
    with pytest.raises(ShardError, match=rf"{Path(entry['path']).name} sample {bad}: frames are uint8 "
                                         r"\(16, 64, 64, 3\), index.json says uint8 \(16, 112, 112, 3\)"):
        reader.read(bad)
    reader.close()
    loader = create_loader(str(copy), fold=2, split="test", batch_size=64, device="cpu", py_workers=1)
    src = loader.source
    pos = next(i for i, s in enumerate(src.samples) if s[0] == bad)
    with pytest.raises(ShardError, match=rf"sample {bad}: frames are uint8 \(16, 64, 64, 3\)"):
        src.read(pos)
    with pytest.raises(Exception, match=rf"sample {bad}: frames are uint8 \(16, 64, 64, 3\)"):
        for _ in loader:
            pass
    problems = [str(p) for p in verify_shards(copy).problems]
    assert len(problems) == 1 and bad in problems[0] and "index.json says uint8 (16, 112, 112, 3)" in problems[0]


@pytest.mark.parametrize("name", ["../evil", "/abs/evil"])
def test_member_with_a_folder_is_refused_by_every_reader(copy, ray_session, name):
    """A tar (and .idx, as wds2idx writes it) naming a member `../x` or `/x`: a clear ShardError, no KeyError."""
    entry = _tar_entry(copy, 3)
    first = _first_key(copy, entry)
    _rewrite_tar(copy, entry, lambda k, f, m: (name + k if k == first else k, f, m))
    subprocess.run(["wds2idx", str(copy / entry["path"]), str(copy / entry["idx"]["path"])], check=True,
                   capture_output=True)
    idx_file = copy / entry["idx"]["path"]
    index = json.loads((copy / "index.json").read_text())
    for e in index["shards"]:
        if e["path"] == entry["path"]:
            e["idx"]["bytes"], e["idx"]["sha256"] = idx_file.stat().st_size, hashlib.sha256(
                idx_file.read_bytes()).hexdigest()
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match=rf"{idx_file.name} line \d+: .*(folder|not <key>)"):
        SampleReader(copy, open_index(copy))
    with pytest.raises(ShardError, match=rf"{idx_file.name} line \d+: .*verify {re.escape(str(copy))} --repair"):
        mix_offline(MixConfig(shards=str(copy), fold=1, out=str(copy.parent / "m")), RayConfig(workers=1))
    with pytest.raises(ShardError, match=rf"{idx_file.name} line \d+"):
        create_loader(str(copy), fold=3, split="test", device="cpu", py_workers=1)
    problems = [str(p) for p in verify_shards(copy).problems]
    assert any("unexpected tar member" in p and name in p for p in problems)


def test_garbled_idx_is_named_with_the_fix_and_repaired(copy, ray_session):
    entry = _tar_entry(copy, 1)
    idx_file = copy / entry["idx"]["path"]
    idx_file.write_text("v1.2 3\nframes.npy 1536 x garbage\n")
    with pytest.raises(ShardError, match=rf"{re.escape(str(idx_file))}.*verify {re.escape(str(copy))} --repair"):
        SampleReader(copy, open_index(copy))
    with pytest.raises(ShardError, match=rf"{idx_file.name}"):
        list_samples(StreamConfig(shards=str(copy), fold=1, split="test", device="cpu"))
    res = CliRunner().invoke(main, ["verify", str(copy), "--repair"])
    assert res.exit_code == 0 and "repaired 1 shard(s)" in res.output and entry["shard"] in res.output, res.output
    assert verify_shards(copy).ok


def test_index_json_not_json_or_old_version_is_one_clear_error(copy):
    good = (copy / "index.json").read_text()
    (copy / "index.json").write_text(good[: len(good) // 2])
    with pytest.raises(ShardError, match=r"index.json is not a valid index .*re-run `midas-prep build-shards"):
        open_index(copy)
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(copy)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stdout + res.stderr
    assert "index.json" in res.stdout + res.stderr and "build-shards" in res.stdout + res.stderr
    old = json.loads(good) | {"format_version": 1}
    (copy / "index.json").write_text(json.dumps(old))
    with pytest.raises(ShardError, match=r"format version 1; this midas-prep reads version 2 .*--overwrite"):
        load_index(copy)
    with pytest.raises(ShardError, match="format version 1"):
        create_loader(str(copy), fold=1, device="cpu")


def test_shard_source_checks_shapes_by_default_spec(copy):
    """ShardSource given the index's sample spec refuses a sample of another size (the loader's path)."""
    entry = _tar_entry(copy, 2)
    samples = [(k, "webdataset", str(copy / entry["path"]), m) for k, m in
               parse_idx((copy / entry["idx"]["path"]).read_text())]
    src = ShardSource(samples, 2, 0, False, 0, 1, False, spec={"frames": (8, 112, 112, 3), "soft": (7,)})
    with pytest.raises(ShardError, match=r"frames are uint8 \(16, 112, 112, 3\), index.json says uint8 \(8, 112"):
        src.read(0)
    assert npy_bytes(np.zeros(1, np.uint8))  # npy_bytes stays the writer's encoder


def test_an_old_build_is_refused_by_build_shards_without_overwrite(copy, built, sample):
    """A folder built by format version 1 (no version in its plan) is not resumed into a mixed layout."""
    from conftest import build_config

    from pipeline.build import BuildError, build_shards

    plan = json.loads((copy / "_state/plan.json").read_text())
    del plan["format_version"]
    (copy / "_state/plan.json").write_text(json.dumps(plan))
    cfg = build_config(sample.root, copy, **{"ray.workers": 2, "write.shard_size_mb": 2.0})
    with pytest.raises(BuildError, match=r"format version 1; this midas-prep writes version 2.*--overwrite"):
        build_shards(cfg)


def test_frames_compression_is_a_checked_config_field():
    from pipeline.config import BuildConfig, ConfigError, load_config

    assert load_config(BuildConfig, None, {"dataset_root": "x"}).write.frames_compression == "zstd"
    assert load_config(BuildConfig, None, {"dataset_root": "x", "write.frames_compression": "lz4"}
                       ).write.frames_compression == "lz4"
    with pytest.raises(ConfigError, match="write.frames_compression"):
        load_config(BuildConfig, None, {"dataset_root": "x", "write.frames_compression": "brotli"})
    with pytest.raises(ConfigError, match="mix.frames_compression"):
        MixConfig(frames_compression="gzip")
