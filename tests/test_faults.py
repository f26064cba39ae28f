"""Fault injection: kill -9 at chosen points, a Ray worker killed mid-task, a full disk.

Every case ends in shards equal, byte for byte, to an uninterrupted build's (the `built`
fixture) with no temporary file left. Points are in pipeline/faults.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_config, kill_session

from pipeline.build import BuildError, build_shards
from pipeline.config import MixConfig, RayConfig
from pipeline.mix import mix_offline


def _files(out: Path) -> dict[str, bytes]:
    files = sorted([*out.glob("webdataset/*"), *out.glob("webdataset-idx/*"), *out.glob("parquet/*/*"),
                    out / "clips.parquet",
                    out / "rejects.parquet"])
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files if p.is_file()}


def _run_cli(args: list[str], env_extra: dict[str, str], timeout: int = 180) -> int:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env_extra
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        return proc.wait(timeout=timeout)
    finally:
        kill_session(proc.pid)


BUILD_POINTS = [
    ("build.clip_done", "3"),  # during decode
    ("write.shard_tmp", "1"),  # in the middle of a shard write (bytes under the temp name)
    ("build.shard_done", "1"),  # between shards
    ("write.index_tmp", "2"),  # while index.json is updated
]


@pytest.mark.parametrize(("point", "skip"), BUILD_POINTS, ids=[p for p, _ in BUILD_POINTS])
def test_build_killed_at_a_point_resumes_to_the_same_shards(built, sample, ray_session, tmp_path, point, skip):
    out = tmp_path / "shards"
    rc = _run_cli(["build-shards", str(sample.root), "--out", str(out), "--workers", "2", "--shard-size-mb", "2"],
                  {"MIDAS_PREP_FAULT": point, "MIDAS_PREP_FAULT_SKIP": skip, "MIDAS_PREP_FAULT_MODE": "group"})
    assert rc == -signal.SIGKILL, f"the build was not killed at {point} (exit {rc})"
    index = json.loads((out / "index.json").read_text()) if (out / "index.json").exists() else {"complete": False}
    assert not index["complete"]
    summary = build_shards(build_config(sample.root, out, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    assert summary.written == built[2].written
    assert _files(out) == _files(built[0])
    assert not list(out.rglob("*.tmp*"))


@pytest.mark.parametrize("point", ["build.decoded", "write.shard_tmp"])
def test_ray_worker_killed_mid_task_is_retried(built, sample, ray_session, tmp_path, point, monkeypatch):
    """The worker process dies once (SIGKILL); Ray retries the task; no clip lost or written twice."""
    monkeypatch.setenv("MIDAS_PREP_FAULT", point)
    monkeypatch.setenv("MIDAS_PREP_FAULT_ONCE", str(tmp_path / "fired"))
    out = tmp_path / "shards"
    # a fresh local Ray so its workers see the fault variables
    env = {"MIDAS_PREP_FAULT": point, "MIDAS_PREP_FAULT_ONCE": str(tmp_path / "fired")}
    rc = _run_cli(["build-shards", str(sample.root), "--out", str(out), "--workers", "2", "--shard-size-mb", "2"],
                  env)
    assert (tmp_path / "fired").exists(), "the fault never fired"
    assert rc == 0
    assert _files(out) == _files(built[0])  # every clip once: byte-identical to the uninterrupted build
    assert not list(out.rglob("*.tmp*"))


def test_full_disk_is_a_clear_error_and_resumes(built, sample, ray_session, tmp_path):
    out = tmp_path / "shards"
    env = {"MIDAS_PREP_FAULT": "write.shard_tmp", "MIDAS_PREP_FAULT_MODE": "enospc", "MIDAS_PREP_FAULT_SKIP": "2"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "build-shards", str(sample.root), "--out", str(out),
                           "--workers", "2", "--shard-size-mb", "2"], capture_output=True, text=True, timeout=180,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env)
    assert proc.returncode == 1
    assert "No space left on device" in proc.stderr and "re-run resumes" in proc.stderr
    assert "Traceback" not in proc.stderr
    build_shards(build_config(sample.root, out, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    assert _files(out) == _files(built[0])
    assert not list(out.rglob("*.tmp*"))


def test_driver_side_full_disk_is_a_build_error(built, sample, ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("MIDAS_PREP_FAULT", "write.index_tmp")
    monkeypatch.setenv("MIDAS_PREP_FAULT_MODE", "enospc")
    out = tmp_path / "shards"
    with pytest.raises(BuildError, match="No space left on device"):
        build_shards(build_config(sample.root, out, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    monkeypatch.delenv("MIDAS_PREP_FAULT")
    build_shards(build_config(sample.root, out, **{"ray.workers": 2, "write.shard_size_mb": 2.0}))
    assert _files(out) == _files(built[0])


@pytest.mark.parametrize("point", ["write.shard_tmp", "build.shard_done"])
def test_mix_offline_killed_resumes_to_the_same_bytes(built, ray_session, tmp_path, point):
    shards = built[0]
    ref = tmp_path / "ref"
    mix_offline(MixConfig(shards=str(shards), out=str(ref), copies=2, fold=2, shard_size_mb=1.0), RayConfig(workers=2))
    out = tmp_path / "killed"
    rc = _run_cli(["mix-offline", "--shards", str(shards), "--out", str(out), "--copies", "2", "--fold", "2",
                   "--shard-size-mb", "1", "--workers", "2"],
                  {"MIDAS_PREP_FAULT": point, "MIDAS_PREP_FAULT_SKIP": "1", "MIDAS_PREP_FAULT_MODE": "group"})
    assert rc == -signal.SIGKILL
    mix_offline(MixConfig(shards=str(shards), out=str(out), copies=2, fold=2, shard_size_mb=1.0), RayConfig(workers=2))

    def files(d: Path) -> dict[str, bytes]:
        return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
                if p.is_file() and "_state" not in p.parts and p.name != "index.json"}

    assert files(out) == files(ref) and files(ref)
    assert not list(out.rglob("*.tmp*"))
