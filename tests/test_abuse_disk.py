"""Disk space (issue 18, item 2): an estimate before writing, a refusal when it does not fit,
and a disk that fills up during a run as one line, no temporary left, and a resume.

The refusal is tested against the real free space of tmp_path's filesystem (no mock of
shutil): a --copies large enough to need more than is free. A full disk during a run is the
fault point of pipeline/faults.py in ENOSPC mode, in a Ray worker in the middle of a file
and in the driver.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import build_config

from pipeline.build import plan_build
from pipeline.cli import main
from pipeline.config import MixConfig, RayConfig
from pipeline.format import INDEX_NAME, STATE_DIR, ShardError, entry_files, sample_nbytes
from pipeline.mix import mix_offline
from pipeline.write import SPACE_MARGIN, check_room, estimate_bytes, free_bytes


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MIDAS_PREP_FAULT"))} | extra


def _data(d: Path) -> dict[str, bytes]:
    """The shard files and tables under `d` (not the bookkeeping), by relative path."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and STATE_DIR not in p.parts and p.name != INDEX_NAME and not p.name.startswith(".")}


# --- the estimate -----------------------------------------------------------------------------------------------

def test_the_estimate_bounds_what_a_build_writes_and_is_tight_for_tars(built):
    out, cfg, _ = built
    index = json.loads((out / INDEX_NAME).read_text())
    nbytes = sample_nbytes(cfg.decode.num_frames, cfg.align.frame_size, len(cfg.index.classes))
    for fmt in ("webdataset", "parquet"):
        entries = [e for e in index["shards"] if e["format"] == fmt]
        written = sum(n for _, n in entry_files(entries))
        estimate = estimate_bytes(sum(e["samples"] for e in entries), len(entries), nbytes, (fmt,))
        assert written <= estimate, (fmt, written, estimate)
        if fmt == "webdataset":  # tars hold the frames as they are: the estimate is close
            assert estimate <= 1.05 * written, (written, estimate)


def test_dry_run_prints_the_estimate_and_a_resume_counts_only_what_is_left(built, sample, tmp_path):
    out, cfg, _ = built
    res = CliRunner().invoke(main, ["build-shards", str(sample.root), "--out", str(tmp_path / "new"), "--dry-run",
                                    "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    nbytes = sample_nbytes(cfg.decode.num_frames, cfg.align.frame_size, len(cfg.index.classes))
    shards = plan["shards_planned"]
    assert plan["bytes_needed"] == estimate_bytes(plan["clips"], shards, nbytes, ("webdataset", "parquet"))
    assert 0 < plan["bytes_free"] and not (tmp_path / "new").exists()
    res = CliRunner().invoke(main, ["build-shards", str(sample.root), "--out", str(tmp_path / "new"), "--dry-run"])
    assert "bytes needed" in res.output and "at most, to write (+5% margin kept free)" in res.output
    assert "on the output's disk" in res.output

    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("mixed"))
    cfg_copy = build_config(sample.root, copy, **{"ray.workers": 2, "write.shard_size_mb": 2.0})
    assert plan_build(cfg_copy)["bytes_needed"] == 0  # a finished build: nothing left to write
    state = json.loads(sorted((copy / STATE_DIR).glob("part2-*.json"))[0].read_text())
    (copy / STATE_DIR / f"{state['shard']}.json").unlink()
    plan = plan_build(cfg_copy)
    clips = len(state["results"])
    assert plan["shards_done"] == plan["shards_planned"] - 1
    assert plan["bytes_needed"] == estimate_bytes(clips, 1, nbytes, ("webdataset", "parquet"))


def test_check_room_names_the_need_and_what_is_free(tmp_path):
    free = free_bytes(tmp_path / "not" / "made" / "yet")  # the nearest existing folder's disk
    assert free == shutil.disk_usage(tmp_path).free or abs(free - shutil.disk_usage(tmp_path).free) < 1 << 30
    assert check_room(tmp_path, 1000)[1] == ""
    _, why = check_room(tmp_path / "out", int(free / (1 + SPACE_MARGIN)) + (1 << 30))
    assert why.startswith(f"{tmp_path / 'out'} needs about ") and " GB free" in why and "+5% margin" in why


# --- mix-offline --copies beyond the disk ----------------------------------------------------------------------

def test_mix_offline_with_more_copies_than_the_disk_holds_refuses_before_writing(built, tmp_path):
    shards = built[0]
    out = tmp_path / "mixed"
    res = CliRunner().invoke(main, ["mix-offline", "--shards", str(shards), "--out", str(out), "--fold", "2",
                                    "--dry-run", "--json"])
    one_copy = json.loads(res.output)["bytes_needed"]
    copies = int(free_bytes(tmp_path) * 1.2 / one_copy) + 1
    if copies > 10_000:
        pytest.skip(f"{free_bytes(tmp_path)} bytes free: more than --copies 10000 needs")
    for dry in (["--dry-run"], []):
        res = CliRunner().invoke(main, ["mix-offline", "--shards", str(shards), "--out", str(out), "--fold", "2",
                                        "--copies", str(copies), *dry])
        assert res.exit_code == 1, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {out} needs about "), res.output
        assert "GB free" in lines[0] and f"({copies} copies of each training clip)" in lines[0]
        assert "lower --copies" in lines[0]
        assert not out.exists()  # refused before the first file


# --- a disk that fills up during a run -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_ref(built, ray_session, tmp_path_factory):
    ref = tmp_path_factory.mktemp("mixref") / "mixed"
    mix_offline(MixConfig(shards=str(built[0]), out=str(ref), copies=2, fold=2, shard_size_mb=1.0),
                RayConfig(workers=2))
    return ref


def test_a_disk_full_in_a_mix_worker_mid_file_is_one_line_and_resumes(built, mixed_ref, ray_session, tmp_path):
    out = tmp_path / "mixed"
    args = ["mix-offline", "--shards", str(built[0]), "--out", str(out), "--copies", "2", "--fold", "2",
            "--shard-size-mb", "1", "--workers", "2"]
    env = _env(MIDAS_PREP_FAULT="write.data", MIDAS_PREP_FAULT_MODE="enospc", MIDAS_PREP_FAULT_SKIP="30",
               MIDAS_PREP_FAULT_ONCE=str(tmp_path / "fired"))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert (tmp_path / "fired").exists(), "the fault never fired"
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "No space left on device (injected at write.data) writing " + str(out / "fold=2") in lines[0]
    assert " free there)" in lines[0] and "free space and re-run, it resumes" in lines[0]
    assert not list(out.rglob("*.tmp*"))
    mix_offline(MixConfig(shards=str(built[0]), out=str(out), copies=2, fold=2, shard_size_mb=1.0),
                RayConfig(workers=2))
    assert _data(out) == _data(mixed_ref) and _data(out)


def test_a_disk_full_in_the_mix_driver_is_one_line_and_resumes(built, mixed_ref, ray_session, tmp_path,
                                                               monkeypatch):
    out = tmp_path / "mixed"
    monkeypatch.setenv("MIDAS_PREP_FAULT", "write.index_tmp")
    monkeypatch.setenv("MIDAS_PREP_FAULT_MODE", "enospc")
    monkeypatch.setenv("MIDAS_PREP_FAULT_SKIP", "2")
    cfg = MixConfig(shards=str(built[0]), out=str(out), copies=2, fold=2, shard_size_mb=1.0)
    with pytest.raises(ShardError) as e:
        mix_offline(cfg, RayConfig(workers=2))
    msg = str(e.value)
    assert f"No space left on device (injected at write.index_tmp) writing {out / 'fold=2' / INDEX_NAME}" in msg
    assert "\n" not in msg and "re-run, it resumes" in msg
    assert not list(out.rglob("*.tmp*"))
    monkeypatch.delenv("MIDAS_PREP_FAULT")
    mix_offline(cfg, RayConfig(workers=2))
    assert _data(out) == _data(mixed_ref)


def test_a_disk_full_in_a_build_worker_leaves_no_temporary(sample, ray_session, tmp_path):
    out = tmp_path / "shards"
    env = _env(MIDAS_PREP_FAULT="write.data", MIDAS_PREP_FAULT_MODE="enospc", MIDAS_PREP_FAULT_SKIP="40",
               MIDAS_PREP_FAULT_ONCE=str(tmp_path / "fired"))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "build-shards", str(sample.root), "--out", str(out),
                           "--workers", "2", "--shard-size-mb", "2"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert (tmp_path / "fired").exists() and proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "injected at write.data) writing " in proc.stderr
    assert not list(out.rglob("*.tmp*"))


def test_build_shards_larger_than_the_disk_refuses_before_writing(sample, tmp_path):
    """A manifest listing one real clip 200 times, at the largest T and S: ~320 GB in two formats."""
    from pipeline.config import IndexConfig

    video = sorted(sample.root.rglob("*.mp4"))[0]
    classes = list(IndexConfig().classes)
    rows = [",".join(["path", "clip_id", "part", *classes])]
    rows += [",".join([str(video), f"c{i:03d}", str(1 + i % 5), *(["1"] + ["0"] * (len(classes) - 1))])
             for i in range(200)]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "shards"
    args = ["build-shards", str(tmp_path / "manifest.csv"), "--out", str(out), "--num-frames", "1024",
            "--frame-size", "512", "--detector", "none"]
    need = 200 * 2 * sample_nbytes(1024, 512, len(classes))
    if free_bytes(tmp_path) > need:
        pytest.skip(f"{free_bytes(tmp_path)} bytes free: more than {need}")
    for dry in (["--dry-run"], []):
        res = CliRunner().invoke(main, [*args, *dry])
        assert res.exit_code == 1, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {out} needs about "), res.output
        assert "GB free: 200 clips x 2 format(s) x 805.31 MB a sample" in lines[0], lines[0]
        assert not out.exists()  # refused before the first file (and before Ray)
