"""build-shards end to end on make-sample: real decord, real detector, real local Ray."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import build_config, kill_session

from pipeline.build import BuildError, build_shards
from pipeline.cli import main
from pipeline.format import read_index


def _shard_files(out: Path) -> dict[str, bytes]:
    files = sorted([*out.glob("webdataset/*"), *out.glob("webdataset-idx/*"), *out.glob("parquet/*/*"),
                    out / "clips.parquet",
                    out / "rejects.parquet"])
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files}


def _tar_samples(path: Path) -> list[dict]:
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            data = tar.extractfile(m).read()
            value = json.loads(data) if ext == "json" else np.load(io.BytesIO(data), allow_pickle=False)
            samples.setdefault(key, {"__key__": key})[ext] = value
    return list(samples.values())


def test_every_sample_has_the_right_shape_and_soft_label(built, sample):
    out, cfg, summary = built
    clips = {r["clip_id"]: r for r in pq.read_table(out / "clips.parquet").to_pylist()}
    n = 0
    for tar in sorted(out.glob("webdataset/*.tar")):
        part = int(tar.name[4])
        for s in _tar_samples(tar):
            n += 1
            assert s["frames.npy"].dtype == np.uint8 and s["frames.npy"].shape == (16, 112, 112, 3)
            assert s["soft.npy"].dtype == np.float32 and s["soft.npy"].shape == (7,)
            assert abs(float(s["soft.npy"].sum()) - 1) < 1e-6
            meta = s["json"]
            votes = np.array(meta["votes"], dtype=np.float64)
            assert np.allclose(s["soft.npy"], votes / votes.sum(), atol=1e-7)  # soft = votes / sum
            assert meta["part"] == part == clips[meta["clip_id"]]["part"]  # shards are grouped by part
            assert meta["clip_id"] == s["__key__"] and clips[meta["clip_id"]]["status"] == "written"
    assert n == summary.written > 0


def test_rejects_name_the_stage(built, sample):
    out, _, summary = built
    rejects = {r["clip_id"]: r for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    for cid in sample.no_face:
        assert rejects[cid]["stage"] == "align" and "no face" in rejects[cid]["error"]
    for cid in sample.corrupt:
        assert rejects[cid]["stage"] == "decode" and rejects[cid]["error"]
    clips = pq.read_table(out / "clips.parquet").to_pylist()
    assert {c["clip_id"] for c in clips if c["status"] == "rejected"} == set(rejects)
    assert summary.rejected.get("align", 0) == len(sample.no_face)
    assert summary.rejected.get("decode", 0) == len(sample.corrupt)
    written = [c for c in clips if c["status"] == "written"]
    assert all(c["face_frames"] >= 1 and c["face_score"] > 0.8 for c in written)


def test_index_json_lists_every_shard_with_sha256(built):
    out, cfg, summary = built
    index = read_index(out)
    assert index["complete"] and index["format_version"] == 2
    assert index["config"]["decode"]["num_frames"] == 16 and index["config"]["align"]["detector"] == "retinaface"
    assert {e["format"] for e in index["shards"]} == {"webdataset", "parquet"}
    for e in index["shards"]:
        data = (out / e["path"]).read_bytes()
        assert len(data) == e["bytes"] and hashlib.sha256(data).hexdigest() == e["sha256"]
        assert e["path"] in (f"webdataset/{e['shard']}.tar", f"parquet/part={e['part']}/{e['shard'][-6:]}.parquet")
        assert e["shard"].startswith(f"part{e['part']}-")
    tars = [e for e in index["shards"] if e["format"] == "webdataset"]
    assert sum(e["samples"] for e in tars) == summary.written
    assert len({e["part"] for e in tars}) >= 4 and summary.shards > len({e["part"] for e in tars})
    assert not list(out.rglob("*.tmp"))


def test_one_and_two_workers_write_identical_shards(built, sample, ray_session, tmp_path):
    out2, _, _ = built
    cfg = build_config(sample.root, tmp_path / "w1", **{"ray.workers": 1, "write.shard_size_mb": 2.0})
    build_shards(cfg)
    a, b = _shard_files(out2), _shard_files(tmp_path / "w1")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_rerun_resumes_and_config_change_is_refused(built, sample, ray_session):
    out, cfg, _ = built
    before = _shard_files(out)
    again = build_shards(cfg)
    assert again.processed == 0 and again.shards_resumed == len(json.loads((out / "_state/plan.json").read_text())
                                                               ["shards"])
    assert _shard_files(out) == before
    other = build_config(sample.root, out, **{"ray.workers": 2, "write.shard_size_mb": 2.0,
                                              "decode.num_frames": 8})
    with pytest.raises(BuildError, match=r"another config \(decode.num_frames: 16 on disk, 8 now\).*--overwrite"):
        build_shards(other)


def test_killed_build_resumes_to_the_same_shards(built, sample, ray_session, tmp_path):
    """kill -9 the CLI after its first shard, re-run: the same bytes as an uninterrupted build."""
    out_ref = built[0]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipeline.cli", "build-shards", str(sample.root), "--out", str(out),
           "--workers", "2", "--shard-size-mb", "2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "_state").glob("part*.json"))) >= 2:
            break
        time.sleep(0.05)
    kill_session(proc.pid)  # the driver, its local Ray and every worker (each in a process group of its own)
    proc.wait()
    done = len(list((out / "_state").glob("part*.json")))
    planned = len(json.loads((out_ref / "_state/plan.json").read_text())["shards"])
    assert 0 < done < planned, f"kill landed after {done} of {planned} shards"
    cfg = build_config(sample.root, out, **{"ray.workers": 2, "write.shard_size_mb": 2.0})
    summary = build_shards(cfg)
    assert summary.shards_resumed == done
    a, b = _shard_files(out_ref), _shard_files(out)
    assert [k for k in a if a.get(k) != b.get(k)] == [] and a.keys() == b.keys()
    assert not list(out.rglob("*.tmp"))


def test_read_back_with_webdataset_library(built):
    import webdataset as wds

    out, _, summary = built
    urls = [str(p) for p in sorted(out.glob("webdataset/*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False).decode()
    n = 0
    for s in ds:
        assert s["frames.npy"].shape == (16, 112, 112, 3) and s["frames.npy"].dtype == np.uint8
        assert abs(float(s["soft.npy"].sum()) - 1) < 1e-6 and "clip_id" in s["json"]
        n += 1
    assert n == summary.written


def test_read_back_with_dali_webdataset_reader_on_cpu(built):
    from nvidia.dali import fn, pipeline_def

    out, _, summary = built
    index = read_index(out)
    entries = sorted((e for e in index["shards"] if e["format"] == "webdataset"), key=lambda e: e["path"])
    tars = [out / e["path"] for e in entries]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe():
        frames, soft = fn.readers.webdataset(
            paths=[str(p) for p in tars], index_paths=[str(out / e["idx"]["path"]) for e in entries],
            ext=["frames.npy", "soft.npy"], missing_component_behavior="error", random_shuffle=False,
            name="reader")
        return fn.decoders.numpy(frames), fn.decoders.numpy(soft)

    p = pipe()
    p.build()
    size = p.reader_meta("reader")["epoch_size"]
    assert size == summary.written
    seen = 0
    while seen < size:
        frames, soft = p.run()
        for i in range(len(frames)):
            f, s = np.array(frames[i]), np.array(soft[i])
            assert f.shape == (16, 112, 112, 3) and f.dtype == np.uint8 and abs(s.sum() - 1) < 1e-6
        seen += len(frames)


def test_read_back_with_pyarrow(built):
    out, _, summary = built
    table = pq.read_table(sorted(out.glob("parquet/part=*/*.parquet")))
    assert table.num_rows == summary.written
    row = table.slice(0, 1).to_pylist()[0]
    frames = np.load(io.BytesIO(row["frames"]), allow_pickle=False)
    assert frames.shape == (16, 112, 112, 3) and abs(sum(row["soft"]) - 1) < 1e-6
    assert json.loads(row["json"])["clip_id"] == row["clip_id"] == row["key"]


def test_every_clip_rejected_is_fatal(sample, ray_session, tmp_path):
    classes = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
    manifest = tmp_path / "m.csv"
    lines = [",".join(["path", *classes])]
    lines += [f"{sample.root / 'Clip/original' / (cid + '.mp4')},1,0,0,0,0,0,0" for cid in sample.no_face]
    manifest.write_text("\n".join(lines) + "\n")
    cfg = build_config(manifest, tmp_path / "out", **{"ray.workers": 2})
    with pytest.raises(BuildError, match=r"no clip could be written: rejected \d+ at align"):
        build_shards(cfg)
    assert pq.read_table(tmp_path / "out/rejects.parquet").num_rows == len(sample.no_face)


def test_cli_summary_and_exit_codes(sample, ray_session, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["build-shards", str(sample.root), "--out", str(tmp_path / "s"), "--limit", "4",
                               "--format", "parquet", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "clips written" in res.output and "rejected  " in res.output and "clips/s" in res.output
    assert not (tmp_path / "s/webdataset").exists() and list((tmp_path / "s/parquet").glob("part=*/*.parquet"))
    res = runner.invoke(main, ["build-shards", str(tmp_path), "--out", str(tmp_path / "t")])
    assert res.exit_code != 0 and "not a recognised DFEW copy" in res.output
    res = runner.invoke(main, ["build-shards", str(sample.root), "--num-frames", "0"])
    assert res.exit_code == 2 and "decode.num_frames=0 is out of range" in res.output


def test_runs_of_clips_per_task_write_the_same_bytes(built, sample, ray_session, tmp_path):
    """Several clips per Ray task (as large builds run) or one: the same shards."""
    out_ref = built[0]
    cfg = build_config(sample.root, tmp_path / "runs", **{"ray.workers": 2, "write.shard_size_mb": 2.0,
                                                           "ray.clips_per_task": 5})
    build_shards(cfg)
    a, b = _shard_files(out_ref), _shard_files(tmp_path / "runs")
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []


def test_runs_shrink_over_the_last_clips_and_never_span_shards():
    """Auto-sized runs end with single clips (the workers finish together); a fixed size stays fixed."""
    from pipeline.build import _runs

    todo = [{"name": f"s{j}", "clip_ids": [f"{j}-{i}" for i in range(n)]} for j, n in enumerate([80, 77, 80, 83])]
    for workers, fixed in ((2, False), (0, True)):
        runs = _runs(todo, 8, workers)
        assert [c for _, ids in runs for c in ids] == [c for s in todo for c in s["clip_ids"]]
        assert all(ids[0].split("-")[0] == name[1:] == ids[-1].split("-")[0] for name, ids in runs)
        sizes = [len(ids) for _, ids in runs]
        assert max(sizes) == 8
        if fixed:
            assert len(runs) == sum(-(-len(s["clip_ids"]) // 8) for s in todo)
        else:
            assert sizes[-6:] == [1] * 6 and len(runs) < 1.5 * len(_runs(todo, 8, 0))  # a few more tasks


def test_a_build_from_before_tracking_resumes_with_the_old_settings(built, sample, tmp_path):
    """A plan.json written before align.roi_size (and the PyAV decoder, min_face_share, smooth_max_shift,
    decode.resize) existed reads with the values of that time: the new defaults are refused with the differences named,
    the old settings resume it (dry run: no Ray)."""
    import shutil

    from pipeline.build import plan_build

    out = tmp_path / "old"
    shutil.copytree(built[0], out)
    plan = json.loads((out / "_state/plan.json").read_text())
    from pipeline.config import BUILD_FIELDS_ADDED

    for dotted in BUILD_FIELDS_ADDED:
        section, name = dotted.split(".")
        del plan["config"][section][name]
    plan["config"]["align"]["detect_max_side"] = 640
    (out / "_state/plan.json").write_text(json.dumps(plan))
    base = {"ray.workers": 2, "write.shard_size_mb": 2.0}
    with pytest.raises(BuildError, match=r"align\.detect_max_side: 640 on disk, 320 now; align\.min_face_share") as e:
        plan_build(build_config(sample.root, out, **base))
    assert "align.roi_size: 0 on disk, 192 now" in str(e.value)
    assert "decode.decoder: 'decord' on disk, 'pyav' now" in str(e.value)
    assert "decode.resize: 'area' on disk, 'halve' now" in str(e.value)  # the first PyAV builds' resize
    old = build_config(sample.root, out, **base, **BUILD_FIELDS_ADDED, **{"align.detect_max_side": 640})
    assert plan_build(old)["shards_done"] == len(plan["shards"])
