"""MIDAS math and mix-offline, proven from the bytes on disk."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pipeline.config import MixConfig, RayConfig, load_config
from pipeline.format import ShardError
from pipeline.mix import mix_frames, mix_offline, mix_soft, pair_partners, plan_mix
from pipeline.read import SampleReader, open_index


@given(lam=st.floats(0, 1), seed=st.integers(0, 2**16))
@settings(max_examples=50, deadline=None)
def test_mix_frames_and_soft_reference(lam, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    ya, yb = rng.dirichlet(np.ones(7), 2).astype(np.float32)
    x = mix_frames(a, b, lam)
    assert x.dtype == np.uint8 and x.shape == a.shape
    assert np.abs(x.astype(np.float64) - (lam * a + (1 - lam) * b)).max() <= 0.5 + 1e-3
    y = mix_soft(ya, yb, lam)
    assert y.dtype == np.float32 and abs(float(y.sum()) - 1) < 1e-5
    assert np.allclose(y, lam * ya.astype(np.float64) + (1 - lam) * yb, atol=1e-7)


def test_lam_one_returns_x_i_exactly():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 16, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(mix_frames(a, b, 1.0), a) and np.array_equal(mix_frames(a, b, 0.0), b)


@given(n=st.integers(2, 60), extra=st.integers(0, 20), seed=st.integers(0, 10**6))
def test_pair_partners_no_self_pairs_no_shared_partner(n, extra, seed):
    clips = [f"c{i}" for i in range(n)]
    pool = clips + [f"u{i}" for i in range(extra)]
    partners = pair_partners(np.random.default_rng(seed), clips, pool)
    assert all(p != c for p, c in zip(partners, clips, strict=True))
    assert len(set(partners)) == n and set(partners) <= set(pool)


def _clips(parts: dict[int, int]) -> list[dict]:
    out, i = [], 0
    for part, n in parts.items():
        for _ in range(n):
            out.append({"clip_id": f"{i:05d}", "part": part})
            i += 1
    return out


def test_lam_follows_beta_ks():
    clips = _clips({0: 10, 1: 5, 2: 5, 3: 5, 4: 5, 5: 5})
    cfg = MixConfig(copies=120, alpha=0.8, seed=3)
    lams = [p["lam"] for shards in plan_mix(clips, cfg, per_shard=1000).values() for s in shards for p in s["pairs"]]
    assert len(lams) >= 2000
    assert stats.kstest(lams, stats.beta(0.8, 0.8).cdf).pvalue > 0.01
    # and it is not merely uniform: alpha matters
    assert stats.kstest(lams, stats.beta(2.0, 2.0).cdf).pvalue < 1e-6


@pytest.mark.parametrize("unassigned", [False, True])
def test_partners_never_from_the_eval_part(unassigned):
    clips = _clips({0: 6, 1: 4, 2: 4, 3: 4, 4: 4, 5: 4})
    part = {c["clip_id"]: c["part"] for c in clips}
    plan = plan_mix(clips, MixConfig(copies=5, include_unassigned=unassigned), per_shard=3)
    used_unassigned = False
    for k, shards in plan.items():
        for s in shards:
            for p in s["pairs"]:
                assert part[p["i"]] not in (0, k) and part[p["j"]] != k
                used_unassigned |= part[p["j"]] == 0
                assert unassigned or part[p["j"]] != 0
    assert used_unassigned == unassigned


def test_fold_with_too_few_clips_is_an_error():
    with pytest.raises(ShardError, match="fold 1 has 1 training clip"):
        plan_mix(_clips({1: 3, 2: 1}), MixConfig(fold=1), per_shard=10)


@pytest.fixture(scope="module")
def mixed(built, ray_session, tmp_path_factory):
    shards = built[0]
    out = tmp_path_factory.mktemp("mixed") / "m2"
    cfg = load_config(MixConfig, None, {"shards": str(shards), "out": str(out), "copies": 2, "seed": 5,
                                        "shard_size_mb": 1.0})
    summary = mix_offline(cfg, RayConfig(workers=2))
    return shards, out, cfg, summary


def _read_tar(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            data = tar.extractfile(m).read()
            out.setdefault(key, {})[ext] = json.loads(data) if ext == "json" else np.load(io.BytesIO(data),
                                                                                           allow_pickle=False)
    return out


def test_mixed_samples_from_the_bytes_on_disk(mixed):
    shards, out, cfg, summary = mixed
    reader = SampleReader(shards, open_index(shards))
    clips = {c["clip_id"]: c for c in pq.read_table(shards / "clips.parquet").to_pylist()}
    n = 0
    for fold_dir in sorted(out.glob("fold=*")):
        k = int(fold_dir.name[5:])
        index = json.loads((fold_dir / "index.json").read_text())
        assert index["complete"] and index["kind"] == "mixed" and index["fold"] == k
        assert index["config"]["alpha"] == 0.8 and index["config"]["seed"] == 5
        for tar in sorted(fold_dir.glob("webdataset/*.tar")):
            for s in _read_tar(tar).values():
                meta = s["json"]
                (a, wa), (b, wb) = [(x["clip_id"], x["weight"]) for x in meta["sources"]]
                lam = meta["lam"]
                assert wa == lam and wb == 1 - lam and meta["copy"] in (0, 1) and meta["seed"] == 5
                assert a != b and clips[a]["part"] not in (0, k) and clips[b]["part"] not in (0, k)
                xa, ya, _ = reader.read(a)
                xb, yb, _ = reader.read(b)
                expect = lam * xa.astype(np.float64) + (1 - lam) * xb
                assert np.abs(s["frames.npy"].astype(np.float64) - expect).max() <= 1.0
                assert np.abs(s["soft.npy"].astype(np.float64) - (lam * ya + (1 - lam) * yb.astype(np.float64))
                              ).max() <= 1e-6
                n += 1
    reader.close()
    train_sizes = sum(sum(1 for c in clips.values() if c["status"] == "written" and c["part"] not in (0, k))
                      for k in range(1, 6))
    assert n == summary.samples == 2 * train_sizes
    # the Parquet twin holds the same samples
    for fold_dir in sorted(out.glob("fold=*")):
        table = pq.read_table(sorted(fold_dir.glob("parquet/copy=*/*.parquet")))
        tars = {}
        for tar in sorted(fold_dir.glob("webdataset/*.tar")):
            tars |= _read_tar(tar)
        assert sorted(table.column("key").to_pylist()) == sorted(tars)


def _files(out: Path) -> dict[str, bytes]:
    """Every output file; index.json without config.out (the only field that names the directory)."""
    files = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or "_state" in p.parts:
            continue
        if p.name == "index.json":
            doc = json.loads(p.read_text())
            doc["config"].pop("out")
            files[p.relative_to(out).as_posix()] = json.dumps(doc, sort_keys=True).encode()
        else:
            files[p.relative_to(out).as_posix()] = p.read_bytes()
    return files


def test_one_and_two_workers_same_bytes_and_resume(mixed, tmp_path):
    shards, out, cfg, _ = mixed
    cfg1 = load_config(MixConfig, None, {"shards": str(shards), "out": str(tmp_path / "m1"), "copies": 2,
                                         "seed": 5, "shard_size_mb": 1.0})
    mix_offline(cfg1, RayConfig(workers=1))
    assert _files(out) == _files(tmp_path / "m1")
    # an interrupted run: one shard's done-file lost, another file half-written under a temp name
    states = sorted((tmp_path / "m1").glob("fold=*/_state/copy*.json"))
    states[0].unlink()
    (tmp_path / "m1/fold=1/webdataset/copy0-000000.tar").unlink()
    (tmp_path / "m1/fold=1/webdataset/copy0-000000.tar.tmp").write_bytes(b"partial")
    again = mix_offline(cfg1, RayConfig(workers=2))
    assert again.shards_resumed == len(states) - 1
    assert _files(out) == _files(tmp_path / "m1")
    assert not list((tmp_path / "m1").rglob("*.tmp"))


def test_bad_inputs_fail_before_any_work(built, tmp_path):
    with pytest.raises(ShardError, match="index.json not found"):
        mix_offline(MixConfig(shards=str(tmp_path / "nothing")))
    # a corrupted source shard: one flipped byte
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built[0], copy, ignore=shutil.ignore_patterns("mixed"))
    tar = sorted(copy.glob("webdataset/*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"verify .*sha256 differs"):
        mix_offline(MixConfig(shards=str(copy)))
    assert not (copy / "mixed").exists()
